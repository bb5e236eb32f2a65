"""Next-token rows computed by a model, one batch at a time: a row source that never holds more.

A causal language model predicts position t + 1 from position t, so a batch of ``(B, L)``
labels in the Hugging Face convention (the input ids, -100 on padding) calibrates the
``(B, L - 1, V)`` logits ``logits[:, :-1]`` against ``labels[:, 1:]``. :class:`NextTokenSource`
offers those rows, less the ignored ones, as a row source (:mod:`torchcal._inputs.sources`) for the
temperature objective, which reads them chunk by chunk, pass after pass.

The exact temperature needs every logit at every solver evaluation, and a validation set's
logits (tokens x vocabulary) rarely fit in memory, so the rows are not kept: each pass runs the
model over the loader again and holds one batch's logits at a time. Memory is one batch's
logits plus a few numbers per kept token (its label, the row maximum and the label's logit kept
by the objective); time is about one model pass over the loader per solver evaluation
(``fit_result.data_passes`` counts them). Before the first model pass the loader is read once
without the model, for the labels; every later pass checks that each batch brings the same
labels, so a shuffling loader is refused rather than misread.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from torchcal._inputs.collect import BatchFormat, _EvalMode, batch_format, model_device, move_to
from torchcal._inputs.sources import strided_length
from torchcal._inputs.validation import check_some_kept


class _Passes:
    """Model passes over the loader, shared by a source and its strided views."""

    def __init__(self) -> None:
        self.count = 0


def _shifted_labels(labels: Tensor, index: int) -> Tensor:
    if labels.ndim != 2:
        raise ValueError(
            f"shift_labels=True needs (B, L) token labels, but batch {index} of the loader has "
            f"labels of shape {tuple(labels.shape)}"
        )
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise TypeError(
            f"shift_labels=True needs integer token labels, batch {index} has dtype {labels.dtype}"
        )
    return labels[:, 1:]


class NextTokenSource:
    """The next-token logit rows of ``model`` over ``loader`` whose label is not ignored.

    Args:
        model: the causal language model (``None``: the loader's batches hold the logits).
        loader: batches of inputs and ``(B, L)`` labels (see :mod:`torchcal._inputs.collect`); it
            must give the same batches each time it is iterated.
        ignore_index: the label of positions to leave out (-100: padding, prompts).
        progress: a tqdm bar for the label pass.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> labels = torch.tensor([[1, 2, 3, -100]] * 2)
        >>> loader = [{"logits": torch.randn(2, 4, 5), "labels": labels}]
        >>> rows = NextTokenSource(None, loader, ignore_index=-100)
        >>> tuple(rows.shape), rows.labels.tolist()
        ((4, 5), [2, 3, 2, 3])
        >>> torch.equal(rows.read(0, 4)[:2], loader[0]["logits"][0, :2])
        True
    """

    def __init__(
        self,
        model: nn.Module | None,
        loader: Iterable[Any],
        *,
        ignore_index: int | None = -100,
    ) -> None:
        if iter(loader) is loader:
            raise TypeError(
                "shift_labels=True reads the loader once per solver pass, so it needs a loader "
                f"that can be iterated again (a DataLoader or a list), got a one-shot "
                f"{type(loader).__name__}"
            )
        self.model, self.loader, self.ignore_index = model, loader, ignore_index
        self.format: BatchFormat = batch_format(loader)
        self.model_device = None if model is None else model_device(model)
        parts = []
        for index, batch in enumerate(loader):
            labels = _shifted_labels(self.format.split(batch, index)[1], index)
            parts.append(self._kept(labels).cpu())
        if not parts:
            raise ValueError("the loader yielded no batches: at least one sample is needed to fit")
        counts = torch.tensor([0] + [part.numel() for part in parts])
        self.batch_starts = counts.cumsum(0).tolist()  # global row where each batch starts
        check_some_kept(self.batch_starts[-1], "next-token label", ignore_index)
        self.all_labels = torch.cat(parts)
        self.step, self.offset = 1, 0
        self.passes = _Passes()
        self.width = -1
        # The first pass starts here: batch 0 gives the logits' width, dtype and device, and is
        # held for the fit's first read.
        self._iterator: Iterator[Any] | None = iter(loader)
        self.passes.count = 1
        self._rows = self._run_batch(0, next(self._iterator))
        self._batch = 0  # index of the batch held in _rows
        self.width, self.dtype, self.device = (
            self._rows.shape[1],
            self._rows.dtype,
            self._rows.device,
        )
        self.all_labels = self.all_labels.to(self.device)
        self.labels = self.all_labels
        self.shape = torch.Size((self.batch_starts[-1], self.width))

    # ------------------------------------------------------------------ one batch
    def _kept(self, labels: Tensor) -> Tensor:
        flat = labels.reshape(-1)
        return flat if self.ignore_index is None else flat[flat != self.ignore_index]

    def _run_batch(self, index: int, batch: Any) -> Tensor:
        """The kept next-token rows of batch ``index`` (all of them, before any striding)."""
        inputs, labels = self.format.split(batch, index)
        labels = _shifted_labels(labels, index)
        if self.model_device is not None:
            inputs = move_to(inputs, self.model_device)
        with _EvalMode(self.model or nn.Identity()), torch.no_grad():
            logits = self.format.logits(self.model, inputs, index)
        if logits.ndim != 3 or logits.shape[:2] != (labels.shape[0], labels.shape[1] + 1):
            raise ValueError(
                f"shift_labels=True needs (B, L, V) logits for (B, L) labels, but batch {index} "
                f"gives logits of shape {tuple(logits.shape)} for labels of shape "
                f"{(labels.shape[0], labels.shape[1] + 1)}"
            )
        if self.width >= 0 and logits.shape[2] != self.width:
            raise ValueError(
                f"batch {index} of the loader has K={logits.shape[2]} classes (logits of shape "
                f"{tuple(logits.shape)}), but batch 0 has K={self.width}: every batch must give "
                "the same number of classes"
            )
        labels = labels.to(logits.device).reshape(-1)
        rows = logits[:, :-1].reshape(-1, logits.shape[2])
        if self.ignore_index is not None:
            keep = labels != self.ignore_index
            rows, labels = rows[keep], labels[keep]
        start, stop = self.batch_starts[index], self.batch_starts[index + 1]
        expected = self.all_labels[start:stop].to(labels.device)
        if labels.shape != expected.shape or not torch.equal(labels, expected):
            raise ValueError(
                f"batch {index} of the loader brought different labels on this pass than when "
                "the fit began: a streamed fit (shift_labels=True) reads the loader once per "
                "solver pass, so the loader must give the same batches in the same order every "
                "time (shuffle=False, no random cropping or masking)"
            )
        return rows

    # ------------------------------------------------------------------ strided views
    def every(self, step: int, offset: int = 0) -> NextTokenSource:
        view = object.__new__(NextTokenSource)
        view.__dict__.update(self.__dict__)
        view.step, view.offset = self.step * step, self.offset + self.step * offset
        view._iterator, view._batch, view._rows = None, -1, torch.empty(0)
        view.labels = self.all_labels[view.offset :: view.step]
        view.shape = torch.Size((view.labels.numel(), self.width))
        return view

    def _view_start(self, batch: int) -> int:
        """The view's first row at or after the global row where ``batch`` starts."""
        return strided_length(self.batch_starts[batch], self.step, self.offset)

    # ------------------------------------------------------------------ reading
    def _load(self, batch: int) -> None:
        """Make batch ``batch`` the one held, running the loader (again) as far as needed."""
        if self._iterator is None or batch <= self._batch:
            self._iterator, self._batch = iter(self.loader), -1
            self.passes.count += 1
        while self._batch < batch:
            try:
                item = next(self._iterator)
            except StopIteration:
                raise ValueError(
                    f"the loader ended after {self._batch + 1} batches on this pass but gave "
                    f"{len(self.batch_starts) - 1} when the fit began: it must give the same "
                    "batches every time it is iterated"
                ) from None
            self._batch += 1
            if self._batch == batch:
                rows = self._run_batch(batch, item)
                first = self._view_start(batch) * self.step + self.offset - self.batch_starts[batch]
                self._rows = rows[first :: self.step]

    def read(self, start: int, stop: int) -> Tensor:
        parts = []
        while start < stop:
            batch = self._batch_of(start)
            if batch != self._batch:
                self._load(batch)
            first, end = self._view_start(batch), self._view_start(batch + 1)
            upto = min(stop, end)
            parts.append(self._rows[start - first : upto - first])
            start = upto
        if not parts:
            return torch.empty(0, self.width, dtype=self.dtype, device=self.device)
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _batch_of(self, row: int) -> int:
        """The batch holding the view's row ``row``."""
        if self._batch >= 0 and self._view_start(self._batch) <= row < self._view_start(
            self._batch + 1
        ):
            return self._batch
        low, high = 0, len(self.batch_starts) - 2
        while low < high:  # the last batch whose view start is <= row
            middle = (low + high + 1) // 2
            if self._view_start(middle) <= row:
                low = middle
            else:
                high = middle - 1
        while self._view_start(low + 1) <= row:  # skip batches with no row in this view
            low += 1
        return low
