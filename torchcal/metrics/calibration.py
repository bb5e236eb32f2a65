"""Binned calibration errors: top-label ECE/MCE/RMS, class-wise ECE and reliability bins.

Conventions (those of Guo et al. 2017, torchmetrics and netcal):

* The top-label confidence of a sample is its largest probability; it is correct when the label's
  probability equals that maximum (a tie for the top counts as correct).
* ``strategy="uniform"`` splits [0, 1] into ``n_bins`` equal-width bins ``[e_i, e_{i+1})``, the
  last one closed; ``strategy="quantile"`` puts the edges at quantiles of the confidences so that
  the bins hold (nearly) equal numbers of samples.
* ``norm="l1"`` is the ECE ``sum_b |acc_b - conf_b| n_b / N``, ``norm="l2"`` the RMS calibration
  error ``sqrt(sum_b (acc_b - conf_b)^2 n_b / N)`` and ``norm="max"`` the MCE
  ``max_b |acc_b - conf_b|`` over non-empty bins.

Every function takes probabilities and labels (tensors on any device, or numpy arrays) and returns
a 0-dim float64 tensor on that device. The probabilities are read once, a cache-sized row chunk
at a time, for their checks and the top-label statistics of :mod:`torchcal.metrics.samples`, and
never copied; the bins then work on length-N vectors, binned exactly against the float64 edges and
summed in float64 (:mod:`torchcal._terms`), exact up to float64 rounding. Class-wise bins read the
probabilities in row chunks, converting one chunk at a time to float64.

Shapes are those the scalers take: (N, K) with (N,) labels, dense (N, K, *spatial) with
(N, *spatial) labels or token sequences (B, L, V) with (B, L) labels (``class_dim`` as in
:class:`~torchcal.TemperatureScaler`, ``ignore_index`` positions left out), binary (N,) sigmoid
probabilities with 0/1 labels, and multi-label (N, K) probabilities with (N, K) 0/1 targets, where
every (sample, label) pair counts as one binary prediction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor

from torchcal._inputs import check_choice
from torchcal._terms import (
    bin_sums,
    classwise_bin_sums,
    row_chunks,
    uniform_bin_sums,
    uniform_edges,
)
from torchcal.metrics._inputs import check_n_bins, check_probs_and_labels, probs_and_labels
from torchcal.metrics.samples import RowValueCheck, sample_statistics

__all__ = [
    "Norm",
    "ReliabilityBins",
    "Strategy",
    "bins_from_sums",
    "classwise_calibration_error",
    "expected_calibration_error",
    "maximum_calibration_error",
    "reliability_bins",
]

#: How the bin edges are placed: equal width, or at quantiles of the confidences.
Strategy = Literal["uniform", "quantile"]
#: Which calibration error of the bins: ECE (``"l1"``), RMS error (``"l2"``) or MCE (``"max"``).
Norm = Literal["l1", "l2", "max"]
STRATEGIES: tuple[str, ...] = get_args(Strategy)
NORMS: tuple[str, ...] = get_args(Norm)


def _check_bin_options(n_bins: object, strategy: object, norm: object = "l1") -> int:
    """Check the binning options every binned metric takes; return ``n_bins``."""
    n_bins = check_n_bins(n_bins)
    check_choice(strategy, "strategy", STRATEGIES)
    check_choice(norm, "norm", NORMS)
    return n_bins


@dataclass(frozen=True)
class ReliabilityBins:
    """Per-bin statistics of top-label confidence against accuracy.

    Attributes:
        edges: (n_bins + 1,) bin edges, from 0 to 1.
        counts: (n_bins,) number of samples in each bin.
        confidence: (n_bins,) mean confidence in each bin (0 where a bin is empty).
        accuracy: (n_bins,) fraction correct in each bin (0 where a bin is empty).

    Example:
        >>> probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
        >>> bins = reliability_bins(probs, torch.tensor([0, 1, 1]), n_bins=2)
        >>> bins.counts.tolist(), round(float(bins.calibration_error()), 4)
        ([0, 3], 0.0667)
    """

    edges: Tensor
    counts: Tensor
    confidence: Tensor
    accuracy: Tensor

    @property
    def n_samples(self) -> int:
        """The number of samples in all bins."""
        return int(self.counts.sum())

    def calibration_error(self, norm: Norm = "l1") -> Tensor:
        """The ECE (``"l1"``), RMS error (``"l2"``) or MCE (``"max"``) of these bins.

        Works on a batch of bins too (``counts`` etc. of shape (..., n_bins)), as the bootstrap
        uses it.

        Args:
            norm: ``"l1"``, ``"l2"`` or ``"max"``.
        """
        check_choice(norm, "norm", NORMS)
        gaps = (self.accuracy - self.confidence).abs()
        counts = self.counts.to(gaps.dtype)
        if norm == "max":
            return gaps.masked_fill(counts == 0, -torch.inf).amax(dim=-1)
        weights = counts / counts.sum(dim=-1, keepdim=True)
        if norm == "l1":
            return (gaps * weights).sum(dim=-1)
        return (gaps.square() * weights).sum(dim=-1).sqrt()


def bins_from_sums(
    edges: Tensor, counts: Tensor, sum_confidence: Tensor, sum_correct: Tensor
) -> ReliabilityBins:
    """:class:`ReliabilityBins` from per-bin sums (empty bins get mean 0).

    Args:
        edges: (n_bins + 1,) bin edges.
        counts: (..., n_bins) samples per bin.
        sum_confidence: (..., n_bins) float64 sum of the confidences in each bin.
        sum_correct: (..., n_bins) float64 number of correct samples in each bin.
    """
    denominator = counts.clamp(min=1).to(torch.float64)
    return ReliabilityBins(
        edges=edges,
        counts=counts,
        confidence=sum_confidence / denominator,
        accuracy=sum_correct / denominator,
    )


def _quantile_edges(confidences: Tensor, n_bins: int) -> Tensor:
    ordered = confidences.to(torch.float64).sort().values
    positions = torch.linspace(0, ordered.numel() - 1, n_bins + 1, device=ordered.device)
    below = positions.floor().long()
    above = positions.ceil().long()
    fraction = positions - below
    edges = ordered[below] + (ordered[above] - ordered[below]) * fraction
    edges[0], edges[-1] = 0.0, 1.0
    return edges


def top_label_bins(
    confidences: Tensor, correct: Tensor, n_bins: int, strategy: str
) -> ReliabilityBins:
    """Reliability bins of (checked) ``n_bins`` and ``strategy`` from per-sample confidences
    and 0/1 correctness."""
    confidences = confidences.reshape(-1)
    if strategy == "uniform":
        edges = uniform_edges(n_bins, confidences.device)
        return bins_from_sums(edges, *uniform_bin_sums(confidences, correct, n_bins))
    edges = _quantile_edges(confidences, n_bins)
    return bins_from_sums(edges, *bin_sums(confidences, correct, edges))


def reliability_bins(
    probs: Tensor,
    labels: Tensor,
    n_bins: int = 15,
    strategy: Strategy = "uniform",
    *,
    class_dim: int | None = None,
    ignore_index: int | None = -100,
) -> ReliabilityBins:
    """Top-label reliability bins of ``probs`` against ``labels`` (tensors or numpy arrays).

    Args:
        probs: probabilities, of any shape listed in this module's description.
        labels: integer labels (or 0/1 targets for sigmoid probabilities) matching ``probs``.
        n_bins: number of bins, in [1, 100,000].
        strategy: ``"uniform"`` (equal width) or ``"quantile"`` (equal counts).
        class_dim: the class dimension of dense or sequence probabilities (as in
            :class:`~torchcal.TemperatureScaler`).
        ignore_index: label value of positions to leave out (``None`` keeps all).
    """
    n_bins = _check_bin_options(n_bins, strategy)
    statistics = sample_statistics(probs, labels, class_dim, ignore_index)
    return top_label_bins(statistics.confidences, statistics.correct, n_bins, strategy)


def expected_calibration_error(
    probs: Tensor,
    labels: Tensor,
    n_bins: int = 15,
    strategy: Strategy = "uniform",
    norm: Norm = "l1",
    *,
    class_dim: int | None = None,
    ignore_index: int | None = -100,
) -> Tensor:
    """Top-label expected calibration error (or its RMS or max form, by ``norm``).

    Args:
        probs, labels, n_bins, strategy, class_dim, ignore_index: as in
            :func:`reliability_bins`.
        norm: ``"l1"`` (ECE), ``"l2"`` (RMS calibration error) or ``"max"`` (MCE).

    Example:
        >>> probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
        >>> round(float(expected_calibration_error(probs, torch.tensor([0, 1, 1]))), 4)
        0.3333
    """
    check_choice(norm, "norm", NORMS)
    bins = reliability_bins(
        probs, labels, n_bins, strategy, class_dim=class_dim, ignore_index=ignore_index
    )
    return bins.calibration_error(norm)


def maximum_calibration_error(
    probs: Tensor,
    labels: Tensor,
    n_bins: int = 15,
    strategy: Strategy = "uniform",
    *,
    class_dim: int | None = None,
    ignore_index: int | None = -100,
) -> Tensor:
    """Top-label maximum calibration error (MCE): the largest gap over non-empty bins.

    Args:
        probs, labels, n_bins, strategy, class_dim, ignore_index: as in
            :func:`reliability_bins`.
    """
    return expected_calibration_error(
        probs, labels, n_bins, strategy, "max", class_dim=class_dim, ignore_index=ignore_index
    )


def classwise_calibration_error(
    probs: Tensor,
    labels: Tensor,
    n_bins: int = 15,
    strategy: Strategy = "uniform",
    norm: Norm = "l1",
    *,
    class_dim: int | None = None,
    ignore_index: int | None = -100,
) -> Tensor:
    """Class-wise (marginal) calibration error: the mean over classes of the one-vs-rest error.

    For each class k the probabilities ``p_k`` of all samples are binned against ``labels == k``.

    Args:
        probs, labels, n_bins, strategy, class_dim, ignore_index: as in
            :func:`reliability_bins`.
        norm: ``"l1"``, ``"l2"`` or ``"max"``, as in :func:`expected_calibration_error`.

    Example:
        >>> probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
        >>> round(float(classwise_calibration_error(probs, torch.tensor([0, 1, 1]))), 4)
        0.3333
    """
    n_bins = _check_bin_options(n_bins, strategy, norm)
    if strategy == "uniform":  # the values are checked in the one read of the bins
        probs, labels, checked = probs_and_labels(probs, labels, class_dim, ignore_index)
        checks = None if checked else RowValueCheck(probs, row_chunks(probs).rows)
        counts, sum_probs, sum_correct = classwise_bin_sums(
            probs, labels, n_bins, visit=checks and checks.add, counts=norm != "l1"
        )
        if checks is not None:
            checks.verify()
        if counts is None:  # the L1 error needs no counts: sum_b |n_b (acc_b - conf_b)| / M
            return (sum_correct - sum_probs).abs_().sum() / (probs.shape[0] * probs.shape[1])
        bins = bins_from_sums(uniform_edges(n_bins, probs.device), counts, sum_probs, sum_correct)
        return bins.calibration_error(norm).mean()
    probs, labels = check_probs_and_labels(probs, labels, class_dim, ignore_index)
    errors = [
        top_label_bins(probs[:, k], labels == k, n_bins, strategy).calibration_error(norm)
        for k in range(probs.shape[1])
    ]
    return torch.stack(errors).mean()
