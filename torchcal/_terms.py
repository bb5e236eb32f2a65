"""The per-sample terms of the proper scores and the reliability-bin sums, each written once.

The metrics (scores, calibration errors, the bootstrap, the streaming meter) and the temperature
objective's reliability bins all compute these numbers here:

* the negative log-likelihood ``-log p_y`` of a sample, from its label's probability or from its
  logits (``logsumexp(z) - z_y``);
* the Brier term ``sum_k (p_k - 1[k = y])^2 = sum_k p_k^2 - 2 p_y + 1``;
* reliability-bin sums: per equal-width (or given) bin the count, the sum of confidences and the
  sum of correctness, accumulated in float64.

This module sits below the metrics and the objectives and imports nothing of torchcal beyond the
input layer.

Example:
    >>> import torch
    >>> [round(v, 4) for v in nll_terms(torch.tensor([0.9, 0.4])).tolist()]
    [0.1054, 0.9163]
    >>> counts, confidence, correct = bin_sums(
    ...     torch.tensor([0.2, 0.7, 0.9]), torch.tensor([False, True, True]), uniform_edges(2)
    ... )
    >>> counts.tolist(), correct.tolist()
    ([1, 2], [0.0, 2.0])
"""

from __future__ import annotations

import torch
from torch import Tensor

from torchcal._inputs import check_positive_int
from torchcal._inputs.chunks import RowChunks

__all__ = [
    "CHUNK_ELEMENTS",
    "BinSums",
    "bin_index",
    "bin_sums",
    "brier_terms",
    "classwise_bin_sums",
    "floor_bin_sums",
    "floor_bins_are_exact",
    "nll_terms",
    "nll_terms_from_logits",
    "row_chunks",
    "squared_norms",
    "uniform_edges",
]

#: Elements of an (N, K) tensor converted to float64 at a time (8 MB).
CHUNK_ELEMENTS = 1 << 20


def row_chunks(rows: Tensor) -> RowChunks:
    """The ``(start, stop)`` chunks of about :data:`CHUNK_ELEMENTS` elements of (N, K) ``rows``.

    Args:
        rows: an (N, K) tensor.
    """
    return RowChunks.fitting(
        rows.shape[0], row_width=rows.shape[1], device=rows.device, chunk_elements=CHUNK_ELEMENTS
    )


# --- the proper scores' per-sample terms ----------------------------------------------------


def nll_terms(label_probs: Tensor) -> Tensor:
    """The negative log-likelihood ``-log p_y`` of each sample in float64 (``inf`` at 0).

    Args:
        label_probs: (M,) probability of each sample's label, any floating dtype.
    """
    return -label_probs.to(torch.float64).log()


def nll_terms_from_logits(logits: Tensor, labels: Tensor) -> Tensor:
    """``logsumexp(z) - z_y`` per row of (M, K) logits in float64, a chunk of rows at a time.

    Args:
        logits: (M, K) finite logits.
        labels: (M,) int64 labels in [0, K).
    """
    terms = torch.empty(logits.shape[0], dtype=torch.float64, device=logits.device)
    chunks = row_chunks(logits)
    for start, stop in chunks:
        wide = logits[start:stop].to(torch.float64)
        label_logits = wide.gather(1, labels[start:stop, None]).squeeze(1)
        terms[start:stop] = torch.logsumexp(wide, dim=1) - label_logits
    return terms


def squared_norms(rows: Tensor) -> Tensor:
    """``sum_k p_k^2`` of each row, accumulated in float64 in one read of the rows.

    Args:
        rows: (M, K) probabilities.
    """
    # The float64 norm, squared: within a few ulp of the exact sum, with no float64 copy.
    return torch.linalg.vector_norm(rows, dim=1, dtype=torch.float64).square()


