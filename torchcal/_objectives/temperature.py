"""The temperature-scaling objectives, streamed over row chunks without an autograd graph.

With ``beta = 1 / T`` the mean negative log-likelihood of ``softmax(beta * z)`` is

    NLL(beta) = mean_i [ logsumexp_j(beta * z_ij) - beta * z_iy ]

which is convex in ``beta``, with

    dNLL/dbeta   = mean_i ( E_p[z_i] - z_iy )
    d2NLL/dbeta2 = mean_i Var_p[z_i] >= 0 .

All three, and the reliability-bin sums of the top-label confidences (for the ECE), come out of one
pass over the logits. For sigmoid models (binary, multi-label) the NLL is the binary cross-entropy
of ``sigmoid(beta * z)``, convex in ``beta`` in the same way.

Each chunk of rows is read from a row source (an in-memory tensor, a numpy array or memory map, a
file: see :mod:`~torchcal._inputs.sources`), shifted by its row maximum, computed in float32
(float64 for float64 logits) and reduced in float64. A fit therefore holds one chunk's
temporaries, O(N) row
statistics (the row maximum and the label's logit, in the logits' dtype) and O(n_bins) sums: no
N x K temporary and no full-size copy of half-precision logits. Rows whose label equals
``ignore_index`` are skipped chunk by chunk rather than copied out.

A chunk whose arithmetic overflows float32 (finite logits whose row range exceeds float32's, such
as +-3e38) makes its pass's sums non-finite; the pass is then redone in float64, for this and every
later pass, where such values are exact enough. A pass still not finite in float64 is refused with
an error, never handed to a solver.

Two degenerate cases are decided from exact facts of the data, before any solver runs (see
:attr:`_StreamedNLL.limit`): the slope dNLL/dbeta at beta = 0 (T -> infinity is optimal when it is
>= 0, by convexity) and whether every label is a top score (then the NLL falls all the way to
T -> 0). Both are sums of the validating pass, so a distributed fit reduces them with the rest.

With a distributed reducer (:mod:`~torchcal._inputs.distributed`) every pass's sums are combined
over the ranks, so each rank optimises the objective of all ranks' rows together.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from torchcal._inputs.chunks import RowChunks
from torchcal._inputs.distributed import LocalReducer, sum_in_rank_order
from torchcal._inputs.sources import RowSource, TensorSource, check_source
from torchcal._inputs.validation import (
    check_binary_targets,
    check_labels,
    check_matrix_layout,
    check_tensor,
)
from torchcal._terms import BinSums as _BinSums
from torchcal._terms import uniform_edges

#: The NLL and its first four derivatives in beta: the first entries of every pass's sums (the
#: third and fourth only for the warm start's Taylor steps, see ``evaluate(taylor=True)``).
N_MOMENTS = 5
#: Confidences buffered before they are binned (see :class:`torchcal._terms.BinSums`).
BIN_BATCH = 1 << 16
#: Logits whose widest row range is below this are computed in float64: in float32 the squares
#: of such differences (the curvature) underflow, and a solver would stop on a flat objective.
FLOAT32_SMALLEST_RANGE = 2.0**-40
#: Below this, even float64 squares underflow: such logits are refused.
FLOAT64_SMALLEST_RANGE = 2.0**-480
#: Objectives with fewer logits than this (on every rank) also compute the NLL's second to fourth
#: derivatives at beta = 1 in their validating pass: the warm start takes its first Taylor step
#: from there on all the rows (larger data start from a subsample's optimum instead).
START_MOMENTS_MAX_ELEMENTS = 1 << 20
#: Softmax passes over rows of at most this many classes work on classes-first chunks.
CLASSES_FIRST_MAX_CLASSES = 16


@dataclass(frozen=True)
class Evaluation:
    """NLL and its derivatives in ``beta = 1/T`` at one ``beta``, averaged over the samples.

    ``bins`` (if asked for) holds the reliability-bin sums of the top-label confidences at
    ``beta``: shape (3, n_bins), the count, sum of confidence and sum of correctness per bin.
    ``third`` and ``fourth`` (if asked for) are the third and fourth derivatives in ``beta``.
    """

    beta: float
    nll: float
    grad: float
    hess: float | None
    bins: Tensor | None
    third: float | None = None
    fourth: float | None = None

    def holds(self, hessian: bool, bins: bool, taylor: bool) -> bool:
        """Whether it has what an evaluation asked for these parts would have.

        Args:
            hessian: the second derivative.
            bins: the reliability-bin sums.
            taylor: the second, third and fourth derivatives.
        """
        return (
            (self.hess is not None or not (hessian or taylor))
            and (self.bins is not None or not bins)
            and (self.third is not None or not taylor)
        )


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@dataclass(frozen=True)
class _Chunk:
    """Rows ``start:stop`` of the source in the compute dtype, less the ignored ones (``keep``)."""

    start: int
    stop: int
    logits: Tensor
    keep: Tensor | None  # (stop - start,) bool, None when every row counts

    def compacted(self) -> _Chunk:
        """The chunk with the rows that ``keep`` leaves out dropped from ``logits``."""
        if self.keep is None:
            return self
        return _Chunk(self.start, self.stop, self.logits[self.keep], self.keep)


class _StreamedNLL:
    """Shared machinery: chunked passes over a row source, float64 sums, pass counting.

    Building an objective makes one validating pass over this process's rows. With a
    distributed ``reducer`` the caller then checks that every rank's pass succeeded and calls
    :meth:`synchronise`; with the default local reducer that happens at once.
    """

    def __init__(
        self,
        source: RowSource,
        labels: Tensor,
        *,
        ignore_index: int | None,
        chunk_elements: int | None,
        n_bins: int,
        reducer: LocalReducer | None,
    ) -> None:
        self.source = source
        self.labels = labels
        self.ignore_index = ignore_index
        self.device = source.device
        self.n_rows = source.shape[0]  # this process's rows, ignored ones included
        self.compute_dtype = _compute_dtype(source.dtype)
        self.row_width = source.shape[1] if len(source.shape) > 1 else 1
        self.chunks = RowChunks.fitting(
            self.n_rows, row_width=self.row_width, device=self.device, chunk_elements=chunk_elements
        )
        self.n_bins = n_bins
        self.edges = uniform_edges(n_bins, self.device)
        self.reducer = reducer or LocalReducer()
        # This rank's choice; the reported moments need every rank's (see synchronise).
        self.start_moments = self.n_rows * self.row_width < START_MOMENTS_MAX_ELEMENTS
        self.latest: Evaluation | None = None  # the last full-data evaluation, reused if asked
        self.row_offset = 0  # rows held by the ranks before this one
        self.passes = 0
        self._local = self._prepare()
        self.passes = 1
        if not self.reducer.distributed:
            self.synchronise()

    # ------------------------------------------------------------------- subclass interface
    def _prepare(self) -> Tensor:
        """Validate this process's rows; return :meth:`_new_sums` at beta = 1 and the extras."""
        raise NotImplementedError

    def _add_chunk_sums(
        self,
        sums: Tensor,
        chunk: _Chunk,
        beta: float,
        hessian: bool,
        bins: _BinSums | None,
        taylor: bool = False,
    ) -> None:
        """Add the chunk's sums of the NLL and its derivatives (up to the fourth with ``taylor``,
        else up to the second with ``hessian``) to ``sums``, and its confidences to ``bins``."""
        raise NotImplementedError

    def _strided_row_state(self, step: int, offset: int) -> None:
        """Slice the per-row state of a :meth:`subsample` view (its rows are already strided)."""

    def _slope_at_zero_scale(self) -> float:
        """``slope_at_zero`` over ``n_samples * dNLL/dbeta`` at beta = 0."""
        raise NotImplementedError

    # ------------------------------------------------------------------- passes
    def _chunks(self, keep_all: bool = False) -> Iterator[_Chunk]:
        """Chunks of the kept rows, or with ``keep_all`` of every row (``keep`` marks the kept)."""
        for start, stop in self.chunks:
            logits = self.source.read(start, stop).to(self.device, self.compute_dtype)
            keep = None
            if self.ignore_index is not None:
                keep = self.labels[start:stop] != self.ignore_index
                keep = None if bool(keep.all()) else keep
            chunk = _Chunk(start, stop, logits, keep)
            yield chunk if keep_all else chunk.compacted()

    @staticmethod
    def _rows(values: Tensor, chunk: _Chunk) -> Tensor:
        """The entries of a per-row tensor that belong to ``chunk``'s kept rows."""
        rows = values[chunk.start : chunk.stop]
        return rows if chunk.keep is None else rows[chunk.keep]

    def _scratch(self, index: int, shape: torch.Size) -> Tensor:
        """An uninitialised chunk-sized temporary, on a CPU one of a few reused buffers.

        Reusing them spares every chunk a fresh allocation (and its page faults); an
        accelerator's caching allocator already does that.
        """
        if self.device.type != "cpu":
            return torch.empty(shape, dtype=self.compute_dtype, device=self.device)
        buffers = self.__dict__.setdefault("_scratch_buffers", {})
        size = shape.numel()
        buffer = buffers.get(index)
        if buffer is None or buffer.numel() < size or buffer.dtype != self.compute_dtype:
            buffers[index] = torch.empty(
                max(size, min(self.chunks.rows, self.n_rows) * self.row_width),
                dtype=self.compute_dtype,
            )
        return buffers[index][:size].view(shape)

    def _new_sums(self) -> Tensor:
        return torch.zeros(N_MOMENTS, dtype=torch.float64, device=self.device)

    def _new_bins(self) -> _BinSums:
        return _BinSums(self.edges, BIN_BATCH, self.compute_dtype)

    def _finish(
        self, beta: float, sums: Tensor, hessian: bool, bins: bool, taylor: bool = False
    ) -> Evaluation:
        nll, grad, hess, third, fourth = (sums[:N_MOMENTS] / self.n_samples).tolist()
        return Evaluation(
            beta=beta,
            nll=nll,
            grad=grad,
            hess=hess if hessian or taylor else None,
            bins=sums[N_MOMENTS:].reshape(3, self.n_bins) if bins else None,
            third=third if taylor else None,
            fourth=fourth if taylor else None,
        )

    def _local_sums(self, beta: float, hessian: bool, bins: bool, taylor: bool = False) -> Tensor:
        """This process's sums at ``beta`` (and bin sums), in float64 if float32 overflows."""
        sums, bin_sums = self._new_sums(), self._new_bins() if bins else None
        for chunk in self._chunks():
            self._add_chunk_sums(sums, chunk, beta, hessian, bin_sums, taylor)
        self.passes += 1
        if bin_sums is not None:
            sums = torch.cat([sums, bin_sums.result().reshape(-1)])
        if not _reported_sums_finite(sums) and self.compute_dtype != torch.float64:
            self.compute_dtype = torch.float64  # finite logits whose arithmetic overflows float32
            return self._local_sums(beta, hessian, bins, taylor)
        return sums

    def evaluate(
        self, beta: float, *, hessian: bool = False, bins: bool = False, taylor: bool = False
    ) -> Evaluation:
        """NLL, dNLL/dbeta (and d2NLL/dbeta2, reliability-bin sums) at ``beta`` in one pass.

        ``taylor=True`` adds the second, third and fourth derivatives (for warm-start steps).
        Raises ``ValueError`` (on every rank) if the sums are not finite even in float64.
        Asked again at the ``beta`` of the previous evaluation (the validating pass's at
        ``beta = 1`` included) for nothing it lacks, it returns that evaluation without a pass.
        """
        latest = self.latest
        if latest is not None and latest.beta == beta and latest.holds(hessian, bins, taylor):
            return latest
        totals = self.reducer.sum(self._local_sums(beta, hessian, bins, taylor))
        if not _reported_sums_finite(totals):
            raise ValueError(
                f"the temperature-scaling NLL at T = {1.0 / beta:.4g} overflows even in float64: "
                f"the logits' row ranges (or magnitudes) reach {self.largest_range:.4g}, too wide "
                "to calibrate; check the model's outputs"
            )
        self.latest = self._finish(beta, totals, hessian, bins, taylor)
        return self.latest

    def _initial_sums(self, sums: Tensor, bins: _BinSums) -> Tensor:
        """The validating pass's sums and bins at beta = 1, redone in float64 if they overflowed
        (the NLL or its first two derivatives: the others only shape warm-start steps)."""
        if not bool(torch.isfinite(sums[:3]).all()) and self.compute_dtype != torch.float64:
            self.compute_dtype = torch.float64
            moments = self.start_moments
            return self._local_sums(1.0, moments, True, moments)
        return torch.cat([sums, bins.result().reshape(-1)])

    @property
    def limit(self) -> str | None:
        """Where the NLL's infimum over T lies when the data alone decide it, else ``None``.

        ``"upper"`` (T -> infinity): dNLL/dbeta at beta = 0 is >= 0, so by convexity the NLL
        never falls as beta grows from 0 (logits no better than the label marginal, all-equal
        logits). ``"lower"`` (T -> 0): every label is a top score of its row (a non-negative
        margin for sigmoids), so every row's NLL falls, or stays, as beta grows. Both are exact
        facts of the validating pass (over every rank), decided before any solver runs, so
        underflow in the objective (an NLL of exactly 0, a zero gradient) cannot hide them.

        Example:
            >>> logits = torch.eye(3).repeat(4, 1) * 5  # every label the top score
            >>> SoftmaxTemperatureNLL(logits, torch.arange(3).repeat(4)).limit
            'lower'
            >>> SoftmaxTemperatureNLL(torch.zeros(4, 3), torch.tensor([0, 1, 2, 0])).limit
            'upper'
        """
        if self.slope_at_zero >= 0:
            return "upper"
        if self.n_top == self.n_samples:
            return "lower"
        return None

    # ------------------------------------------------------------------- ranks
    def synchronise(self) -> None:
        """Combine the validation pass over all ranks: sample counts, offsets, the T = 1 report.

        Every rank must call it, in the same order, once all of them have validated their data.
        """
        parts = self.reducer.gather(self._local)
        initial_dtype = self.compute_dtype
        n_sums = N_MOMENTS + 3 * self.n_bins
        totals = sum_in_rank_order(parts)
        total, per_rank = totals[n_sums:].tolist(), parts[:, n_sums:].T.tolist()
        self.row_offset = int(sum(per_rank[2][: self.reducer.rank]))
        self.n_samples = int(total[0])
        self.n_correct = int(total[1])
        # Softmax: the smallest and largest label over all ranks (stored negated and as is).
        self.label_range = (-int(max(per_rank[3])), int(max(per_rank[4])))
        self.n_top = int(total[5])
        self.slope_at_zero = total[6]  # has the sign of dNLL/dbeta at 0
        #: dNLL/dbeta at beta = 0 itself (subsamples keep the full data's)
        self.grad_at_zero = self.slope_at_zero / (self._slope_at_zero_scale() * self.n_samples)
        self.largest_range = max(per_rank[7])
        if 0 < self.largest_range < FLOAT32_SMALLEST_RANGE:
            if self.largest_range < FLOAT64_SMALLEST_RANGE:
                raise ValueError(
                    f"the logits' row ranges (or magnitudes) are at most {self.largest_range:.4g}: "
                    "too small for their differences to be computed; check the model's outputs"
                )
            self.compute_dtype = torch.float64
        moments = int(total[8]) == parts.shape[0]  # every rank added them
        self.initial = self._finish(1.0, totals[:n_sums], moments, True, moments)
        # The warm start and the solvers may reuse it, unless later passes need float64.
        reusable = _reported_sums_finite(totals[:n_sums]) and self.compute_dtype == initial_dtype
        self.latest = self.initial if reusable else None

    def subsample(self, step: int) -> _StreamedNLL:
        """The same objective on every ``step``-th row of all ranks' rows, without copying them.

        Rows are counted across ranks in rank order, so the subsample is the one a single
        process would take from the concatenated data. Used for warm starts.
        """
        if step <= 1:
            return self
        offset = (-self.row_offset) % step
        view = copy.copy(self)
        view.source = self.source.every(step, offset)
        view.n_rows = view.source.shape[0]
        view.chunks = dataclasses.replace(self.chunks, n_rows=view.n_rows)
        view.labels = self.labels[offset::step]
        view.passes = 0
        view.latest = None
        view._strided_row_state(step, offset)
        kept = view.n_rows
        if self.ignore_index is not None:
            kept = int((view.labels != self.ignore_index).sum())
        count = torch.tensor([float(kept)], dtype=torch.float64)
        view.n_samples = max(1, int(self.reducer.sum(count)[0]))
        return view

    # ------------------------------------------------------------------- checks
    def _kept_rows(self) -> tuple[int, Tensor | None]:
        """How many rows count, and the (N,) mask of them (None when every row counts)."""
        if self.ignore_index is None:
            return self.n_rows, None
        keep = self.labels != self.ignore_index
        n_kept = int(keep.sum())
        if n_kept == 0:
            raise ValueError(
                f"every one of the {self.labels.numel()} labels equals "
                f"ignore_index={self.ignore_index}: nothing is left to calibrate on"
            )
        if n_kept == self.n_rows:
            self.ignore_index = None  # nothing to skip: no masks in the passes
            return n_kept, None
        return n_kept, keep

    @staticmethod
    def _raise_if_not_finite(bad: int, first: int, what: str, plural: str) -> None:
        if bad:
            raise ValueError(
                f"logits contain NaN or infinite values in {bad} {what if bad == 1 else plural}, "
                f"e.g. {what} {first}; check the model's outputs before calibrating"
            )

    def _extras(
        self,
        n_kept: int,
        n_correct: int,
        label_low: int,
        label_high: int,
        n_top: int,
        slope_at_zero: float,
        largest_range: float,
    ) -> Tensor:
        """The per-rank numbers after the validating pass's sums and bins: kept rows, rows whose
        label is the (or a tied) top score, all rows, minus the smallest label, the largest label,
        rows whose label is a top score (a non-negative margin for sigmoids), a sum with the sign
        of dNLL/dbeta at beta = 0, the widest row range (the largest magnitude for sigmoids) and
        1 if the sums hold the second to fourth derivatives."""
        values = [n_kept, n_correct, self.n_rows, -label_low, label_high, n_top, slope_at_zero]
        values.append(largest_range)  # reduced by its maximum, not summed
        values.append(float(self.start_moments))
        return torch.tensor(values, dtype=torch.float64, device=self.device)


