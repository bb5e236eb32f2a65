"""How a prediction changes with the temperature: probabilities, entropy and margin against T."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from torchcal._inputs.validation import check_floating, check_positive_int
from torchcal.dial.tempered import softmax
from torchcal.metrics.uncertainty import entropy, top1_margin

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = ["TemperatureSweep", "plot_temperature_sweep", "temperature_sweep"]


@dataclass(frozen=True)
class TemperatureSweep:
    """Tempered predictions at each of M temperatures, for logits of shape (..., K).

    Attributes:
        temperatures: (M,) the temperatures, float64, in the order given.
        probabilities: (M, ..., K) ``softmax(logits / T)`` at each temperature.
        entropy: (M, ...) the entropy of each prediction, in nats.
        margin: (M, ...) the top-1 minus top-2 probability of each prediction.
    """

    temperatures: Tensor
    probabilities: Tensor
    entropy: Tensor
    margin: Tensor


def temperature_sweep(logits: Tensor, temperatures: Sequence[float] | Tensor) -> TemperatureSweep:
    """Probabilities, entropy and top-1 margin of ``logits`` (classes last) at each temperature.

    Args:
        logits: (..., K) logits with K >= 2 classes last.
        temperatures: the M temperatures, each finite and > 0: a sequence or a 1-D tensor.

    Example:
        >>> sweep = temperature_sweep(torch.tensor([2.0, 1.0, 0.1]), [0.5, 1.0, 2.0])
        >>> sweep.probabilities[:, 0]
        tensor([0.8638, 0.6590, 0.5017])
        >>> [round(h, 3) for h in sweep.entropy.tolist()]
        [0.454, 0.847, 1.026]
    """
    logits = check_floating(logits, "logits")
    if logits.ndim == 0 or logits.shape[-1] < 2:
        raise ValueError(
            f"logits must have shape (..., K) with K >= 2 classes last, got {tuple(logits.shape)}"
        )
    if isinstance(temperatures, Tensor):
        values = temperatures.detach().to("cpu", torch.float64)
    else:
        try:
            values = torch.tensor(list(temperatures), dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError) as error:
            raise TypeError(
                f"temperatures must be a sequence of real numbers or a 1-D tensor: {error}"
            ) from error
    if values.ndim != 1 or len(values) == 0:
        raise ValueError(
            f"temperatures must be a non-empty 1-D sequence, got shape {tuple(values.shape)}"
        )
    bad = ~torch.isfinite(values) | (values <= 0)
    if bool(bad.any()):
        raise ValueError(f"temperatures must be finite and > 0, got {values[bad].tolist()}")
    probabilities = torch.stack([softmax(logits, float(t)) for t in values])
    return TemperatureSweep(
        temperatures=values,
        probabilities=probabilities,
        entropy=entropy(probabilities),
        margin=top1_margin(probabilities),
    )


def plot_temperature_sweep(
    sweep: TemperatureSweep,
    index: int = 0,
    *,
    class_names: Sequence[str] | None = None,
    max_classes: int = 10,
    mark: float | None = None,
) -> Figure:
    """Draw one prediction's class probabilities, and its entropy and margin, against T.

    ``index`` picks the prediction when the swept logits had leading dimensions (counted over
    them flattened). At most ``max_classes`` classes are drawn: those most probable at the
    smallest temperature. ``mark`` draws a vertical line at a chosen temperature, e.g. the fitted
    one. The T axis is logarithmic when the temperatures span more than a factor of 10. Needs
    matplotlib (``pip install 'torchcal[plot]'``).

    Args:
        sweep: the result of :func:`temperature_sweep`.
        index: which prediction to draw, counted over the swept logits' leading dimensions
            flattened.
        class_names: a name per class for the legend (default: the class indices).
        max_classes: draw at most this many classes, those most probable at the smallest T.
        mark: draw a vertical line at this temperature (``None``: none).

    Returns:
        The ``matplotlib.figure.Figure``, not shown.

    Example:
        >>> sweep = temperature_sweep(torch.tensor([3.2, 2.8, 0.5]), [0.25, 0.5, 1.0, 2.0, 4.0])
        >>> figure = plot_temperature_sweep(sweep, mark=1.5)
        >>> [axes.get_ylabel() for axes in figure.axes]
        ['probability', 'nats / probability']
    """
    try:
        from matplotlib.figure import Figure
    except ImportError as error:  # pragma: no cover - exercised only without the extra
        raise ImportError("plotting needs matplotlib: pip install 'torchcal[plot]'") from error
    if not isinstance(sweep, TemperatureSweep):
        raise TypeError(
            f"sweep must be a TemperatureSweep (from temperature_sweep), got {type(sweep).__name__}"
        )
    max_classes = check_positive_int(max_classes, "max_classes")
    n_classes = sweep.probabilities.shape[-1]
    probabilities = sweep.probabilities.reshape(len(sweep.temperatures), -1, n_classes)
    n_predictions = probabilities.shape[1]
    if isinstance(index, bool) or not isinstance(index, int):
        raise TypeError(f"index must be an int, got {type(index).__name__}")
    if not -n_predictions <= index < n_predictions:
        raise ValueError(f"index={index} is out of range for {n_predictions} prediction(s)")
    if class_names is not None and len(class_names) != n_classes:
        raise ValueError(f"class_names has {len(class_names)} names for {n_classes} classes")
    names = [str(k) for k in range(n_classes)] if class_names is None else list(class_names)

    order = torch.argsort(sweep.temperatures)
    temperatures = sweep.temperatures[order].numpy()
    probs = probabilities[:, index][order].double().cpu().numpy()
    entropies = sweep.entropy.reshape(len(order), -1)[:, index][order].double().cpu().numpy()
    margins = sweep.margin.reshape(len(order), -1)[:, index][order].double().cpu().numpy()
    shown = probs[0].argsort()[::-1][:max_classes]

    figure = Figure(figsize=(10, 4), layout="constrained")
    left, right = figure.subplots(1, 2, sharex=True)
    for k in shown:
        left.plot(temperatures, probs[:, k], marker=".", label=f"class {names[k]}")
    left.set(ylabel="probability", ylim=(-0.02, 1.02), title="class probabilities")
    hidden = n_classes - len(shown)
    left.legend(
        title=f"{hidden} more classes not drawn" if hidden else None,
        fontsize="small",
        ncols=2 if len(shown) > 5 else 1,
    )
    right.plot(temperatures, entropies, marker=".", color="black", label="entropy (nats)")
    right.plot(temperatures, margins, marker=".", color="tab:red", label="top-1 margin")
    uniform = torch.log(torch.tensor(float(n_classes))).item()
    right.axhline(uniform, color="gray", linestyle="--", label=f"uniform: log {n_classes}")
    right.set(ylabel="nats / probability", title="entropy and margin")
    for axes in (left, right):
        axes.set_xlabel("temperature T")
        if temperatures[-1] > 10 * temperatures[0]:
            axes.set_xscale("log")
        axes.axvline(1.0, color="gray", linestyle=":", linewidth=1)
        if mark is not None:
            axes.axvline(mark, color="tab:green", linewidth=1.5, label=f"T = {mark:.3g}")
        axes.grid(alpha=0.3)
    right.legend(fontsize="small")
    return figure
