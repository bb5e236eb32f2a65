"""Per-sample statistics of probabilities against labels, the one place they are computed.

Every metric of top-label probabilities is a function of a few numbers per sample: the top-label
confidence ``max_k p_k``, whether the label has it (a tie for the top counts as correct), the
label's probability ``p_y`` and, for the Brier score, ``sum_k p_k^2``. They are read from the
(N, K) probabilities once, a row chunk at a time and together with the checks of the values, into
vectors of length N; the metrics, the streaming meter and
the bootstrap (which resamples these vectors instead of the probabilities) all start from here.
The NLL and Brier terms made of them are those of :mod:`torchcal._terms`.

Example:
    >>> import torch
    >>> stats = sample_statistics(torch.tensor([[0.9, 0.1], [0.6, 0.4]]), torch.tensor([0, 1]))
    >>> stats.correct.tolist(), [round(v, 4) for v in stats.nll_terms().tolist()]
    ([True, False], [0.1054, 0.9163])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from torchcal._inputs import row_sum_tolerance
from torchcal._terms import (
    brier_terms,
    nll_terms,
    ordered_bits,
    row_chunks,
    row_maxima,
    square_sum,
    squared_norms,
)
from torchcal.metrics._inputs import check_rows, probs_and_labels

__all__ = ["RowValueCheck", "SampleStatistics", "sample_statistics", "statistics_of_rows"]


@dataclass(frozen=True)
class SampleStatistics:
    """Per-sample vectors (M,) of validated probability rows.

    Attributes:
        confidences: the top-label confidence ``max_k p_k``, in the probabilities' dtype (exact;
            widened where used).
        correct: bool, whether the label's probability equals the maximum.
        label_probs: ``p_y``, in the probabilities' dtype (exact; widened where used).
        squared_norms: ``sum_k p_k^2``, or ``None`` when not asked for.
        square_total: 0-dim float64 ``sum_i sum_k p_ik^2`` over all rows (Brier totals), or
            ``None`` when not asked for.
    """

    confidences: Tensor
    correct: Tensor
    label_probs: Tensor
    squared_norms: Tensor | None = None
    square_total: Tensor | None = None

    @property
    def n_samples(self) -> int:
        """How many samples the statistics describe."""
        return self.confidences.numel()

    def nll_terms(self) -> Tensor:
        """``-log p_y`` per sample (``inf`` where ``p_y = 0``)."""
        return nll_terms(self.label_probs)

    def brier_terms(self) -> Tensor:
        """``sum_k (p_k - 1[k = y])^2`` per sample; needs ``squared_norms``."""
        if self.squared_norms is None:
            raise ValueError("these statistics were computed without squares=True")
        return brier_terms(self.squared_norms, self.label_probs)


#: Row sums within the input layer's tolerance less this margin pass its check for sure (1e-4 is
#: far more than two float32 sums of one row can differ by); rows summing further off, if any, are
#: judged by that check itself.
_ROW_SUM_MARGIN = 1e-4


class RowValueCheck:
    """The checks of (M, K) probability rows' values, made chunk by chunk while a pass reads them.

    Each chunk adds its range and row sums (:meth:`add`); :meth:`verify` then asks whether all
    values are finite, in [0, 1] and every row sums to 1, and only if not searches the rows again
    for the detailed message (:func:`~torchcal.metrics._inputs.check_rows`).

    Args:
        rows: the (M, K) rows the chunks come from.
        chunk_rows: rows per chunk of the pass (every chunk but the last).

    Example:
        >>> rows = torch.tensor([[0.9, 0.1], [0.6, 0.4]])
        >>> check = RowValueCheck(rows, chunk_rows=1)
        >>> for start in range(2):
        ...     check.add(rows[start : start + 1], start, start + 1)
        >>> check.verify()
    """

    def __init__(self, rows: Tensor, chunk_rows: int) -> None:
        self.rows, self.chunk_rows = rows, chunk_rows
        n_rows = rows.shape[0]
        self.blas = rows.dtype in (torch.float32, torch.float64)  # a BLAS product reads fastest
        self.ones = rows.new_ones(rows.shape[1])
        self.sums = rows.new_empty(n_rows, dtype=rows.dtype if self.blas else torch.float32)
        # The range of the values' bits read as integers (twice as fast as a float range): all
        # of them lie in [0, 1] when these lie in [0, bits of 1] (-0.0 reads negative, so such
        # rows are judged by the detailed check).
        self.one = ordered_bits(rows.new_ones(()))
        self.ranges = rows.new_empty(2, -(-n_rows // chunk_rows), dtype=self.one.dtype)

    def add(self, chunk: Tensor, start: int, stop: int) -> None:
        """Add the range and row sums of a chunk of the rows.

        Args:
            chunk: ``rows[start:stop]``.
            start: its first row.
            stop: the row after its last.
        """
        number = start // self.chunk_rows
        torch.aminmax(ordered_bits(chunk), out=(self.ranges[0, number], self.ranges[1, number]))
        if self.blas:
            torch.mv(chunk, self.ones, out=self.sums[start:stop])
        else:  # in float32: float16 and bfloat16 cannot hold a sum to 1e-3
            torch.sum(chunk, dim=1, dtype=torch.float32, out=self.sums[start:stop])

    def verify(self) -> None:
        """Raise the detailed message unless every value added is fine."""
        tolerance = row_sum_tolerance(self.rows.dtype) - _ROW_SUM_MARGIN
        within = (self.ranges[0].min() >= 0) & (self.ranges[1].max() <= self.one)
        extremes = [within, *torch.aminmax(self.sums)]
        in_range, low_sum, high_sum = torch.stack(
            [x.to(torch.float64) for x in extremes]
        ).tolist()  # one host read; False below for NaN
        if not (in_range and 1 - tolerance <= low_sum and high_sum <= 1 + tolerance):
            check_rows(self.rows)  # raises the detailed message, or finds the sums within tolerance


def statistics_of_rows(
    rows: Tensor,
    labels: Tensor,
    *,
    squares: bool = False,
    square_total: bool = False,
    check: bool = False,
) -> SampleStatistics:
    """:class:`SampleStatistics` of (M, K) rows and (M,) int64 labels, from one pass over the
    rows a chunk at a time.

    Per chunk (while it sits in cache): the largest value of each row, the labels' values and,
    with ``squares``, ``sum_k p_k^2`` for the Brier score; with ``check`` also the chunk's range
    and row sums, which must show the rows finite, in [0, 1] and summing to 1 (or the input
    layer's checks give the detailed message).

    Args:
        rows: (M, K) probabilities.
        labels: (M,) int64 labels in [0, K), on the rows' device.
        squares: also read ``sum_k p_k^2`` of each row (for the Brier score).
        square_total: also read the total of ``p_ik^2`` over all rows (a Brier total).
        check: also check the rows' values (when :func:`probs_and_labels` left them unchecked).
    """
    if torch.is_grad_enabled() and rows.requires_grad:  # out= arguments would refuse autograd
        return _differentiable_statistics(rows, labels, squares, square_total, check)
    n_rows = rows.shape[0]
    confidences, label_probs = rows.new_empty(n_rows), rows.new_empty(n_rows, 1)
    norms = rows.new_empty(n_rows, dtype=torch.float64) if squares else None
    total = rows.new_zeros((), dtype=torch.float64) if square_total else None
    chunks = row_chunks(rows)
    if total is not None:
        wide = rows.new_empty(min(chunks.rows, n_rows) * rows.shape[1], dtype=torch.float64)
    checks = RowValueCheck(rows, chunks.rows) if check else None
    for start, stop in chunks:
        chunk = rows[start:stop]
        row_maxima(chunk, out=confidences[start:stop])
        torch.gather(chunk, 1, labels[start:stop, None], out=label_probs[start:stop])
        if norms is not None:
            norms[start:stop] = squared_norms(chunk)
        if total is not None:
            total += square_sum(chunk, wide)
        if checks is not None:
            checks.add(chunk, start, stop)
    if checks is not None:
        checks.verify()
    return SampleStatistics(
        confidences=confidences,
        correct=label_probs.squeeze(1) == confidences,
        label_probs=label_probs.squeeze(1),
        squared_norms=norms,
        square_total=total,
    )


def _differentiable_statistics(
    rows: Tensor, labels: Tensor, squares: bool, square_total: bool, check: bool
) -> SampleStatistics:
    """:func:`statistics_of_rows` of rows that require grad, by whole-tensor reductions."""
    if check:
        check_rows(rows)
    confidences = rows.amax(dim=1)
    label_probs = rows.gather(1, labels[:, None]).squeeze(1)
    return SampleStatistics(
        confidences=confidences,
        correct=label_probs == confidences,
        label_probs=label_probs,
        squared_norms=squared_norms(rows) if squares else None,
        square_total=square_sum(rows) if square_total else None,
    )


def sample_statistics(
    probs: Tensor,
    labels: Tensor,
    class_dim: int | None = None,
    ignore_index: int | None = -100,
    *,
    squares: bool = False,
) -> SampleStatistics:
    """Validate ``probs`` and ``labels`` (any shape the metrics take) and read their statistics.

    Args:
        probs, labels, class_dim, ignore_index: as in
            :func:`~torchcal.metrics.expected_calibration_error`.
        squares: also read ``sum_k p_k^2`` of each row (for the Brier score).
    """
    rows, labels, checked = probs_and_labels(probs, labels, class_dim, ignore_index)
    return statistics_of_rows(rows, labels, squares=squares, check=not checked)
