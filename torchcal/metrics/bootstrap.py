"""Bootstrap confidence intervals for any metric of ``(probs, labels)``.

Each resample draws N indices with replacement from a seeded ``torch.Generator`` (a chunk of
resamples at a time) and is also read as a vector of multiplicities: how often each sample was
drawn. Accuracy, NLL, Brier and the equal-width-bin ECE/MCE/RMS are functions of per-sample
statistics (:mod:`torchcal.metrics.samples`), computed once from the probabilities: a resample's
mean of a per-sample term is its multiplicities times the terms, and its per-bin sums group the
same products by bin (the samples sorted by bin once). Nothing of size (N, K) is gathered. Any
other metric is called once per resample on the drawn rows. The interval is the percentile
interval of the resampled values.

:class:`Bootstrap` scores several metrics of several sets of probabilities on the same draws;
:func:`torchcal.compare` scores every method with one.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from torchcal._inputs import check_choice, check_positive_int
from torchcal._terms import uniform_bin_index, uniform_edges
from torchcal.metrics._inputs import check_n_bins, check_probs_and_labels
from torchcal.metrics.calibration import (
    NORMS,
    bins_from_sums,
    expected_calibration_error,
    maximum_calibration_error,
    top_label_bins,
)
from torchcal.metrics.samples import SampleStatistics, statistics_of_rows
from torchcal.metrics.scores import accuracy, brier_score, negative_log_likelihood

__all__ = ["Bootstrap", "MetricInterval", "bootstrap_interval", "bootstrap_intervals"]

Metric = Callable[..., Tensor]
#: The most resamples one interval takes: their values are kept (8 bytes each).
MAX_RESAMPLES = 1_000_000
_CHUNK_ELEMENTS = 1 << 22  # resamples x samples drawn at once


@dataclass(frozen=True)
class MetricInterval:
    """A metric's value on all data and a bootstrap percentile interval around it.

    Args:
        value: the metric on all the data.
        low, high: the interval's ends.
        confidence: the interval's coverage.

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
        """``{"value": ..., "low": ..., "high": ...}``, as the JSON reports hold it."""
        return {"value": self.value, "low": self.low, "high": self.high}


# A batched statistic maps the multiplicities of R resamples, (N, R) float64, to R values.
Batched = Callable[[Tensor], Tensor]


class _ResampledMeans:
    """Means of per-sample terms over each resample, every term of one set of probabilities
    from one matrix product per chunk of resamples; a drawn infinite term makes the mean inf."""

    def __init__(self) -> None:
        self.columns: list[Tensor] = []
        self._terms: Tensor | None = None
        self._weights: weakref.ref[Tensor] | None = None
        self._means = torch.empty(0)

    def add(self, terms: Tensor) -> Batched:
        """Register ``terms`` (N,); returns the batched mean of them."""
        infinite = terms.isinf()
        has_infinite = bool(infinite.any())
        column = len(self.columns)
        self.columns.append(terms.masked_fill(infinite, 0.0))
        if has_infinite:  # 0 * inf is NaN, not 0: count the infinite terms drawn instead
            self.columns.append(infinite.to(terms.dtype))

        def batched(weights: Tensor) -> Tensor:
            means = self(weights)
            found = means[:, column]
            if has_infinite:
                found = found.masked_fill(means[:, column + 1] > 0, math.inf)
            return found

        return batched

    def __call__(self, weights: Tensor) -> Tensor:
        if self._weights is not None and self._weights() is weights:
            return self._means
        if self._terms is None:
            self._terms = torch.stack(self.columns)  # (terms, N)
        self._weights = weakref.ref(weights)
        self._means = weights.T @ self._terms.T / weights.shape[0]  # (R, terms)
        return self._means


