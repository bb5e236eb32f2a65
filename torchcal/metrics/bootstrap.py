"""Bootstrap confidence intervals for any metric of ``(probs, labels)``.

Resamples draw N indices with replacement from a seeded ``torch.Generator``. Accuracy, NLL, Brier
and the equal-width-bin ECE/MCE/RMS are evaluated for a whole chunk of resamples at once (each
resample is a vector of per-sample multiplicities); any other metric is called once per resample on
the same draws. The interval is the percentile interval of the resampled values.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from torchcal._validation import check_positive_int
from torchcal.metrics.calibration import (
    bin_index,
    bins_from_sums,
    check_probs_and_labels,
    expected_calibration_error,
    maximum_calibration_error,
    top_label,
    uniform_edges,
)
from torchcal.metrics.scores import accuracy, brier_score, negative_log_likelihood

Metric = Callable[..., Tensor]
_CHUNK_ELEMENTS = 1 << 22  # resamples x samples held at once


@dataclass(frozen=True)
class MetricInterval:
    """A metric's value on all data and a bootstrap percentile interval around it.

    Example:
        >>> interval = MetricInterval(value=0.1, low=0.08, high=0.13, confidence=0.95)
        >>> str(interval)
        '0.1000 [0.0800, 0.1300]'
    """

    value: float
    low: float
    high: float
    confidence: float = 0.95

    def __str__(self) -> str:
        return f"{self.value:.4f} [{self.low:.4f}, {self.high:.4f}]"

    def to_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high}


def _per_sample_mean(values: Callable[[Tensor, Tensor], Tensor]) -> Callable[..., Tensor]:
    def batched(weights: Tensor, probs: Tensor, labels: Tensor) -> Tensor:
        terms = values(probs, labels)
        infinite = terms.isinf()
        means = weights @ terms.masked_fill(infinite, 0.0) / weights.shape[1]
        if bool(infinite.any()):  # a drawn sample with an infinite term (0 * inf is not 0)
            drawn_infinite = (weights @ infinite.to(weights.dtype)) > 0
            means = means.masked_fill(drawn_infinite, float("inf"))
        return means

    return batched


def _label_probs(probs: Tensor, labels: Tensor) -> Tensor:
    return probs.gather(1, labels[:, None]).squeeze(1).to(torch.float64)


def _nll_terms(probs: Tensor, labels: Tensor) -> Tensor:
    return -_label_probs(probs, labels).log()


def _brier_terms(probs: Tensor, labels: Tensor) -> Tensor:
    return probs.to(torch.float64).square().sum(dim=1) - 2 * _label_probs(probs, labels) + 1


def _binned_error(
    weights: Tensor,
    probs: Tensor,
    labels: Tensor,
    n_bins: int = 15,
    strategy: str = "uniform",
    norm: str = "l1",
) -> Tensor:
    confidences, correct = top_label(probs, labels)
    confidences = confidences.to(torch.float64)
    edges = uniform_edges(n_bins, probs.device)
    one_hot = torch.nn.functional.one_hot(bin_index(confidences, edges), n_bins).to(weights)
    counts = weights @ one_hot
    sum_confidence = weights @ (one_hot * confidences[:, None])
    sum_correct = weights @ (one_hot * correct.to(torch.float64)[:, None])
    return bins_from_sums(edges, counts, sum_confidence, sum_correct).calibration_error(norm)


def _vectorised(metric: Metric, kwargs: dict[str, Any]) -> Callable[..., Tensor] | None:
    if metric is accuracy:
        return _per_sample_mean(lambda p, y: top_label(p, y)[1].to(torch.float64))
    if metric is negative_log_likelihood:
        return _per_sample_mean(_nll_terms)
    if metric is brier_score:
        return _per_sample_mean(_brier_terms)
    if metric in (expected_calibration_error, maximum_calibration_error):
        if kwargs.get("strategy", "uniform") != "uniform":
            return None
        if metric is maximum_calibration_error:
            kwargs = {**kwargs, "norm": "max"}
        return lambda weights, probs, labels: _binned_error(weights, probs, labels, **kwargs)
    return None


def bootstrap_interval(
    metric: Metric,
    probs: Tensor,
    labels: Tensor,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int | torch.Generator = 0,
    **metric_kwargs: Any,
) -> MetricInterval:
    """``metric(probs, labels, **metric_kwargs)`` with a bootstrap percentile interval.

    Args:
        metric: any function of ``(probs, labels)`` returning a scalar tensor or float.
        n_resamples: number of bootstrap resamples.
        confidence: coverage of the interval, in (0, 1).
        seed: an int seed or a ``torch.Generator`` (CPU) that draws the resamples.

    Example:
        >>> from torchcal.metrics import expected_calibration_error
        >>> _ = torch.manual_seed(0)
        >>> probs = torch.softmax(torch.randn(2000, 5) * 2, dim=1)
        >>> labels = torch.multinomial(probs, 1).squeeze(1)
        >>> ece = bootstrap_interval(expected_calibration_error, probs, labels, n_bins=10)
        >>> ece.low < ece.value < ece.high
        True
    """
    probs, labels = check_probs_and_labels(probs, labels)
    check_positive_int(n_resamples, "n_resamples")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    generator = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(seed)
    n_samples = probs.shape[0]
    value = float(metric(probs, labels, **metric_kwargs))
    batched = _vectorised(metric, metric_kwargs)
    chunk = max(1, _CHUNK_ELEMENTS // n_samples)
    statistics = []
    for start in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - start)
        indices = torch.randint(n_samples, (size, n_samples), generator=generator)
        indices = indices.to(probs.device)
        if batched is None:
            statistics.extend(float(metric(probs[i], labels[i], **metric_kwargs)) for i in indices)
        else:
            weights = torch.zeros(size, n_samples, dtype=torch.float64, device=probs.device)
            weights.scatter_add_(1, indices, torch.ones_like(weights))
            statistics.extend(batched(weights, probs, labels).tolist())
    tail = (1.0 - confidence) / 2
    quantiles = torch.tensor([tail, 1.0 - tail], dtype=torch.float64)
    values = torch.tensor(statistics, dtype=torch.float64)
    # Interpolating between infinite values (an NLL with a zero probability) gives NaN: take the
    # nearest resample's value instead, so that the interval reads e.g. [0.1, inf].
    interpolation = "linear" if bool(values.isfinite().all()) else "nearest"
    low, high = torch.quantile(values, quantiles, interpolation=interpolation).tolist()
    return MetricInterval(value=value, low=low, high=high, confidence=confidence)
