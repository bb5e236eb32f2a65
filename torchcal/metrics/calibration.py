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
a 0-dim float64 tensor on that device. The probabilities are read a few times (their range, their
row sums, the top-label statistics of :mod:`torchcal.metrics.samples`) and never copied; the bins
then work on float64 vectors of length N, their sums exact up to float64 rounding. Class-wise bins
read the probabilities in row chunks, converting one chunk at a time to float64.

Shapes are those the scalers take: (N, K) with (N,) labels, dense (N, K, *spatial) with
(N, *spatial) labels or token sequences (B, L, V) with (B, L) labels (``class_dim`` as in
:class:`~torchcal.TemperatureScaler`, ``ignore_index`` positions left out), binary (N,) sigmoid
probabilities with 0/1 labels, and multi-label (N, K) probabilities with (N, K) 0/1 targets, where
every (sample, label) pair counts as one binary prediction.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from torchcal._inputs.validation import check_choice
from torchcal.metrics._inputs import (
    check_n_bins,
    check_probs_and_labels,
    row_chunks,
)
from torchcal.metrics.samples import statistics_of_rows

STRATEGIES = ("uniform", "quantile")
NORMS = ("l1", "l2", "max")


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
        return int(self.counts.sum())

    def calibration_error(self, norm: str = "l1") -> Tensor:
        """The ECE (``"l1"``), RMS error (``"l2"``) or MCE (``"max"``) of these bins.

        Works on a batch of bins too (``counts`` etc. of shape (..., n_bins)), as the bootstrap
        uses it.
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


def _bin_edges(confidences: Tensor, n_bins: int, strategy: str) -> Tensor:
    if strategy == "uniform":
        return uniform_edges(n_bins, confidences.device)
    ordered = confidences.to(torch.float64).sort().values
    positions = torch.linspace(0, ordered.numel() - 1, n_bins + 1, device=ordered.device)
    below = positions.floor().long()
    above = positions.ceil().long()
    fraction = positions - below
    edges = ordered[below] + (ordered[above] - ordered[below]) * fraction
    edges[0], edges[-1] = 0.0, 1.0
    return edges


def top_label_bins(
    confidences: Tensor, correct: Tensor, n_bins: int = 15, strategy: str = "uniform"
) -> ReliabilityBins:
    """Reliability bins from per-sample top-label confidences and 0/1 correctness.

    This is the one place binning happens; :func:`reliability_bins`, the fitted scalers' reports,
    the streaming meter and the bootstrap all call it or its per-bin sums.
    """
    check_n_bins(n_bins)
    check_choice(strategy, "strategy", STRATEGIES)
    confidences = confidences.reshape(-1).to(torch.float64).contiguous()
    edges = _bin_edges(confidences, n_bins, strategy)
    counts, sum_confidence, sum_correct = bin_sums(confidences, correct, edges)
    return bins_from_sums(edges, counts, sum_confidence, sum_correct)


def bin_index(confidences: Tensor, edges: Tensor) -> Tensor:
    """The bin of each confidence: ``i`` such that ``edges[i] <= c < edges[i + 1]``."""
    return torch.bucketize(confidences.to(torch.float64), edges[1:-1], right=True)


def bin_sums(confidences: Tensor, correct: Tensor, edges: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-bin count (int64), sum of confidence and sum of correctness (float64) for ``edges``."""
    confidences = confidences.reshape(-1).to(torch.float64)
    n_bins = edges.numel() - 1
    index = bin_index(confidences, edges)
    counts = torch.zeros(n_bins, dtype=torch.int64, device=index.device)
    counts.index_add_(0, index, torch.ones_like(index))
    sums = torch.zeros(2, n_bins, dtype=torch.float64, device=index.device)
    sums[0].index_add_(0, index, confidences)
    sums[1].index_add_(0, index, correct.reshape(-1).to(torch.float64))
    return counts, sums[0], sums[1]


def bins_from_sums(
    edges: Tensor, counts: Tensor, sum_confidence: Tensor, sum_correct: Tensor
) -> ReliabilityBins:
    """:class:`ReliabilityBins` from per-bin sums (empty bins get mean 0)."""
    denominator = counts.clamp(min=1).to(torch.float64)
    return ReliabilityBins(
        edges=edges,
        counts=counts,
        confidence=sum_confidence / denominator,
        accuracy=sum_correct / denominator,
    )


def uniform_edges(n_bins: int, device: torch.device | str | None = None) -> Tensor:
    """``n_bins + 1`` equal-width edges from 0 to 1 in float64."""
    check_n_bins(n_bins)
    return torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64, device=device)


