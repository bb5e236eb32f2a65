"""Before/after calibration reports: a table with bootstrap intervals, JSON, a diagram.

Example:
    >>> import torch
    >>> probs = torch.softmax(torch.randn(300, 4, generator=torch.Generator().manual_seed(0)), 1)
    >>> labels = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(1))[:, 0]
    >>> summary = calibration_summary(probs, labels, n_resamples=50)
    >>> list(summary)
    ['accuracy', 'NLL', 'ECE', 'MCE', 'Brier']
    >>> print(format_table({"model": summary}).splitlines()[0])
    metric   model
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from torchcal.io.files import output_file
from torchcal.metrics import (
    MetricInterval,
    accuracy,
    bootstrap_intervals,
    brier_score,
    expected_calibration_error,
    maximum_calibration_error,
    negative_log_likelihood,
)

__all__ = ["calibration_summary", "format_table", "write_json"]

METRICS = {
    "accuracy": accuracy,
    "NLL": negative_log_likelihood,
    "ECE": expected_calibration_error,
    "MCE": maximum_calibration_error,
    "Brier": brier_score,
}


def calibration_summary(
    probs: Tensor,
    labels: Tensor,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int | torch.Generator = 0,
) -> dict[str, MetricInterval]:
    """Accuracy, NLL, ECE and MCE (15 equal-width bins) and Brier with bootstrap intervals.

    Every metric is resampled on the same draws, those :func:`~torchcal.metrics.bootstrap_interval`
    makes for each metric with the same int ``seed`` (values equal, interval ends equal up to the
    float64 rounding of the resampled means), and those of :func:`torchcal.compare`.

    Args:
        probs: (N, K) probabilities.
        labels: (N,) integer labels.
        n_resamples: number of bootstrap resamples.
        confidence: coverage of the intervals, in (0, 1).
        seed: an int seed or a ``torch.Generator`` (CPU) that draws the resamples.
    """
    return bootstrap_intervals(
        METRICS, probs, labels, n_resamples=n_resamples, confidence=confidence, seed=seed
    )


def format_table(summaries: dict[str, dict[str, MetricInterval]], rows: str = "metrics") -> str:
    """A plain-text table of named summaries.

    Args:
        summaries: ``{name: {metric: interval}}``, as :func:`calibration_summary` gives per name.
        rows: ``"metrics"``: one row per metric, one column per name (a before/after report);
            ``"names"``: one row per name, one column per metric (a comparison of many methods).
    """
    names = list(summaries)
    if rows == "metrics":
        width = max(24, *(len(name) + 2 for name in names))
        lines = ["metric   " + "".join(f"{name:<{width}}" for name in names).rstrip()]
        for metric in METRICS:
            cells = "".join(f"{summaries[name][metric]!s:<{width}}" for name in names)
            lines.append(f"{metric:<9}" + cells.rstrip())
        return "\n".join(lines)
    if rows != "names":
        raise ValueError(f"rows must be 'metrics' or 'names', got {rows!r}")
    first = max(len("method"), *(len(name) for name in names)) + 2
    lines = [f"{'method':<{first}}" + "".join(f"{metric:<26}" for metric in METRICS).rstrip()]
    for name in names:
        cells = "".join(f"{summaries[name][metric]!s:<26}" for metric in METRICS)
        lines.append(f"{name:<{first}}" + cells.rstrip())
    return "\n".join(lines)


def write_json(path: str | Path, summaries: dict[str, dict[str, MetricInterval]], **extra) -> None:
    """Write the summaries (and any extra JSON-able fields) to ``path``, atomically (an earlier
    file there is replaced only once the new one is written in full).

    Args:
        path: the JSON file to write.
        summaries: ``{name: {metric: interval}}``.
        **extra: further top-level fields of the report.
    """
    report = {
        **extra,
        "metrics": {
            name: {metric: interval.to_dict() for metric, interval in summary.items()}
            for name, summary in summaries.items()
        },
    }
    with output_file(path, "w") as file:
        file.write(json.dumps(report, indent=2) + "\n")