def brier_terms(squared_norms: Tensor, label_probs: Tensor) -> Tensor:
    """``sum_k p_k^2 - 2 p_y + 1``: the squared distance of each row from its one-hot label.

    Args:
        squared_norms: (M,) float64 ``sum_k p_k^2`` (see :func:`squared_norms`).
        label_probs: (M,) probability of each sample's label.
    """
    return squared_norms - 2 * label_probs.to(torch.float64) + 1


# --- reliability-bin sums -------------------------------------------------------------------


def uniform_edges(n_bins: int, device: torch.device | str | None = None) -> Tensor:
    """``n_bins + 1`` equal-width edges from 0 to 1 in float64.

    Args:
        n_bins: number of bins, at least 1.
        device: where the edges live.
    """
    check_positive_int(n_bins, "n_bins")
    return torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64, device=device)


def bin_index(confidences: Tensor, edges: Tensor) -> Tensor:
    """The bin of each confidence: ``i`` such that ``edges[i] <= c < edges[i + 1]``, the last
    bin closed.

    Args:
        confidences: values in [0, 1], any shape and floating dtype (compared in float64).
        edges: (n_bins + 1,) float64 edges from 0 to 1.
    """
    return torch.bucketize(confidences.to(torch.float64), edges[1:-1], right=True)