def top_label(
    probs: Tensor,
    labels: Tensor,
    class_dim: int | None = None,
    ignore_index: int | None = -100,
) -> tuple[Tensor, Tensor]:
    """Validated top-label confidences (M,, float64) and correctness (M,, bool) of ``probs``."""
    rows, labels = check_probs_and_labels(probs, labels, class_dim, ignore_index)
    statistics = statistics_of_rows(rows, labels)
    return statistics.confidences, statistics.correct


def reliability_bins(
    probs: Tensor,
    labels: Tensor,
    n_bins: int = 15,
    strategy: str = "uniform",
    *,
    class_dim: int | None = None,
    ignore_index: int | None = -100,
) -> ReliabilityBins:
    """Top-label reliability bins of ``probs`` against ``labels`` (tensors or numpy arrays)."""
    check_n_bins(n_bins)
    check_choice(strategy, "strategy", STRATEGIES)
    confidences, correct = top_label(probs, labels, class_dim, ignore_index)
    return top_label_bins(confidences, correct, n_bins, strategy)


def expected_calibration_error(
    probs: Tensor,
    labels: Tensor,
    n_bins: int = 15,
    strategy: str = "uniform",
    norm: str = "l1",
    *,
    class_dim: int | None = None,
    ignore_index: int | None = -100,
) -> Tensor:
    """Top-label expected calibration error.

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
    strategy: str = "uniform",
    *,
    class_dim: int | None = None,
    ignore_index: int | None = -100,
) -> Tensor:
    """Top-label maximum calibration error (MCE): the largest gap over non-empty bins."""
    return expected_calibration_error(
        probs, labels, n_bins, strategy, "max", class_dim=class_dim, ignore_index=ignore_index
    )


def _classwise_uniform_bins(probs: Tensor, labels: Tensor, edges: Tensor) -> ReliabilityBins:
    """One-vs-rest bins of every class at once: (K, n_bins) sums, binned a row chunk at a time.

    Class ``k``'s bins hold ``p_k`` of every sample; its correct ones are the samples labelled
    ``k``, one per row, so their sums come from the labels' probabilities alone.
    """
    n_classes, n_bins = probs.shape[1], edges.numel() - 1
    device = probs.device
    offsets = torch.arange(n_classes, device=device) * n_bins
    counts = torch.zeros(n_classes * n_bins, dtype=torch.int64, device=device)
    sum_probs = torch.zeros(n_classes * n_bins, dtype=torch.float64, device=device)
    chunks = row_chunks(probs)
    for start in chunks:
        wide = probs[start : start + chunks.step].to(torch.float64)
        index = (bin_index(wide, edges) + offsets).reshape(-1)
        counts.index_add_(0, index, torch.ones_like(index))
        sum_probs.index_add_(0, index, wide.reshape(-1))
    label_probs = probs.gather(1, labels[:, None]).squeeze(1).to(torch.float64)
    label_index = bin_index(label_probs, edges) + labels * n_bins
    sum_correct = torch.zeros(n_classes * n_bins, dtype=torch.float64, device=device)
    sum_correct.index_add_(0, label_index, torch.ones_like(label_probs))
    shape = (n_classes, n_bins)
    return bins_from_sums(edges, counts.view(shape), sum_probs.view(shape), sum_correct.view(shape))


def classwise_calibration_error(
    probs: Tensor,
    labels: Tensor,
    n_bins: int = 15,
    strategy: str = "uniform",
    norm: str = "l1",
    *,
    class_dim: int | None = None,
    ignore_index: int | None = -100,
) -> Tensor:
    """Class-wise (marginal) calibration error: the mean over classes of the one-vs-rest error.

    For each class k the probabilities ``p_k`` of all samples are binned against ``labels == k``.

    Example:
        >>> probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
        >>> round(float(classwise_calibration_error(probs, torch.tensor([0, 1, 1]))), 4)
        0.3333
    """
    check_n_bins(n_bins)
    check_choice(strategy, "strategy", STRATEGIES)
    check_choice(norm, "norm", NORMS)
    probs, labels = check_probs_and_labels(probs, labels, class_dim, ignore_index)
    if strategy == "uniform":
        bins = _classwise_uniform_bins(probs, labels, uniform_edges(n_bins, probs.device))
        return bins.calibration_error(norm).mean()
    errors = [
        top_label_bins(probs[:, k], labels == k, n_bins, strategy).calibration_error(norm)
        for k in range(probs.shape[1])
    ]
    return torch.stack(errors).mean()