class SoftmaxTemperatureNLL(_StreamedNLL):
    """Mean NLL of ``softmax(beta * logits)`` and its derivatives, one streamed pass per call.

    ``logits`` is an (N, K) tensor or row source. Building the objective makes one validating pass
    over it: it rejects NaN/inf values and probability rows, stores the per-row maximum and the
    label's logit (O(N) memory, in the logits' dtype), and evaluates the objective at
    ``beta = 1``. Rows whose label is ``ignore_index`` are left out.

    Example:
        >>> logits = torch.tensor([[2.0, 1.0, 0.1], [0.5, 2.5, 0.0]])
        >>> objective = SoftmaxTemperatureNLL(logits, torch.tensor([0, 2]))
        >>> round(objective.evaluate(1.0).nll, 4)
        1.5569
    """

    def __init__(
        self,
        logits: Tensor | RowSource,
        labels: Tensor,
        *,
        ignore_index: int | None = None,
        chunk_elements: int | None = None,
        n_bins: int = 15,
        reducer: LocalReducer | None = None,
    ) -> None:
        check_matrix_layout(logits.shape, logits.dtype)
        if isinstance(logits, Tensor):
            logits = TensorSource(logits)
        n_samples, n_classes = logits.shape
        labels = check_labels(labels, n_samples, n_classes, ignore_index=ignore_index)
        self.n_classes = n_classes
        #: Few classes are laid out classes-first in each pass: reductions over a short row are
        #: several times slower than over the classes of a (K, rows) chunk.
        self.classes_first = n_classes <= CLASSES_FIRST_MAX_CLASSES
        super().__init__(
            logits,
            labels.to(logits.device),
            ignore_index=ignore_index,
            chunk_elements=chunk_elements,
            n_bins=n_bins,
            reducer=reducer,
        )

    def _prepare(self) -> Tensor:
        """Validate, store row maxima and label logits, evaluate at beta = 1 (this rank only)."""
        n_kept, keep = self._kept_rows()
        storage = {"dtype": self.source.dtype, "device": self.device}
        self.row_max = torch.empty(self.n_rows, **storage)
        self.label_logit = torch.empty(self.n_rows, **storage)
        row_min = torch.empty(self.n_rows, **storage)
        sums, bins = self._new_sums(), self._new_bins()
        slope = torch.zeros((), dtype=torch.float64, device=self.device)
        # The smallest and largest kept label of each chunk, gathered on the device.
        extremes = torch.iinfo(self.labels.dtype)
        label_ranges = self.labels.new_empty(2, len(self.chunks))
        for number, chunk in enumerate(self._chunks(keep_all=True)):
            rows = slice(chunk.start, chunk.stop)
            # Few classes: one classes-first copy serves the row statistics and the shift.
            by_class = self._by_class(chunk.logits) if self.classes_first else None
            view, dim = (chunk.logits, 1) if by_class is None else (by_class, 0)
            self.row_max[rows] = view.amax(dim=dim)
            row_min[rows] = view.amin(dim=dim)
            # K (dNLL/dbeta at beta = 0) per row: sum_j z_j - K z_y, exact in float64 for
            # logits of one magnitude (all-equal rows give exactly 0).
            row_sums = view.sum(dim=dim, dtype=torch.float64)
            row_sums = row_sums if chunk.keep is None else row_sums[chunk.keep]
            labels = self.labels[rows]
            if chunk.keep is None:
                torch.aminmax(labels, out=(label_ranges[0, number], label_ranges[1, number]))
            else:
                label_ranges[0, number] = labels.where(chunk.keep, extremes.max).amin()
                label_ranges[1, number] = labels.where(chunk.keep, extremes.min).amax()
                labels = labels.where(chunk.keep, 0)
            self.label_logit[rows] = chunk.logits.gather(1, labels[:, None]).squeeze(1)
            shifted = None
            if by_class is not None and chunk.keep is None:
                shifted = by_class.sub_(self.row_max[rows].to(self.compute_dtype))
            moments = self.start_moments
            self._add_chunk_sums(sums, chunk.compacted(), 1.0, moments, bins, moments, shifted)
            label_logits = self._rows(self.label_logit, chunk).to(torch.float64)
            slope += torch.sub(row_sums, label_logits, alpha=self.n_classes).sum()
        # A row's range is NaN or infinite where the row is not finite or its range overflows.
        span = self.row_max.to(torch.float64) - row_min.to(torch.float64)
        maxima, minima = self.row_max, row_min
        # The label's score is the row's maximum: a tie for the top counts as correct.
        correct = self.label_logit == self.row_max
        if keep is not None:
            span = span.where(keep, 0.0)
            maxima, minima, correct = maxima[keep], minima[keep], correct & keep
        largest_range, low, high, n_correct, label_low, label_high, slope_sum = torch.stack(
            [
                span.max(),
                minima.min().to(torch.float64),
                maxima.max().to(torch.float64),
                correct.sum().to(torch.float64),
                label_ranges[0].min().to(torch.float64),
                label_ranges[1].max().to(torch.float64),
                slope,
            ]
        ).tolist()  # one host read
        if not math.isfinite(largest_range):
            self._refuse_rows_beyond_float64(row_min, keep, span)
        # The first row whose range float32 cannot hold, or None: calibrators that cannot
        # represent such rows refuse them by it.
        self.first_wide_row = None
        if largest_range > torch.finfo(torch.float32).max:
            self.first_wide_row = int((span > torch.finfo(torch.float32).max).nonzero()[0])
        del row_min
        if low >= 0 and high <= 1 and self._rows_sum_to_one():
            raise ValueError(
                "logits look like probabilities: every row lies in [0, 1] and sums to 1. "
                "Temperature scaling needs the raw scores before softmax; pass the model's logits, "
                "or inputs='probs' if only probabilities are available"
            )
        initial = self._initial_sums(sums, bins)
        extras = self._extras(
            n_kept,
            int(n_correct),
            int(label_low),
            int(label_high),
            int(n_correct),
            slope_sum,
            largest_range,
        )
        return torch.cat([initial, extras])

    def _refuse_rows_beyond_float64(
        self, row_min: Tensor, keep: Tensor | None, span: Tensor
    ) -> None:
        """Raise for the first kind of row found whose range is not finite: a row holding NaN or
        an infinity, else a finite row whose range max - min overflows float64."""
        finite = torch.isfinite(self.row_max) & torch.isfinite(row_min)
        if keep is not None:
            finite |= ~keep
        bad = (~finite).nonzero()
        self._raise_if_not_finite(bad.numel(), int(bad[0]) if bad.numel() else -1, "row", "rows")
        row = int((~torch.isfinite(span)).nonzero()[0])
        raise ValueError(
            f"logits row {row} spans from {float(self.row_max[row]):.4g} down past "
            f"-{torch.finfo(torch.float64).max:.4g}: its range max - min overflows float64, "
            "too wide to calibrate; check the model's outputs"
        )

    def _rows_sum_to_one(self) -> bool:
        return all(
            bool(((chunk.logits.sum(dim=1) - 1).abs() <= 1e-3).all()) for chunk in self._chunks()
        )

    def _slope_at_zero_scale(self) -> float:
        return float(self.n_classes)

    def _strided_row_state(self, step: int, offset: int) -> None:
        self.row_max = self.row_max[offset::step]
        self.label_logit = self.label_logit[offset::step]

    def _add_chunk_sums(
        self,
        sums: Tensor,
        chunk: _Chunk,
        beta: float,
        hessian: bool,
        bins: _BinSums | None,
        taylor: bool = False,
        shifted: Tensor | None = None,
    ) -> None:
        """See :meth:`_StreamedNLL._add_chunk_sums`; ``shifted`` is the chunk's
        :meth:`_shifted` logits where the caller has them already."""
        row_max = self._rows(self.row_max, chunk).to(self.compute_dtype)
        gap = self._rows(self.label_logit, chunk).to(self.compute_dtype) - row_max  # <= 0
        if shifted is None:
            shifted = self._shifted(chunk.logits, row_max)  # <= 0
        dim = 0 if self.classes_first else 1
        weights = torch.mul(shifted, beta, out=self._scratch(1, shifted.shape)).exp_()  # max 1
        total = weights.sum(dim=dim)
        # raw moments E_p[s^k] of s = z - max(z)
        count = 4 if taylor else 2 if hessian else 1
        mean, *higher = (sum_.div_(total) for sum_ in _power_sums(weights, shifted, dim, count))
        terms = [total.log().sub_(gap, alpha=beta), mean - gap]  # NLL, E_p[z] - z_y
        if hessian or taylor:
            second, mean_square = higher[0], mean.square()
            terms.append(second - mean_square)  # the variance
            if taylor:
                third, fourth = higher[1:]
                terms += _third_and_fourth_cumulants(mean, second, third, fourth, mean_square)
        sums[: len(terms)] += torch.stack(terms).sum(dim=1, dtype=torch.float64)
        if bins is not None:
            bins.add(total.reciprocal(), gap == 0)

    def _shifted(self, logits: Tensor, row_max: Tensor) -> Tensor:
        """``logits - row_max`` per row in a scratch buffer: classes-first, (K, rows), when
        :attr:`classes_first`, else (rows, K)."""
        if self.classes_first:
            return torch.sub(logits.t(), row_max, out=self._classes_first_scratch(logits))
        return torch.sub(logits, row_max[:, None], out=self._scratch(0, logits.shape))

    def _by_class(self, logits: Tensor) -> Tensor:
        """A classes-first (K, rows) copy of a chunk's logits, in the scratch buffer of
        :meth:`_shifted` (shifting it in place gives what that would)."""
        out = self._classes_first_scratch(logits)
        return torch.add(logits.t(), 0.0, out=out)  # a transposing copy, faster than copy_

    def _classes_first_scratch(self, logits: Tensor) -> Tensor:
        """The (K, rows) scratch buffer for a (rows, K) chunk laid out classes-first."""
        return self._scratch(0, torch.Size((logits.shape[1], logits.shape[0])))