def bin_sums(confidences: Tensor, correct: Tensor, edges: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-bin count (int64), sum of confidence and sum of correctness (float64) for ``edges``.

    Args:
        confidences: (M,) top-label confidences in [0, 1].
        correct: (M,) 0/1 or bool correctness.
        edges: (n_bins + 1,) float64 edges from 0 to 1.
    """
    confidences = confidences.reshape(-1).to(torch.float64)
    n_bins = edges.numel() - 1
    index = bin_index(confidences, edges)
    counts = torch.zeros(n_bins, dtype=torch.int64, device=index.device)
    counts.index_add_(0, index, torch.ones_like(index))
    sums = torch.zeros(2, n_bins, dtype=torch.float64, device=index.device)
    sums[0].index_add_(0, index, confidences)
    sums[1].index_add_(0, index, correct.reshape(-1).to(torch.float64))
    return counts, sums[0], sums[1]


def floor_bins_are_exact(n_bins: int) -> bool:
    """Whether :func:`floor_bin_sums` bins float32 confidences exactly like :func:`bin_sums`
    on :func:`uniform_edges`.

    A float32 confidence ``c`` near an edge ``i / n`` (so ``c >= 1 / (2 n)``) has at most
    ``24 + log2(2 n)`` fractional bits, so unless it equals the edge it lies at least
    ``2**-25 / n**2`` from it, far beyond the float64 edges' rounding for ``n <= 1024``. It can
    equal an edge only if the edge is dyadic: never inside (0, 1) for odd ``n``, and exactly
    representable (so placed alike) when ``n`` is a power of 2.

    Args:
        n_bins: number of equal-width bins.
    """
    return n_bins <= 1024 and (n_bins % 2 == 1 or n_bins & (n_bins - 1) == 0)


def floor_bin_sums(
    confidences: Tensor, correct: Tensor, n_bins: int
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`bin_sums` for equal-width bins of float32 confidences, at a fraction of the cost.

    The bin of ``c`` is ``floor(n_bins * c)``, exact in float64 for a float32 ``c``; see
    :func:`floor_bins_are_exact` for when that matches :func:`bin_sums`.

    Args:
        confidences: (M,) float32 (or narrower) confidences in [0, 1].
        correct: (M,) 0/1 or bool correctness.
        n_bins: number of equal-width bins.
    """
    wide = confidences.to(torch.float64)
    index = wide.mul(n_bins).floor_().to(torch.int64).clamp_(0, n_bins - 1)
    counts = torch.bincount(index, minlength=n_bins)
    sum_confidence = torch.bincount(index, weights=wide, minlength=n_bins)
    sum_correct = torch.bincount(index, weights=correct.to(torch.float64), minlength=n_bins)
    return counts, sum_confidence, sum_correct


def classwise_bin_sums(
    probs: Tensor, labels: Tensor, edges: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """One-vs-rest bin sums of every class at once, (K, n_bins) each, read a row chunk at a time.

    Class ``k``'s bins hold ``p_k`` of every sample; its correct ones are the samples labelled
    ``k``, one per row, so their sums come from the labels' probabilities alone.

    Args:
        probs: (M, K) probabilities.
        labels: (M,) int64 labels in [0, K).
        edges: (n_bins + 1,) float64 edges from 0 to 1.
    """
    n_classes, n_bins = probs.shape[1], edges.numel() - 1
    device = probs.device
    offsets = torch.arange(n_classes, device=device) * n_bins
    counts = torch.zeros(n_classes * n_bins, dtype=torch.int64, device=device)
    sum_probs = torch.zeros(n_classes * n_bins, dtype=torch.float64, device=device)
    chunks = row_chunks(probs)
    for start, stop in chunks:
        wide = probs[start:stop].to(torch.float64)
        index = (bin_index(wide, edges) + offsets).reshape(-1)
        counts.index_add_(0, index, torch.ones_like(index))
        sum_probs.index_add_(0, index, wide.reshape(-1))
    label_probs = probs.gather(1, labels[:, None]).squeeze(1).to(torch.float64)
    label_index = bin_index(label_probs, edges) + labels * n_bins
    sum_correct = torch.zeros(n_classes * n_bins, dtype=torch.float64, device=device)
    sum_correct.index_add_(0, label_index, torch.ones_like(label_probs))
    shape = (n_classes, n_bins)
    return counts.view(shape), sum_probs.view(shape), sum_correct.view(shape)


class BinSums:
    """Reliability-bin sums of confidences given chunk by chunk, binned a batch at a time.

    Binning every chunk on its own would cost a handful of small operations per chunk, which
    dominates for wide rows (a 1,000-class chunk on a CPU is only 262 rows); buffering up to
    ``capacity`` confidences keeps that overhead negligible with O(capacity) memory. Float32
    confidences are binned with :func:`floor_bin_sums` where that is exact, anything else with
    :func:`bin_sums`.

    Args:
        edges: (n_bins + 1,) equal-width float64 edges (:func:`uniform_edges`).
        capacity: confidences buffered before they are binned.
        dtype: the confidences' dtype.
    """

    def __init__(self, edges: Tensor, capacity: int, dtype: torch.dtype) -> None:
        self.edges = edges
        self.confidences = torch.empty(capacity, dtype=dtype, device=edges.device)
        self.correct = torch.empty(capacity, dtype=torch.bool, device=edges.device)
        self.size = 0
        self.sums = torch.zeros(3, edges.numel() - 1, dtype=torch.float64, device=edges.device)

    def add(self, confidences: Tensor, correct: Tensor) -> None:
        """Add confidences and their correctness.

        Args:
            confidences: (M,) confidences in the dtype given at construction.
            correct: (M,) bool correctness.
        """
        count, capacity = confidences.numel(), self.confidences.numel()
        if self.size + count > capacity:
            self._flush()
        if count > capacity:
            self._bin(confidences, correct)
            return
        self.confidences[self.size : self.size + count] = confidences
        self.correct[self.size : self.size + count] = correct
        self.size += count

    def _flush(self) -> None:
        if self.size:
            self._bin(self.confidences[: self.size], self.correct[: self.size])
            self.size = 0

    def _bin(self, confidences: Tensor, correct: Tensor) -> None:
        n_bins = self.sums.shape[1]
        if confidences.dtype == torch.float64 or not floor_bins_are_exact(n_bins):
            parts = bin_sums(confidences, correct, self.edges)
        else:
            parts = floor_bin_sums(confidences, correct, n_bins)
        for total, part in zip(self.sums, parts, strict=True):
            total += part

    def result(self) -> Tensor:
        """(3, n_bins): count, sum of confidence and sum of correctness per bin."""
        self._flush()
        return self.sums
