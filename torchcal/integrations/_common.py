"""What the training-framework integrations share: build, fit, report and save a calibrator."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterable
from typing import Any

from torch import Tensor, nn

from torchcal._inputs.collect import Batches, _concatenate, collect_logits
from torchcal.calibrators.base import Calibrator
from torchcal.calibrators.temperature import TemperatureScaler

#: The prefix of every logged metric name.
PREFIX = "calibration/"


def framework_base(module: str, name: str, extra: str) -> type:
    """The framework's callback base class ``module.name``, or where the framework is not
    installed a stand-in base whose construction says what to install (so that the integration
    imports without it).

    Args:
        module: the module holding the class, e.g. ``"lightning.pytorch"``; its top-level
            package is what to install.
        name: the class, e.g. ``"Callback"``.
        extra: the torchcal extra that installs the framework, e.g. ``"lightning"``.
    """
    package = module.split(".")[0]
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError:
        pass

    class Missing:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            raise ImportError(
                f"{type(self).__name__} needs {package}: pip install {package} "
                f'(or pip install "torchcal[{extra}]")'
            )

    return Missing


def make_calibrator(kind: str, model: nn.Module | None, options: dict[str, Any]) -> Calibrator:
    """A calibrator of ``kind`` (a key of :attr:`Calibrator.registry`) wrapping ``model``.

    Args:
        kind: the calibrator's registry key, e.g. ``"temperature"``.
        model: the model to wrap (``None`` to only check ``kind`` and ``options``).
        options: the calibrator's options.
    """
    cls = Calibrator.registry.get(kind)
    if cls is None:
        known = ", ".join(repr(name) for name in sorted(Calibrator.registry))
        raise ValueError(f"kind must be one of {known}, got {kind!r}")
    return cls(model, **options)


#: How a callback reads its batches: labels key, input index, label index and output function
#: (see :class:`~torchcal._inputs.collect.Batches`).
BatchOptions = tuple[str, int, int, Callable[[Any], Tensor] | None]


def calibrate(
    kind: str,
    model: nn.Module,
    options: dict[str, Any],
    loader: Iterable[Any],
    batch_options: BatchOptions,
    *,
    sharded: bool,
    progress: bool | None,
) -> tuple[Calibrator, dict[str, float]]:
    """Build a calibrator of ``kind`` around ``model``, fit it on ``loader`` and measure it.

    Args:
        kind, model, options: as in :func:`make_calibrator`.
        loader: the batches to calibrate on.
        batch_options: how to read them (:data:`BatchOptions`).
        sharded: whether ``loader`` holds this rank's shard of the data: then, in an initialised
            process group of several ranks, the fit is on the data of every rank (see
            :func:`fit_calibrator`).
        progress: show a progress bar while collecting logits.

    Returns:
        The fitted calibrator and its metrics (:func:`_fit_metrics`), to be logged.
    """
    labels_key, input_index, label_index, output_fn = batch_options
    calibrator = make_calibrator(kind, model, options)
    batches = Batches(
        loader,
        labels_key=labels_key,
        input_index=input_index,
        label_index=label_index,
        output_fn=output_fn,
    )
    distributed = sharded and _is_distributed()
    fit_calibrator(calibrator, batches, distributed=distributed, progress=progress)
    return calibrator, _fit_metrics(calibrator)


def _is_distributed() -> bool:
    """Whether an initialised ``torch.distributed`` process group has more than one rank."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def fit_calibrator(
    calibrator: Calibrator, loader: Batches, *, distributed: bool, progress: bool | None
) -> Calibrator:
    """Fit on ``loader``; with ``distributed`` on the data of every rank, identically everywhere.

    Temperature scaling uses its distributed fit (each rank streams its shard, the ranks exchange
    sums). The other calibrators have no distributed fit: every rank collects its shard's logits,
    the ranks exchange them, and each fits on all of them (O(N K) memory per rank).
    """
    if isinstance(calibrator, TemperatureScaler):
        return calibrator.fit(loader, progress=progress, distributed=distributed)
    if not distributed:
        return calibrator.fit(loader, progress=progress)
    import torch.distributed as dist

    options = getattr(calibrator, "options", dict)()
    logits, labels = collect_logits(
        calibrator.model,
        loader,
        progress=progress,
        class_dim=options.get("class_dim"),
        ignore_index=options.get("ignore_index", -100),
    )
    shards: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(shards, (logits.cpu(), labels.cpu()))
    logits, labels = _concatenate(
        [shard[0] for shard in shards],
        [shard[1] for shard in shards],
        options.get("class_dim"),
        options.get("ignore_index", -100),
    )
    return calibrator.fit(logits, labels, progress=progress)


def _fit_metrics(calibrator: Calibrator) -> dict[str, float]:
    """NLL and ECE before and after calibration (and T), named ``calibration/...``."""
    results = calibrator.fit_result
    if not isinstance(results, tuple):
        results = (results,)
    metrics: dict[str, float] = {}
    for index, result in enumerate(results):
        prefix = PREFIX if len(results) == 1 else f"{PREFIX}label_{index}/"
        for name in ("nll_before", "nll_after", "ece_before", "ece_after"):
            metrics[prefix + name] = float(getattr(result, name))
        if result.temperature is not None:  # a temperature fit's record
            metrics[prefix + "temperature"] = float(result.temperature)
    return metrics


def save_calibrator(
    calibrator: Calibrator,
    save: bool | str | os.PathLike[str],
    folder: str | os.PathLike[str],
    is_main: Callable[[], bool],
) -> str | None:
    """Save ``calibrator`` as asked by a callback's ``save`` option, on the main process only.

    Args:
        calibrator: the fitted calibrator.
        save: ``False`` (or ``None``) saves nothing; ``True`` saves as
            ``folder/calibration.safetensors``; a path saves there.
        folder: where ``save=True`` saves.
        is_main: whether this process is the one that writes (asked only when saving).

    Returns:
        The path saved to (on every process), or ``None`` for ``save=False``.
    """
    if save is False or save is None:
        return None
    path = os.path.join(os.fspath(folder), "calibration.safetensors") if save is True else save
    path = os.fspath(path)
    if is_main():
        from torchcal.io.state import save as save_state

        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        save_state(calibrator, path)
    return path