def _power_sums(weights: Tensor, shifted: Tensor, dim: int, count: int) -> list[Tensor]:
    """``sum(weights * shifted**k, dim)`` for k = 1..count, overwriting ``weights``.

    Rows (``dim=1``) take dot products along each row; classes-first chunks (``dim=0``), whose
    rows are columns, multiply in place and sum over the classes.
    """
    if dim == 1:
        sums = [torch.linalg.vecdot(weights, shifted)]
        sums += [torch.linalg.vecdot(weights.mul_(shifted), shifted) for _ in range(count - 1)]
        return sums
    return [weights.mul_(shifted).sum(dim=0) for _ in range(count)]


def _reported_sums_finite(sums: Tensor) -> bool:
    """Whether the NLL, its first two derivatives and the bin sums are finite.

    The third and fourth derivatives only shape warm-start steps: where they overflow (huge
    logits raised to the fourth power) the step falls back to Newton's, so they do not count.
    """
    values = sums.tolist()  # one read of a few dozen numbers
    return all(map(math.isfinite, values[:3])) and all(map(math.isfinite, values[N_MOMENTS:]))


def _third_and_fourth_cumulants(
    mean: Tensor, second: Tensor, third: Tensor, fourth: Tensor, mean_square: Tensor
) -> list[Tensor]:
    """Per-row third and fourth cumulants from the raw moments ``E[s^k]`` (k = 1..4) and the
    squared mean.

    They are the third and fourth derivatives in beta of ``logsumexp(beta * z)``:
    ``k3 = E[s^3] - m (3 E[s^2] - 2 m^2)`` and
    ``k4 = E[s^4] - 4 m E[s^3] - 3 E[s^2]^2 - 6 m^2 (m^2 - 2 E[s^2])``, in fused multiply-adds.
    Computed in the chunk's precision (they only shape warm-start steps, never the reported
    optimum).

    Example:
        >>> moments = [torch.tensor([v]) for v in (1.0, 2.0, 4.0, 8.0)]  # s = 0 or 2, p = 1/2
        >>> [float(k) for k in _third_and_fourth_cumulants(*moments, moments[0].square())]
        [0.0, -2.0]
    """
    inner = torch.mul(second, 3).sub_(mean_square, alpha=2)
    third_cumulant = torch.addcmul(third, mean, inner, value=-1)
    fourth_cumulant = torch.addcmul(fourth, mean, third, value=-4)
    fourth_cumulant.addcmul_(second, second, value=-3)
    inner = torch.add(mean_square, second, alpha=-2)
    return [third_cumulant, fourth_cumulant.addcmul_(mean_square, inner, value=-6)]


