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

from collections.abc import Callable

import torch
from torch import Tensor

from torchcal._inputs import check_positive_int
from torchcal._inputs.chunks import RowChunks
from torchcal._side_by_side import tally

__all__ = [
    "BIN_BLOCK",
    "CHUNK_ELEMENTS",
    "CPU_CHUNK_ELEMENTS",
    "BinSums",
    "bin_index",
    "bin_sums",
    "brier_terms",
    "brier_total",
    "classwise_bin_sums",
    "floor_bins_are_exact",
    "nll_terms",
    "nll_terms_from_logits",
    "nll_total",
    "ordered_bits",
    "row_chunks",
    "row_maxima",
    "square_sum",
    "squared_norms",
    "uniform_bin_index",
    "uniform_bin_sums",
    "uniform_edges",
]

#: Elements of an (N, K) tensor read (or converted to float64) at a time; ``None`` for
#: :data:`CPU_CHUNK_ELEMENTS` on a CPU and the device's default
#: (:func:`torchcal._inputs.chunks.default_chunk_elements`) elsewhere.
CHUNK_ELEMENTS: int | None = None
#: On a CPU: 2 MB of float32, whose few reads per chunk hit the cache, in few enough chunks that
#: the per-chunk calls cost little.
CPU_CHUNK_ELEMENTS = 1 << 19
#: Samples binned at a time by :func:`uniform_bin_sums`: 2 MB of float64 temporaries, in few
#: enough blocks that the per-block calls cost little (one million confidences: 10.2 ms in
#: blocks of 2**16, 5.9 ms in blocks of 2**18).
BIN_BLOCK = 1 << 18


def row_chunks(rows: Tensor) -> RowChunks:
    """The ``(start, stop)`` chunks of :data:`CHUNK_ELEMENTS` elements of (N, K) ``rows``.

    Args:
        rows: an (N, K) tensor.
    """
    elements = CHUNK_ELEMENTS or (CPU_CHUNK_ELEMENTS if rows.device.type == "cpu" else None)
    return RowChunks.fitting(
        rows.shape[0], row_width=rows.shape[1], device=rows.device, chunk_elements=elements
    )


# --- the proper scores' per-sample terms ----------------------------------------------------


def nll_terms(label_probs: Tensor) -> Tensor:
    """The negative log-likelihood ``-log p_y`` of each sample in float64 (``inf`` at 0).

    Args:
        label_probs: (M,) probability of each sample's label, any floating dtype.
    """
    return -label_probs.to(torch.float64).log()


def nll_total(label_probs: Tensor) -> Tensor:
    """The sum of :func:`nll_terms` as a 0-dim float64 tensor, with one float64 temporary.

    Args:
        label_probs: (M,) probability of each sample's label, any floating dtype.
    """
    return -label_probs.to(torch.float64, copy=True).log_().sum()


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


def square_sum(rows: Tensor, buffer: Tensor | None = None) -> Tensor:
    """``sum_i sum_k p_ik^2`` of all of ``rows`` as a 0-dim float64 tensor, in one read.

    Args:
        rows: (M, K) probabilities.
        buffer: float64 storage of at least ``M * K`` elements to widen the rows into (a pass
            over chunks reuses one instead of allocating one per chunk).
    """
    if buffer is None:
        wide = rows.reshape(-1).to(torch.float64)
    else:
        wide = buffer[: rows.numel()].copy_(rows.reshape(-1))
    return torch.dot(wide, wide)


def brier_terms(squared_norms: Tensor, label_probs: Tensor) -> Tensor:
    """``sum_k p_k^2 - 2 p_y + 1``: the squared distance of each row from its one-hot label.

    Args:
        squared_norms: (M,) float64 ``sum_k p_k^2`` (see :func:`squared_norms`).
        label_probs: (M,) probability of each sample's label.
    """
    return squared_norms - 2 * label_probs.to(torch.float64) + 1