class _ResampledBinSums:
    """Per-bin count, sum of confidence and sum of correctness of each resample, (R, n_bins)
    each: the multiplicities' rows added into their sample's bin. ECE and MCE of the same
    probabilities share one evaluation per chunk of resamples."""

    def __init__(self, statistics: SampleStatistics, n_bins: int) -> None:
        self.edges = uniform_edges(n_bins, statistics.confidences.device)
        self.index = uniform_bin_index(statistics.confidences, n_bins)
        self.confidences = statistics.confidences.to(torch.float64)[:, None]
        self.correct = statistics.correct.nonzero().squeeze(1)
        self._weights: weakref.ref[Tensor] | None = None
        self._sums: tuple[Tensor, Tensor, Tensor] = ()  # type: ignore[assignment]

    def __call__(self, weights: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if self._weights is not None and self._weights() is weights:
            return self._sums
        shape = (self.edges.numel() - 1, weights.shape[1])
        counts = weights.new_zeros(shape).index_add_(0, self.index, weights)
        confidence = weights.new_zeros(shape).index_add_(0, self.index, weights * self.confidences)
        correct = weights.new_zeros(shape).index_add_(
            0, self.index[self.correct], weights[self.correct]
        )
        self._weights, self._sums = weakref.ref(weights), (counts.T, confidence.T, correct.T)
        return self._sums


def _resampled_binned_error(bin_sums: _ResampledBinSums, norm: str) -> Batched:
    """The equal-width-bin calibration error (``norm``) of each resample."""

    def batched(weights: Tensor) -> Tensor:
        bins = bins_from_sums(bin_sums.edges, *bin_sums(weights))
        return bins.calibration_error(norm)

    return batched


#: Metrics that are the mean of a per-sample term, and that term of the statistics.
_MEAN_TERMS: dict[Metric, Callable[[SampleStatistics], Tensor]] = {
    accuracy: lambda statistics: statistics.correct.to(torch.float64),
    negative_log_likelihood: SampleStatistics.nll_terms,
    brier_score: SampleStatistics.brier_terms,
}


def _from_statistics(
    metric: Metric,
    kwargs: dict[str, Any],
    statistics: Callable[[], SampleStatistics],
    means: _ResampledMeans,
    bin_sums: dict[int, _ResampledBinSums],
) -> tuple[float, Batched] | None:
    """``metric``'s value and batched form from the per-sample statistics, or None if it is not
    a function of them. The value is computed as the metric itself computes it, to the bit."""
    if metric in _MEAN_TERMS:
        if kwargs:
            return None
        terms = _MEAN_TERMS[metric](statistics())
        return float(terms.mean()), means.add(terms)
    if metric not in (expected_calibration_error, maximum_calibration_error):
        return None
    if set(kwargs) - {"n_bins", "strategy", "norm"}:
        return None
    if kwargs.get("strategy", "uniform") != "uniform":
        return None
    norm = "max" if metric is maximum_calibration_error else kwargs.get("norm", "l1")
    check_choice(norm, "norm", NORMS)
    n_bins = check_n_bins(kwargs.get("n_bins", 15))
    if n_bins not in bin_sums:
        bin_sums[n_bins] = _ResampledBinSums(statistics(), n_bins)
    found = statistics()
    bins = top_label_bins(found.confidences, found.correct, n_bins, "uniform")
    return float(bins.calibration_error(norm)), _resampled_binned_error(bin_sums[n_bins], norm)


@dataclass
class _Resampled:
    """One metric of one set of probabilities: its value and how to evaluate a resample."""

    value: float
    batched: Batched | None  # from multiplicities, or else
    each: Callable[[Tensor], float] | None  # from the drawn indices (N,)
    device: torch.device
    values: Tensor | None = None  # (n_resamples,) once evaluated


def _check_seed(seed: object) -> torch.Generator:
    if isinstance(seed, torch.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int or a torch.Generator, got {type(seed).__name__}")
    return torch.Generator().manual_seed(seed)


def _percentile_interval(value: float, values: Tensor, confidence: float) -> MetricInterval:
    tail = (1.0 - confidence) / 2
    quantiles = torch.tensor([tail, 1.0 - tail], dtype=torch.float64)
    # Interpolating between infinite values (an NLL with a zero probability) gives NaN: take the
    # nearest resample's value instead, so that the interval reads e.g. [0.1, inf].
    interpolation = "linear" if bool(values.isfinite().all()) else "nearest"
    low, high = torch.quantile(values, quantiles, interpolation=interpolation).tolist()
    return MetricInterval(value=value, low=low, high=high, confidence=confidence)


class Bootstrap:
    """Percentile intervals of several metrics, of several sets of probabilities, on one set of
    seeded resamples of the samples.

    :meth:`add` computes each metric's value and the per-sample statistics it is resampled from
    (the probabilities themselves are kept only for metrics without a batched form);
    :meth:`intervals` draws the resamples once and evaluates everything added on them.

    Args:
        n_resamples: number of bootstrap resamples, at most :data:`MAX_RESAMPLES`.
        confidence: coverage of the intervals, in (0, 1).
        seed: an int seed or a ``torch.Generator`` (CPU) that draws the resamples.

    Example:
        >>> from torchcal.metrics import accuracy, expected_calibration_error
        >>> _ = torch.manual_seed(0)
        >>> probs = torch.softmax(torch.randn(2000, 5) * 2, dim=1)
        >>> labels = torch.multinomial(probs, 1).squeeze(1)
        >>> bootstrap = Bootstrap(n_resamples=200)
        >>> bootstrap.add("model", {"ECE": expected_calibration_error, "accuracy": accuracy},
        ...               probs, labels)
        >>> ece = bootstrap.intervals()["model"]["ECE"]
        >>> ece.low < ece.value < ece.high
        True
    """

    def __init__(
        self,
        *,
        n_resamples: int = 1000,
        confidence: float = 0.95,
        seed: int | torch.Generator = 0,
    ) -> None:
        check_positive_int(n_resamples, "n_resamples")
        if n_resamples > MAX_RESAMPLES:
            raise ValueError(
                f"n_resamples must be <= {MAX_RESAMPLES:,} (each resample's value is kept), "
                f"got {n_resamples:,}"
            )
        if isinstance(confidence, bool) or not isinstance(confidence, (int, float)):
            raise TypeError(f"confidence must be a number, got {type(confidence).__name__}")
        if not 0.0 < confidence < 1.0:
            raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
        self.n_resamples = n_resamples
        self.confidence = float(confidence)
        self.generator = _check_seed(seed)
        self.n_samples: int | None = None
        self._groups: dict[str, dict[str, _Resampled]] = {}

    def add(
        self,
        name: str,
        metrics: Mapping[str, Metric],
        probs: Tensor,
        labels: Tensor,
        **metric_kwargs: Any,
    ) -> None:
        """Compute ``metric(probs, labels, **metric_kwargs)`` for each of ``metrics`` and
        prepare its resampling; the samples must be as many as in every earlier call.

        Args:
            name: the name the intervals are returned under.
            metrics: ``{metric name: metric}``.
            probs: (N, K) probabilities.
            labels: (N,) integer labels.
            **metric_kwargs: passed to every metric.
        """
        rows, labels = check_probs_and_labels(probs, labels)
        if self.n_samples is not None and rows.shape[0] != self.n_samples:
            raise ValueError(
                f"{name!r} has {rows.shape[0]} samples but the earlier ones have "
                f"{self.n_samples}: the resamples are drawn once for all of them"
            )
        self.n_samples = rows.shape[0]
        computed: list[SampleStatistics] = []

        def statistics() -> SampleStatistics:
            if not computed:
                squares = brier_score in metrics.values()
                computed.append(statistics_of_rows(rows, labels, squares=squares))
            return computed[0]

        means = _ResampledMeans()
        bin_sums: dict[int, _ResampledBinSums] = {}
        group = self._groups.setdefault(name, {})
        for key, metric in metrics.items():
            found = _from_statistics(metric, metric_kwargs, statistics, means, bin_sums)
            if found is not None:
                group[key] = _Resampled(*found, None, rows.device)
                continue

            def each(indices: Tensor, metric: Metric = metric) -> float:
                indices = indices.to(rows.device)
                return float(metric(rows[indices], labels[indices], **metric_kwargs))

            value = float(metric(rows, labels, **metric_kwargs))
            group[key] = _Resampled(value, None, each, rows.device)

    def intervals(self, *, progress: bool = False) -> dict[str, dict[str, MetricInterval]]:
        """Draw the resamples and return ``{name: {metric: interval}}`` for everything added.

        Args:
            progress: show a progress bar (tqdm, on stderr).
        """
        if self.n_samples is None:
            raise RuntimeError("nothing to resample yet: call add(name, metrics, probs, labels)")
        n_samples, n_resamples = self.n_samples, self.n_resamples
        jobs = [job for group in self._groups.values() for job in group.values()]
        for job in jobs:
            job.values = torch.empty(n_resamples, dtype=torch.float64)
        chunk = max(1, _CHUNK_ELEMENTS // n_samples)
        with tqdm(
            total=n_resamples, desc="bootstrap", unit="resample", disable=not progress
        ) as bar:
            for start in range(0, n_resamples, chunk):
                size = min(chunk, n_resamples - start)
                indices = torch.randint(n_samples, (size, n_samples), generator=self.generator)
                weights: dict[torch.device, Tensor] = {}
                for job in jobs:
                    if job.batched is None:
                        drawn = [job.each(i) for i in indices]
                        job.values[start : start + size] = torch.tensor(drawn, dtype=torch.float64)
                        continue
                    device = job.device
                    if device not in weights:
                        weights[device] = _multiplicities(indices.to(device), n_samples)
                    job.values[start : start + size] = job.batched(weights[device]).cpu()
                bar.update(size)
        return {
            name: {
                key: _percentile_interval(job.value, job.values, self.confidence)
                for key, job in group.items()
            }
            for name, group in self._groups.items()
        }


def _multiplicities(indices: Tensor, n_samples: int) -> Tensor:
    """(N, R) float64 counts of each sample in each of the R resamples drawn as (R, N)
    ``indices``: samples in rows, so that adding a sample's counts into its bin is contiguous."""
    weights = torch.zeros(n_samples, indices.shape[0], dtype=torch.float64, device=indices.device)
    return weights.scatter_add_(0, indices.T, torch.ones_like(weights))


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
        probs: (N, K) probabilities.
        labels: (N,) integer labels.
        n_resamples: number of bootstrap resamples.
        confidence: coverage of the interval, in (0, 1).
        seed: an int seed or a ``torch.Generator`` (CPU) that draws the resamples.
        **metric_kwargs: passed to ``metric``.

    Example:
        >>> from torchcal.metrics import expected_calibration_error
        >>> _ = torch.manual_seed(0)
        >>> probs = torch.softmax(torch.randn(2000, 5) * 2, dim=1)
        >>> labels = torch.multinomial(probs, 1).squeeze(1)
        >>> ece = bootstrap_interval(expected_calibration_error, probs, labels, n_bins=10)
        >>> ece.low < ece.value < ece.high
        True
    """
    bootstrap = Bootstrap(n_resamples=n_resamples, confidence=confidence, seed=seed)
    bootstrap.add("", {"": metric}, probs, labels, **metric_kwargs)
    return bootstrap.intervals()[""][""]


def bootstrap_intervals(
    metrics: Mapping[str, Metric],
    probs: Tensor,
    labels: Tensor,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int | torch.Generator = 0,
    progress: bool = False,
) -> dict[str, MetricInterval]:
    """Several metrics with bootstrap intervals from the same resamples: those
    :func:`bootstrap_interval` draws for each metric with the same int ``seed`` (the values are
    equal; the interval ends of mean-type metrics equal up to float64 rounding, their resampled
    means being computed together).

    Args:
        metrics: ``{name: metric}``, each a function of ``(probs, labels)``.
        probs: (N, K) probabilities.
        labels: (N,) integer labels.
        n_resamples, confidence, seed: as in :func:`bootstrap_interval`.
        progress: show a progress bar (tqdm, on stderr).

    Example:
        >>> from torchcal.metrics import accuracy, negative_log_likelihood
        >>> probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]]).repeat(10, 1)
        >>> labels = torch.tensor([0, 1, 1]).repeat(10)
        >>> found = bootstrap_intervals({"acc": accuracy, "nll": negative_log_likelihood},
        ...                             probs, labels, n_resamples=100)
        >>> round(found["acc"].value, 4), round(found["nll"].value, 4)
        (0.6667, 0.4594)
    """
    bootstrap = Bootstrap(n_resamples=n_resamples, confidence=confidence, seed=seed)
    bootstrap.add("", metrics, probs, labels)
    return bootstrap.intervals(progress=progress)[""]