class SigmoidTemperatureNLL(_StreamedNLL):
    """Mean binary cross-entropy of ``sigmoid(beta * logits)`` against 0/1 targets, streamed.

    ``logits`` (a tensor or row source) and ``targets`` are (M,): one independent binary event
    per entry (a binary classifier's samples, or every (sample, label) pair of a multi-label
    model). Targets equal to ``ignore_index`` are left out.

    Example:
        >>> logits, targets = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([1.0, 0.0, 0.0])
        >>> objective = SigmoidTemperatureNLL(logits, targets)
        >>> round(objective.evaluate(1.0).nll, 4)
        0.4714
    """

    def __init__(
        self,
        logits: Tensor | RowSource,
        targets: Tensor,
        *,
        ignore_index: int | None = None,
        chunk_elements: int | None = None,
        n_bins: int = 15,
        reducer: LocalReducer | None = None,
    ) -> None:
        if isinstance(logits, Tensor) and logits.ndim == 1:
            logits = TensorSource(logits, rows_of_width=False)
        check_source(logits)
        targets = check_tensor(targets, "labels")
        if len(logits.shape) != 1 or targets.shape != logits.shape:
            raise ValueError(
                f"binary logits and targets must both be (M,), got {tuple(logits.shape)} and "
                f"{tuple(targets.shape)}"
            )
        if targets.dtype.is_floating_point or targets.dtype == torch.bool:
            ignore_index = None
        super().__init__(
            logits,
            targets.to(logits.device),
            ignore_index=ignore_index,
            chunk_elements=chunk_elements,
            n_bins=n_bins,
            reducer=reducer,
        )

    def _slope_at_zero_scale(self) -> float:
        return 2.0  # the sum of the margins is -2 M dNLL/dbeta at beta = 0

    def _prepare(self) -> Tensor:
        n_kept, _ = self._kept_rows()
        check_binary_targets(self.labels, self.ignore_index)
        sums, bins = self._new_sums(), self._new_bins()
        bad_entries, first_bad = 0, -1
        low, high, n_correct, n_top = float("inf"), -float("inf"), 0, 0
        slope = torch.zeros((), dtype=torch.float64, device=self.device)
        for chunk in self._chunks():
            targets = self._rows(self.labels, chunk)
            bad = ~torch.isfinite(chunk.logits)
            if bool(bad.any()):
                if not bad_entries:
                    index = torch.arange(chunk.start, chunk.stop, device=self.device)
                    first_bad = int((index if chunk.keep is None else index[chunk.keep])[bad][0])
                bad_entries += int(bad.sum())
            elif not bad_entries and chunk.logits.numel():
                chunk_low, chunk_high = torch.aminmax(chunk.logits)
                low, high = min(low, float(chunk_low)), max(high, float(chunk_high))
                n_correct += int(((chunk.logits >= 0) == (targets == 1)).sum())
                margin = chunk.logits.to(torch.float64) * (2 * targets.to(torch.float64) - 1)
                n_top += int((margin >= 0).sum())
                slope -= margin.sum()  # 2 M (dNLL/dbeta at beta = 0) = -sum of the margins
                moments = self.start_moments
                self._add_chunk_sums(sums, chunk, 1.0, moments, bins, moments)
        self._raise_if_not_finite(bad_entries, first_bad, "entry", "entries")
        if n_kept >= 16 and low >= 0 and high <= 1:
            raise ValueError(
                f"logits look like probabilities: all {n_kept} values lie in [0, 1]. "
                "Temperature scaling needs the raw scores before the sigmoid; pass the model's "
                "logits, or inputs='probs' if only probabilities are available"
            )
        self.first_wide_row = None
        largest = max(abs(low), abs(high)) if n_kept else 0.0
        extras = self._extras(n_kept, n_correct, 0, 1, n_top, float(slope), largest)
        return torch.cat([self._initial_sums(sums, bins), extras])

    def _add_chunk_sums(
        self,
        sums: Tensor,
        chunk: _Chunk,
        beta: float,
        hessian: bool,
        bins: _BinSums | None,
        taylor: bool = False,
    ) -> None:
        targets = self._rows(self.labels, chunk).to(self.compute_dtype)
        margin = chunk.logits * (2 * targets - 1)  # positive when right
        scaled = margin * -beta
        wrong = torch.sigmoid(scaled)  # probability given to the wrong class
        terms = [torch.nn.functional.softplus(scaled), -margin * wrong]
        if hessian or taylor:
            # in this order a huge margin meets a zero probability before it squares
            curvature = (margin * wrong) * ((1 - wrong) * margin)
            terms.append(curvature)
            if taylor:
                # d^k/dbeta^k softplus(-beta m) = (-m)^k v_k(p), p = sigmoid(-beta m):
                # v_2 = p (1 - p), v_3 = v_2 (1 - 2 p), v_4 = v_2 (1 - 6 v_2)
                terms.append(-curvature * margin * (1 - 2 * wrong))
                terms.append(curvature * margin * margin * (1 - 6 * wrong * (1 - wrong)))
        sums[: len(terms)] += torch.stack(terms).sum(dim=1, dtype=torch.float64)
        if bins is not None:
            confidences = torch.sigmoid(chunk.logits.abs() * beta)
            bins.add(confidences, (chunk.logits >= 0) == (targets == 1))