def brier_total(square_sum: Tensor, label_sum: Tensor, n_samples: int) -> Tensor:
    """The sum of :func:`brier_terms` over samples, from their totals alone:
    ``sum_i sum_k p_ik^2 - 2 sum_i p_iy + M``.

    Args:
        square_sum: 0-dim float64 ``sum_i sum_k p_ik^2`` (see :func:`square_sum`).
        label_sum: 0-dim float64 ``sum_i p_iy``.
        n_samples: ``M``.
    """
    return square_sum - 2 * label_sum + n_samples


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
    return torch.bucketize(confidences.to(torch.float64).contiguous(), edges[1:-1], right=True)


def floor_bins_are_exact(n_bins: int) -> bool:
    """Whether ``floor(n_bins * c)`` alone bins float32 (or narrower) confidences exactly like
    :func:`bin_index` on :func:`uniform_edges`.

    A float32 confidence ``c`` near an edge ``i / n`` (so ``c >= 1 / (2 n)``) has at most
    ``24 + log2(2 n)`` fractional bits, so unless it equals the edge it lies at least
    ``2**-25 / n**2`` from it, far beyond the float64 edges' rounding for ``n <= 1024``. It can
    equal an edge only if the edge is dyadic: never inside (0, 1) for odd ``n``, and exactly
    representable (so placed alike) when ``n`` is a power of 2.

    Args:
        n_bins: number of equal-width bins.
    """
    return n_bins <= 1024 and (n_bins % 2 == 1 or n_bins & (n_bins - 1) == 0)


def uniform_bin_index(confidences: Tensor, n_bins: int) -> Tensor:
    """:func:`bin_index` on ``uniform_edges(n_bins)``, equal to it, without a search.

    The bin is ``floor(n_bins * c)``, which can be one off only next to an edge; one comparison
    with each of the bin's true edges puts it right (none is needed where
    :func:`floor_bins_are_exact`).

    Args:
        confidences: values in [0, 1], any shape and floating dtype.
        n_bins: number of equal-width bins.

    Example:
        >>> uniform_bin_index(torch.tensor([0.0, 0.2, 1 / 3, 0.99, 1.0]), 3).tolist()
        [0, 0, 1, 2, 2]
    """
    exact = confidences.dtype != torch.float64 and floor_bins_are_exact(n_bins)
    return _uniform_bin_index(confidences.to(torch.float64), n_bins, floor_is_exact=exact)


def _uniform_bin_index(wide: Tensor, n_bins: int, *, floor_is_exact: bool) -> Tensor:
    """:func:`uniform_bin_index` of float64 confidences ``wide``; ``floor_is_exact`` where they
    are float32 (or narrower) values and :func:`floor_bins_are_exact`."""
    # float -> int64 truncates, which is the floor for c >= 0 (anything below 0 goes to bin 0)
    index = wide.mul(n_bins).to(torch.int64).clamp_(0, n_bins - 1)
    if floor_is_exact:
        return index
    bounds = uniform_edges(n_bins, wide.device)
    bounds[0], bounds[-1] = -torch.inf, torch.inf  # the first and last bins are open-ended
    index -= (wide < bounds[index]).to(torch.int64)
    index += (wide >= bounds[index + 1]).to(torch.int64)
    return index


def _cell_tallies(cells: Tensor, weights: Tensor, n_bins: int) -> tuple[Tensor, Tensor]:
    """The count and the float64 sum of ``weights`` in each (correctness, bin) cell, ``bin +
    n_bins * correct``, (2 * n_bins,) each (:func:`torchcal._side_by_side.tally`)."""
    counts, sums = tally(cells, weights, 2 * n_bins)
    assert counts is not None
    return counts, sums


