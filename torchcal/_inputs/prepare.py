"""One input path: logits and labels as the user passed them, validated and laid out as rows.

:func:`prepare` is the one entry: it resolves the activation and the class dimension (see
:mod:`~torchcal._inputs.shapes` for the shapes), checks dtypes, targets and options, turns
probabilities into logits (``inputs="probs"``) and returns a :class:`Prepared`: one row source
per temperature (see :mod:`~torchcal._inputs.sources`), each with its labels. Nothing is copied
for logits given as tensors, numpy arrays (memory maps included) or files opened with
:func:`torchcal.open_logits`: a fit reads the sources chunk by chunk and skips the rows whose
label equals ``ignore_index``. :meth:`Prepared.rows` materialises the rows, ignored ones dropped,
for the methods (and metrics) that need them all at once.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from torchcal._inputs.probabilities import probabilities_as_logits
from torchcal._inputs.shapes import (
    check_binary_labels,
    check_options,
    is_binary,
    resolve_activation,
    sigmoid_class_dim,
    softmax_class_dim,
)
from torchcal._inputs.sources import (
    ColumnSource,
    RowSource,
    TensorSource,
    as_source,
    as_tensor,
    check_source,
)
from torchcal._inputs.validation import (
    check_binary_targets,
    check_float_dtype,
    check_has_values,
    check_some_kept,
    check_tensor,
)

__all__ = ["LabelledRows", "Prepared", "prepare"]


class LabelledRows(NamedTuple):
    """Rows in memory with their labels (see :meth:`Prepared.rows`)."""

    logits: Tensor
    labels: Tensor


@dataclass(frozen=True)
class Prepared:
    """A classification problem ready to fit: one row source per temperature, with labels.

    Attributes:
        activation: ``"softmax"``: ``sources[i]`` gives (M, K) rows and ``labels[i]`` is (M,)
            integer class indices. ``"sigmoid"``: ``sources[i]`` gives (M,) entries and
            ``labels[i]`` their (M,) 0/1 targets (one source per label with ``per_class``).
        sources: what a fit reads the logits from, chunk by chunk (never copied here).
        labels: the labels of each source, row for row.
        class_dim: the class dimension of the original input, counted from the end (< 0), or
            ``None`` for binary logits without one.
        ignore_index: the label of rows to skip while reading; ``None`` when none is skipped.
        per_class: one source per label column of a multi-label sigmoid model.
    """

    activation: str
    sources: tuple[RowSource, ...]
    labels: tuple[Tensor, ...]
    class_dim: int | None
    ignore_index: int | None
    per_class: bool = False

    def rows(self) -> LabelledRows:
        """Every row in memory, for methods that need random access.

        Returns:
            softmax: (M, K) logits and (M,) int64 labels; sigmoid: (M,) logits and (M,) float
            targets (float64 for float64 logits, else float32), or with ``per_class`` (M, K) of
            both. Rows whose label equals ``ignore_index`` are dropped. The logits are a view
            of the caller's tensor where its layout allows.

        Example:
            >>> prepared = prepare(torch.zeros(3, 2), torch.tensor([0, -100, 1]))
            >>> logits, labels = prepared.rows()
            >>> tuple(logits.shape), labels.tolist()
            ((2, 2), [0, 1])
        """
        logits = [_all_rows(source) for source in self.sources]
        if self.per_class:
            rows, labels = torch.stack(logits, dim=1), torch.stack(self.labels, dim=1)
        else:
            rows, labels = logits[0], self.labels[0]
            if self.ignore_index is not None:
                keep = labels != self.ignore_index
                rows, labels = rows[keep], labels[keep]
        if self.activation == "softmax":
            return LabelledRows(rows, labels.long())
        target_dtype = torch.float64 if rows.dtype == torch.float64 else torch.float32
        return LabelledRows(rows, labels.to(target_dtype))


def prepare(
    data: Any,
    labels: Any,
    *,
    activation: str = "auto",
    class_dim: int | None = None,
    ignore_index: int | None = -100,
    per_class: bool = False,
    inputs: str = "logits",
) -> Prepared:
    """Validate ``data`` (logits, or probabilities) and ``labels``; lay them out as row sources.

    Args:
        data: a floating tensor of any supported shape, a numpy array (memory-mapped arrays are
            read in chunks) or a file opened with :func:`torchcal.open_logits`; arrays and files
            hold (N, K) softmax rows or (N,) binary logits.
        labels: integer class indices (softmax) or 0/1 targets (sigmoid), as a tensor or array.
        activation: ``"auto"`` (sigmoid for one logit per sample), ``"softmax"`` or
            ``"sigmoid"``.
        class_dim: the class dimension; ``None`` infers it from the labels' shape.
        ignore_index: the label of rows to leave out (``None``: keep every row).
        per_class: one source per label of a multi-label sigmoid model.
        inputs: ``"logits"``, or ``"probs"`` for probabilities (checked, then turned into
            log-probabilities or log-odds: a new tensor, with the ignored rows dropped).

    Example:
        >>> prepared = prepare(torch.zeros(2, 4, 3, 3), torch.zeros(2, 3, 3, dtype=torch.long))
        >>> prepared.activation, tuple(prepared.sources[0].shape), prepared.class_dim
        ('softmax', (18, 4), -3)
    """
    if isinstance(data, np.ndarray) and (inputs == "probs" or per_class or data.ndim > 2):
        data = as_tensor(data)  # arrays are read in chunks only as (N, K) or (N,) logits
    if isinstance(data, Tensor):
        data = check_has_values(data, "logits").detach()
        labels = _checked_labels(labels)
        check_float_dtype(data.dtype, "logits")
        check_options(activation, inputs)
        prepared = _tensor_layout(data, labels, activation, class_dim, ignore_index, per_class)
    else:
        source = as_source(data)
        labels = _checked_labels(labels)
        check_options(activation, inputs)
        check_source(source)
        options = (activation, class_dim, ignore_index, per_class, inputs)
        prepared = _source_layout(source, labels, *options)
    prepared = _skipping_ignored(prepared)
    return _from_probabilities(prepared) if inputs == "probs" else prepared


def _checked_labels(labels: Any) -> Tensor:
    """The labels as a tensor without autograd history (arrays shared, not copied)."""
    return check_has_values(check_tensor(as_tensor(labels), "labels"), "labels").detach()


def _tensor_layout(
    logits: Tensor,
    labels: Tensor,
    activation: str,
    class_dim: int | None,
    ignore_index: int | None,
    per_class: bool,
) -> Prepared:
    """Row sources over a tensor of any supported shape (views, nothing copied)."""
    if logits.numel() == 0:
        raise ValueError(
            f"logits are empty (shape {tuple(logits.shape)}): at least 1 sample is needed"
        )
    activation = resolve_activation(activation, logits.shape)
    if per_class and activation != "sigmoid":
        raise ValueError(
            "per_class=True is for multi-label sigmoid models: pass activation='sigmoid'"
        )
    if activation == "softmax":
        dim = softmax_class_dim(logits.shape, labels, class_dim)
        source = TensorSource(logits.movedim(dim, -1))
        flat_labels = labels.reshape(-1)
        return Prepared("softmax", (source,), (flat_labels,), dim - logits.ndim, ignore_index)
    dim = sigmoid_class_dim(logits, labels, class_dim, per_class)
    class_axis = None if dim is None else dim - logits.ndim
    if dim is None or not per_class:
        entries = TensorSource(logits, rows_of_width=False)
        return _sigmoid(entries, labels.reshape(-1), class_axis, ignore_index)
    moved, moved_labels = logits.movedim(dim, -1), labels.movedim(dim, -1)
    columns = range(logits.shape[dim])
    sources = tuple(TensorSource(moved[..., k], rows_of_width=False) for k in columns)
    targets = tuple(check_binary_targets(moved_labels[..., k].reshape(-1)) for k in columns)
    return Prepared("sigmoid", sources, targets, class_axis, None, per_class=True)


def _sigmoid(
    source: RowSource, targets: Tensor, class_dim: int | None, ignore_index: int | None
) -> Prepared:
    """One source of sigmoid entries; floating or boolean targets have no ignored value."""
    if targets.dtype.is_floating_point or targets.dtype == torch.bool:
        ignore_index = None
    check_binary_targets(targets, ignore_index)
    return Prepared("sigmoid", (source,), (targets,), class_dim, ignore_index)


def _source_layout(
    source: RowSource,
    labels: Tensor,
    activation: str,
    class_dim: int | None,
    ignore_index: int | None,
    per_class: bool,
    inputs: str,
) -> Prepared:
    """A numpy array or an opened file: (N, K) softmax rows or (N,) binary logits."""
    if inputs == "probs" or per_class:
        option = "inputs='probs'" if inputs == "probs" else "per_class=True"
        raise ValueError(
            f"{option} needs the logits as a torch.Tensor; arrays and files read in chunks "
            "take (N, K) logits or (N,) binary logits"
        )
    shape = tuple(source.shape)
    activation = resolve_activation(activation, shape)
    if activation == "softmax":
        if len(shape) != 2 or class_dim not in (None, 1, -1):
            raise ValueError(
                f"arrays and files read in chunks must hold (N, K) rows of class scores, got "
                f"shape {shape}"
                + ("" if class_dim is None else f" with class_dim={class_dim}")
                + "; save dense maps or token sequences with the classes last, reshaped to "
                "(-1, K), or pass them as a torch.Tensor"
            )
        softmax_class_dim(torch.Size(shape), labels, None)
        return Prepared("softmax", (source,), (labels,), -1, ignore_index)
    if not is_binary(shape):
        raise ValueError(
            f"arrays and files read in chunks hold (N,) binary logits for a sigmoid fit, got "
            f"shape {shape}; pass multi-label logits as a torch.Tensor"
        )
    check_binary_labels(shape[0], labels.shape)
    entries = ColumnSource(source) if len(shape) == 2 else source
    return _sigmoid(entries, labels.reshape(-1), None, ignore_index)


def _skipping_ignored(prepared: Prepared) -> Prepared:
    """Refuse labels that are all ignored; drop ``ignore_index`` when none is."""
    if prepared.ignore_index is None:
        return prepared
    labels = prepared.labels[0]
    n_kept = int((labels != prepared.ignore_index).sum())
    check_some_kept(n_kept, f"one of the {labels.numel()} labels", prepared.ignore_index)
    return prepared if n_kept < labels.numel() else replace(prepared, ignore_index=None)


def _from_probabilities(prepared: Prepared) -> Prepared:
    """Probabilities checked and turned into logits (a new tensor, the ignored rows dropped)."""
    probs, labels = prepared.rows()
    logits = probabilities_as_logits(probs, labels, prepared.activation)
    if prepared.per_class:
        columns = range(logits.shape[1])
        sources = tuple(TensorSource(logits[:, k], rows_of_width=False) for k in columns)
        return replace(prepared, sources=sources, labels=tuple(labels[:, k] for k in columns))
    source = TensorSource(logits, rows_of_width=prepared.activation == "softmax")
    return replace(prepared, sources=(source,), labels=(labels,), ignore_index=None)


def _all_rows(source: RowSource) -> Tensor:
    """Every row of ``source`` as one tensor (a view of an in-memory tensor where possible)."""
    if isinstance(source, TensorSource):
        return source.all_rows()
    return source.read(0, source.shape[0])
