"""Reliability diagrams (needs matplotlib: ``pip install 'torchcal[plot]'``).

Figures are drawn on the Agg canvas without touching pyplot's global state, so they work on
servers and inside notebooks alike; save them as PNG, SVG or PDF.

Example:
    >>> import torch
    >>> from torchcal.metrics import reliability_bins
    >>> probs = torch.softmax(torch.randn(500, 4, generator=torch.Generator().manual_seed(0)), 1)
    >>> labels = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(1))[:, 0]
    >>> figure = reliability_diagram({"model": reliability_bins(probs, labels)})
    >>> [axes.get_ylabel() for axes in figure.axes]
    ['accuracy', 'samples']
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from torchcal.metrics.calibration import ReliabilityBins, reliability_bins

__all__ = ["reliability_diagram", "reliability_diagram_from_probs"]

_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b")


def _figure_class() -> Any:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(
            "reliability diagrams need matplotlib: pip install 'torchcal[plot]'"
        ) from error
    return Figure, FigureCanvasAgg


def reliability_diagram(
    bins: ReliabilityBins | Mapping[str, ReliabilityBins],
    *,
    title: str | None = "Reliability diagram",
    path: str | Path | None = None,
) -> Any:
    """Per-bin accuracy against confidence, the gaps shaded, with the bin counts beneath.

    Args:
        bins: one :class:`ReliabilityBins`, or several keyed by a legend label (e.g.
            ``{"uncalibrated": before, "calibrated": after}``) drawn side by side in each bin.
        title: the figure title (``None`` for none).
        path: if given, the figure is saved there (the suffix picks PNG, SVG or PDF).

    Returns:
        The ``matplotlib.figure.Figure``. Its top axes hold, per set of bins, a bar container of
        the accuracies (non-empty bins only, labelled with the ECE) and one of the gaps to the mean
        confidence; the bottom axes hold a bar container of the counts.
    """
    figure_class, canvas_class = _figure_class()
    named = dict(bins) if isinstance(bins, Mapping) else {"model": bins}
    if not named:
        raise ValueError("bins is empty: pass ReliabilityBins or a dict of them")
    figure = figure_class(figsize=(6, 6.5), layout="constrained")
    canvas_class(figure)
    top, bottom = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], linestyle="--", color="0.4", linewidth=1, label="perfect calibration")
    for index, (name, these) in enumerate(named.items()):
        colour = _COLOURS[index % len(_COLOURS)]
        edges = these.edges.double().cpu()
        width = (edges[1:] - edges[:-1]) / len(named)
        left = edges[:-1] + index * width
        filled = (these.counts > 0).cpu()
        accuracy = these.accuracy.double().cpu()[filled]
        confidence = these.confidence.double().cpu()[filled]
        ece = float(these.calibration_error())
        top.bar(
            left[filled].numpy(), accuracy.numpy(), width=width[filled].numpy(), align="edge",
            color=colour, alpha=0.85, edgecolor="white", linewidth=0.5,
            label=f"{name} (ECE {ece:.4f})",
        )  # fmt: skip
        top.bar(
            left[filled].numpy(), (confidence - accuracy).numpy(), bottom=accuracy.numpy(),
            width=width[filled].numpy(), align="edge", color="#d62728", alpha=0.25,
            edgecolor="#d62728", hatch="//", linewidth=0.5,
            label="gap to confidence" if index == 0 else None,
        )  # fmt: skip
        bottom.bar(
            left.numpy(), these.counts.cpu().numpy(), width=width.numpy(), align="edge",
            color=colour, alpha=0.85, edgecolor="white", linewidth=0.5,
        )  # fmt: skip
    top.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy", aspect="auto")
    top.legend(loc="upper left", frameon=False)
    top.grid(alpha=0.3)
    bottom.set(xlabel="confidence (top-label probability)", ylabel="samples")
    bottom.set_yscale("symlog", linthresh=10)
    bottom.grid(alpha=0.3)
    if title:
        figure.suptitle(title)
    if path is not None:
        figure.savefig(path, dpi=110)
    return figure


def reliability_diagram_from_probs(
    probs: Tensor | Mapping[str, Tensor],
    labels: Tensor,
    *,
    n_bins: int = 15,
    title: str | None = "Reliability diagram",
    path: str | Path | None = None,
) -> Any:
    """:func:`reliability_diagram` of probabilities (N, K), or of several keyed by name.

    Args:
        probs: (N, K) probabilities, or several keyed by a legend label.
        labels: (N,) integer class labels.
        n_bins: the number of equal-width confidence bins.
        title: the figure title (``None`` for none).
        path: if given, the figure is saved there (the suffix picks PNG, SVG or PDF).

    Returns:
        The ``matplotlib.figure.Figure``, as :func:`reliability_diagram` draws it.

    Example:
        >>> import torch
        >>> probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
        >>> figure = reliability_diagram_from_probs(probs, torch.tensor([0, 1, 1]), n_bins=5)
        >>> figure.axes[0].get_xlabel(), figure.axes[1].get_xlabel()
        ('', 'confidence (top-label probability)')
    """
    named = dict(probs) if isinstance(probs, Mapping) else {"model": probs}
    bins = {name: reliability_bins(p, labels, n_bins=n_bins) for name, p in named.items()}
    return reliability_diagram(bins, title=title, path=path)