def _bin_totals(
    counts: Tensor, weighted: Tensor, n_bins: int, scale: float = 1.0
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-bin count, sum of confidence and sum of correctness from :func:`_cell_tallies`'
    cells, the weights being ``scale`` times the confidences."""
    tallies = counts.view(2, n_bins)
    sum_confidence = weighted.view(2, n_bins).sum(dim=0) / scale
    return tallies.sum(dim=0), sum_confidence, tallies[1].to(torch.float64)


def bin_sums(confidences: Tensor, correct: Tensor, edges: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-bin count (int64), sum of confidence and sum of correctness (float64) for ``edges``.

    Args:
        confidences: (M,) top-label confidences in [0, 1].
        correct: (M,) 0/1 or bool correctness.
        edges: (n_bins + 1,) float64 edges from 0 to 1.
    """
    confidences, correct = confidences.reshape(-1), correct.reshape(-1)
    n_bins = edges.numel() - 1
    cells = bin_index(confidences, edges).add_(correct.to(torch.bool), alpha=n_bins)
    return _bin_totals(*_cell_tallies(cells, confidences.to(torch.float64), n_bins), n_bins)


def uniform_bin_sums(
    confidences: Tensor, correct: Tensor, n_bins: int
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`bin_sums` on ``uniform_edges(n_bins)``, binned by :func:`uniform_bin_index`
    :data:`BIN_BLOCK` samples at a time (their temporaries stay small).

    Each block is scaled to ``n_bins * c`` in float64 (exact for float32 and narrower values,
    whose bin is then its floor) and binned in cells that also say whether the sample is
    correct (bytes for up to 128 bins: the counting loops run fastest on them): one count and
    one weighted count per block give all three sums, the confidences' as the sum of
    ``n_bins * c`` over ``n_bins``.

    Args:
        confidences: (M,) confidences in [0, 1], any floating dtype.
        correct: (M,) 0/1 or bool correctness.
        n_bins: number of equal-width bins.
    """
    confidences, correct = confidences.reshape(-1), correct.reshape(-1)
    if confidences.requires_grad:  # all at once, as one block would be
        wide = confidences.to(torch.float64)
        cells = _uniform_bin_index(wide.detach(), n_bins, floor_is_exact=False)
        cells.add_(correct.to(torch.bool), alpha=n_bins)
        tallies = _cell_tallies(cells, wide * n_bins, n_bins)
    else:
        tallies = _cell_sums(confidences, correct, n_bins)
    return _bin_totals(*tallies, n_bins, scale=n_bins)


def _cell_sums(confidences: Tensor, correct: Tensor, n_bins: int) -> tuple[Tensor, Tensor]:
    """:func:`_cell_tallies` of :func:`uniform_bin_sums`, the weights ``n_bins * c``, a block
    at a time."""
    exact = confidences.dtype != torch.float64 and floor_bins_are_exact(n_bins)
    n_cells = 2 * n_bins
    cell_dtype = torch.uint8 if n_cells <= 1 << 8 else torch.int32  # bytes count fastest
    totals = None  # a lone block's tallies as they come (small data: no accumulators)
    for start, stop in RowChunks(confidences.numel(), BIN_BLOCK):
        block = confidences[start:stop]
        scaled = block.to(torch.float64, copy=True).mul_(n_bins)
        if exact:
            cells = scaled.to(cell_dtype)  # float -> int truncates: the floor
        else:
            cells = _uniform_bin_index(block.to(torch.float64), n_bins, floor_is_exact=False)
        cells = cells.clamp_(0, n_bins - 1).add_(correct[start:stop].to(torch.bool), alpha=n_bins)
        tallies = _cell_tallies(cells, scaled, n_bins)
        totals = tallies if totals is None else (totals[0] + tallies[0], totals[1] + tallies[1])
    if totals is None:  # no samples
        counts = torch.zeros(n_cells, dtype=torch.int64, device=confidences.device)
        return counts, counts.to(torch.float64)
    return totals


#: The integer dtype of each floating dtype's width.
_BITS_OF = {
    torch.float64: torch.int64,
    torch.float32: torch.int32,
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
}


def ordered_bits(values: Tensor) -> Tensor:
    """``values``' bits read as same-width signed integers (a view), or ``values`` themselves
    for a dtype without such integers (their own order serves the same reductions).

    Non-negative floats order as their bits do, and integer reductions run faster; every
    negative value (-0.0 included) and a NaN with its sign bit set reads negative, +inf and every
    other NaN above the bits of any finite value.

    Example:
        >>> bits = ordered_bits(torch.tensor([0.25, 1.0, -0.0]))
        >>> bits.tolist()[2] < 0 < bits.tolist()[0] < bits.tolist()[1]
        True
    """
    bits = _BITS_OF.get(values.dtype)
    return values if bits is None else values.view(bits)


def row_maxima(rows: Tensor, out: Tensor | None = None) -> Tensor:
    """The largest value of each row of (M, K) non-negative ``rows`` (into (M,) ``out`` if given).

    The bits of non-negative floats, read as integers, order as the values do, and an integer
    maximum is faster (on a CPU, twice as fast for 10 columns, and never slower from 2 to 1,000
    columns). A row with a negative entry may get another maximum than ``amax`` gives, but
    such rows fail the value checks that every caller makes; a NaN stays a NaN.

    Args:
        rows: (M, K) non-negative values.
        out: (M,) tensor of their dtype to write into.

    Example:
        >>> row_maxima(torch.tensor([[0.2, 0.8], [0.5, 0.5]]), out=torch.empty(2)).tolist()
        [0.800000011920929, 0.5]
    """
    bits = ordered_bits(rows)
    if out is None:
        return torch.amax(bits, dim=1).view(rows.dtype)
    torch.amax(bits, dim=1, out=out.view(bits.dtype))
    return out


def _entries_at_least(values: Tensor, threshold: float, block: int = 64) -> Tensor | None:
    """The indices of the entries of 1-D non-negative ``values`` at or above ``threshold > 0``
    where they are few, or ``None`` where they may be many (then looking at every entry costs
    less).

    The maxima of blocks of ``block`` entries find them: only blocks whose maximum reaches the
    threshold are searched entry by entry (each search costs a host sync on an accelerator).

    Example:
        >>> values = torch.tensor([0.1, 0.2, 0.1, 0.9, 0.3, 0.1, 0.2, 0.1, 0.0])
        >>> _entries_at_least(values, 0.5, block=2).tolist()
        [3]
        >>> _entries_at_least(values, 0.1, block=2) is None
        True
    """
    whole = values.numel() // block * block
    blocks = values[:whole].view(-1, block)
    hot = (row_maxima(blocks) >= threshold).nonzero().squeeze(1)
    if 4 * hot.numel() > blocks.shape[0]:
        return None
    found = (blocks[hot] >= threshold).nonzero()
    tail = (values[whole:] >= threshold).nonzero().squeeze(1)
    return torch.cat([hot[found[:, 0]] * block + found[:, 1], tail + whole])


def classwise_bin_sums(
    probs: Tensor,
    labels: Tensor,
    n_bins: int,
    *,
    visit: Callable[[Tensor, int, int], None] | None = None,
    counts: bool = True,
) -> tuple[Tensor | None, Tensor, Tensor]:
    """One-vs-rest equal-width bin sums of every class at once, (K, n_bins) each, from one read
    of the probabilities a row chunk at a time.

    Class ``k``'s bins hold ``p_k`` of every sample; its correct ones are the samples labelled
    ``k``, one per row, so their sums come from the labels' probabilities alone. Most entries of
    wide rows lie in the first bin (a row has at most ``n_bins`` entries of ``1 / n_bins`` or
    more), so where they are few only the others are binned one by one; the first bin's count
    and sum are what the class's column total leaves (its sum exact up to float64 rounding of
    that total). Where they are many (narrow rows), every entry is binned by ``floor(n_bins * p)``
    and summed as ``n_bins * p`` in float64 (both exact from float32), then divided by ``n_bins``;
    a chunk's cells are counted in two halves side by side (:func:`torchcal._side_by_side.tally`).

    Args:
        probs: (M, K) probabilities.
        labels: (M,) int64 labels in [0, K).
        n_bins: number of equal-width bins.
        visit: called with each chunk of rows and its ``(start, stop)`` while it is in cache
            (the callers' value checks).
        counts: also count the entries of each bin (an L1 error needs only the sums); ``None``
            in their place if not.

    Returns:
        Per (class, bin): the count (int64, or ``None``), the sum of the probabilities and the
        number of samples labelled with the class (float64).
    """
    n_rows, n_classes = probs.shape
    device = probs.device
    size = n_classes * n_bins
    # Per (class, bin) cell: counts and sums of n_bins * p of dense chunks, counts and sums of p
    # of sparse chunks (whose first bins are filled in at the end).
    dense_counts = torch.zeros(size, dtype=torch.int64, device=device)
    dense_sums = torch.zeros(size, dtype=torch.float64, device=device)
    sparse_counts, sparse_sums = torch.zeros_like(dense_counts), torch.zeros_like(dense_sums)
    sparse_rows, column_sums = 0, torch.zeros(n_classes, dtype=torch.float64, device=device)
    # A little below the first edge: every entry past it is found, and one found below it lands
    # in the first bin, whose sums are set from the column totals anyway.
    threshold = 0.99 / n_bins
    floor_is_exact = probs.dtype != torch.float64 and floor_bins_are_exact(n_bins)
    chunks = row_chunks(probs)
    chunk_rows = min(chunks.rows, n_rows)
    wide = torch.empty(chunk_rows, n_classes, dtype=torch.float64, device=device)
    # int16 and int32 convert from float and add fastest (uint8 and int64 several times slower)
    cell_dtype = torch.int16 if size <= 1 << 15 else torch.int32 if size < 1 << 31 else torch.int64
    cells = torch.empty(chunk_rows, n_classes, dtype=cell_dtype, device=device)
    labelled = torch.zeros(size, dtype=torch.int64, device=device)  # dense rows' label cells
    class_cells = torch.arange(0, size, n_bins, dtype=cell_dtype, device=device)
    dense = False  # once a chunk is dense (narrow rows), the rest are taken as dense too
    for start, stop in chunks:
        chunk = probs[start:stop]
        if visit is not None:
            visit(chunk, start, stop)
        entries = None if dense else _entries_at_least(chunk.reshape(-1), threshold)
        if entries is None:  # bin every entry
            dense = True
            scaled = wide[: stop - start].copy_(chunk).mul_(n_bins)  # exact from float32
            index = cells[: stop - start]
            if floor_is_exact:
                index.copy_(scaled)  # float -> int truncates: the floor
            else:
                wide_chunk = chunk.to(torch.float64)
                index.copy_(_uniform_bin_index(wide_chunk, n_bins, floor_is_exact=False))
            index = index.clamp_(0, n_bins - 1).add_(class_cells)
            label_cells = index.gather(1, labels[start:stop, None]).view(-1)
            labelled += torch.bincount(label_cells, minlength=size)
            found, sums = tally(index.view(-1), scaled.view(-1), size, counts=counts)
            dense_sums += sums
            if found is not None:
                dense_counts += found
            continue
        wide_chunk = wide[: stop - start].copy_(chunk)
        column_sums += wide_chunk.sum(dim=0)
        sparse_rows += stop - start
        values, classes = wide_chunk.reshape(-1)[entries], entries.remainder_(n_classes)
        index = _uniform_bin_index(values, n_bins, floor_is_exact=floor_is_exact)
        index += classes * n_bins
        if counts:
            sparse_counts += torch.bincount(index, minlength=size)
        sparse_sums += torch.bincount(index, weights=values, minlength=size)
    shape = (n_classes, n_bins)
    sparse_counts, sparse_sums = sparse_counts.view(shape), sparse_sums.view(shape)
    sparse_counts[:, 0] = sparse_rows - sparse_counts[:, 1:].sum(dim=1)
    sparse_sums[:, 0] = column_sums - sparse_sums[:, 1:].sum(dim=1)
    sum_probs = dense_sums.view(shape).div_(n_bins).add_(sparse_sums)
    tallies = dense_counts.view(shape).add_(sparse_counts) if counts else None
    if sparse_rows:  # the sparse chunks come first: their labels' cells
        sparse_labels = labels[:sparse_rows]
        label_probs = probs[:sparse_rows].gather(1, sparse_labels[:, None]).squeeze(1)
        label_cells = uniform_bin_index(label_probs, n_bins) + sparse_labels * n_bins
        labelled += torch.bincount(label_cells, minlength=size)
    return tallies, sum_probs, labelled.view(shape).to(torch.float64)


class BinSums:
    """Reliability-bin sums of confidences given chunk by chunk, binned a batch at a time.

    Binning every chunk on its own would cost a handful of small operations per chunk, which
    dominates for wide rows (a 1,000-class chunk on a CPU is only 262 rows); buffering up to
    ``capacity`` confidences keeps that overhead negligible with O(capacity) memory. They are
    binned by :func:`uniform_bin_sums`. A pass of one chunk (small data) is binned as given,
    without the buffer; the buffer is made when a second chunk comes (holding many small chunks
    instead would leave small allocations scattered among the chunks' large ones, and the heap
    grows: 100 MB more over a 1.6 GB file).

    Args:
        edges: (n_bins + 1,) equal-width float64 edges (:func:`uniform_edges`).
        capacity: confidences buffered before they are binned.
        dtype: the confidences' dtype.
    """

    def __init__(self, edges: Tensor, capacity: int, dtype: torch.dtype) -> None:
        self.edges = edges
        self.capacity = capacity
        self.dtype = dtype
        self.first: tuple[Tensor, Tensor] | None = None  # a lone chunk, held as given
        self.confidences: Tensor | None = None
        self.correct: Tensor | None = None
        self.size = 0
        self.sums = torch.zeros(3, edges.numel() - 1, dtype=torch.float64, device=edges.device)

    def add(self, confidences: Tensor, correct: Tensor) -> None:
        """Add confidences and their correctness (not changed until :meth:`result`).

        Args:
            confidences: (M,) confidences in the dtype given at construction.
            correct: (M,) bool correctness.
        """
        count = confidences.numel()
        if self.size + count > self.capacity:
            self._flush()
        if count > self.capacity:
            self._bin(confidences, correct)
            return
        if self.size == 0:
            self.first, self.size = (confidences, correct), count
            return
        if self.first is not None:  # a second chunk: buffer both
            held, self.first = self.first, None
            self.size = 0
            self._buffer(*held)
        self._buffer(confidences, correct)

    def _buffer(self, confidences: Tensor, correct: Tensor) -> None:
        if self.confidences is None or self.correct is None:
            device = self.edges.device
            self.confidences = torch.empty(self.capacity, dtype=self.dtype, device=device)
            self.correct = torch.empty(self.capacity, dtype=torch.bool, device=device)
        count = confidences.numel()
        self.confidences[self.size : self.size + count] = confidences
        self.correct[self.size : self.size + count] = correct
        self.size += count

    def _flush(self) -> None:
        if self.first is not None:
            self._bin(*self.first)
            self.first = None
        elif self.size and self.confidences is not None and self.correct is not None:
            self._bin(self.confidences[: self.size], self.correct[: self.size])
        self.size = 0

    def _bin(self, confidences: Tensor, correct: Tensor) -> None:
        parts = uniform_bin_sums(confidences, correct, self.sums.shape[1])
        for total, part in zip(self.sums, parts, strict=True):
            total += part

    def result(self) -> Tensor:
        """(3, n_bins): count, sum of confidence and sum of correctness per bin."""
        self._flush()
        return self.sums
