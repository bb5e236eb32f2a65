"""Input checks of the metrics: probabilities and labels as tensors or numpy arrays, and bounds.

The checks read the probabilities without an (N, K) temporary: one ``aminmax`` for the range (NaN
and infinities fail it too) and one matrix-vector product for the row sums. Plain (N, K) rows can
be left to the caller's own chunked pass (:func:`probs_and_labels`), which does the same reads
while it computes its statistics. Only when a check fails is the tensor searched again for the
message.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import torch
from torch import Tensor

from torchcal._inputs import (
    check_labels,
    check_positive_int,
    check_row_sums,
    check_unit_interval,
    prepare,
)

#: The most bins a binned metric takes: its per-bin sums cost O(n_bins) memory and time.
MAX_BINS = 100_000


def as_tensor(value: object, name: str) -> Tensor:
    """``value`` as a tensor; a numpy array is wrapped without a copy (and never written to).

    Example:
        >>> as_tensor(np.array([0.25, 0.75]), "probs")
        tensor([0.2500, 0.7500], dtype=torch.float64)
    """
    if isinstance(value, Tensor):
        return value
    if not isinstance(value, np.ndarray):
        raise TypeError(
            f"{name} must be a torch.Tensor or a numpy array, got {type(value).__name__}"
        )
    if any(stride < 0 for stride in value.strides):  # e.g. a[::-1]: torch has no negative strides
        value = np.ascontiguousarray(value)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "The given NumPy array is not writable")
            return torch.from_numpy(value)
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"{name} is a numpy array of dtype {value.dtype}, which torch cannot read ({error}); "
            "pass a numeric array"
        ) from None


def check_n_bins(n_bins: object) -> int:
    """``n_bins`` as an int in [1, :data:`MAX_BINS`]."""
    n_bins = check_positive_int(n_bins, "n_bins")
    if n_bins > MAX_BINS:
        raise ValueError(
            f"n_bins must be <= {MAX_BINS:,} (the per-bin sums take memory in proportion), "
            f"got {n_bins:,}"
        )
    return n_bins


def _probs_wording(error: Exception) -> Exception:
    """The input layer names its tensor "logits"; the metrics take probabilities."""
    return type(error)(re.sub(r"\blogits\b", "probs", str(error)))


def _check_probs_tensor(probs: Tensor) -> None:
    if not probs.dtype.is_floating_point:
        raise TypeError(
            f"probs must be a floating tensor of probabilities, got dtype {probs.dtype}"
        )
    if probs.numel() == 0:
        raise ValueError(
            f"probs is empty (shape {tuple(probs.shape)}): at least 1 sample is needed"
        )


def check_unit_range(probs: Tensor, conversion: str) -> None:
    """Every value finite and in [0, 1], read once; ``conversion`` says how to fix logits."""
    low, high = torch.stack(list(torch.aminmax(probs))).tolist()
    if not (low >= 0.0 and high <= 1.0):  # also False for NaN
        check_unit_interval(probs, "probs", conversion)  # raises the detailed message


def _plain_rows(
    probs: Tensor, labels: Tensor, class_dim: int | None, ignore_index: int | None
) -> bool:
    """Whether (N, K) ``probs`` and (N,) ``labels`` need no reshaping and hold no ignored or
    out-of-range label, decided from one ``aminmax`` of the labels (the input layer's general
    route costs several passes over the labels)."""
    n_rows, n_classes = probs.shape if probs.ndim == 2 else (0, 0)
    plain = (
        n_classes >= 2
        and labels.shape == (n_rows,)
        and not (labels.dtype.is_floating_point or labels.dtype.is_complex)
        and labels.dtype != torch.bool
        and (class_dim in (1, -1) or (class_dim is None and n_rows != n_classes))
    )
    if not plain:
        return False
    low, high = torch.stack(list(torch.aminmax(labels))).tolist()
    ignorable = ignore_index is not None and low <= ignore_index <= high
    return low >= 0 and high < n_classes and not ignorable


def check_rows(rows: Tensor) -> None:
    """(M, K) probability rows finite, in [0, 1] and summing to 1 (the detailed message if not).

    Args:
        rows: (M, K) probabilities.
    """
    check_unit_range(rows, "torch.softmax(logits, dim=1)")
    check_row_sums(rows)


def probs_and_labels(
    probs: object,
    labels: object,
    class_dim: int | None = None,
    ignore_index: int | None = -100,
) -> tuple[Tensor, Tensor, bool]:
    """Probabilities and labels of any supported shape as (M, K) rows and (M,) int64 labels,
    and whether the rows are checked yet.

    Everything but the values of plain (N, K) rows is checked here; those (finite, in [0, 1],
    summing to 1) are left to the caller's own pass over the rows, which must end with
    :func:`check_rows` unless it proves them fine itself.

    Args:
        probs, labels, class_dim, ignore_index: as in :func:`check_probs_and_labels`.
    """
    probs, labels = as_tensor(probs, "probs"), as_tensor(labels, "labels")
    _check_probs_tensor(probs)
    if _plain_rows(probs, labels, class_dim, ignore_index):
        return probs, labels.to(device=probs.device, dtype=torch.int64), False
    return (*_reshaped_probs_and_labels(probs, labels, class_dim, ignore_index), True)


def check_probs_and_labels(
    probs: object,
    labels: object,
    class_dim: int | None = None,
    ignore_index: int | None = -100,
) -> tuple[Tensor, Tensor]:
    """Validate probabilities and labels of any supported shape; return (M, K) rows, (M,) labels.

    Binary and multi-label sigmoid probabilities become two-column rows ``[1 - p, p]``.

    Args:
        probs: probabilities (tensor or numpy array) of any shape the metrics take.
        labels: their labels (or 0/1 targets for sigmoid probabilities).
        class_dim: the class dimension of dense or sequence probabilities.
        ignore_index: label value of positions to leave out (``None`` keeps all).

    Example:
        >>> rows, labels = check_probs_and_labels(np.array([0.9, 0.2]), np.array([1, 0]))
        >>> rows.tolist(), labels.tolist()
        ([[0.09999999999999998, 0.9], [0.8, 0.2]], [1, 0])
    """
    rows, labels, checked = probs_and_labels(probs, labels, class_dim, ignore_index)
    if not checked:
        check_rows(rows)
    return rows, labels


def _reshaped_probs_and_labels(
    probs: Tensor, labels: Tensor, class_dim: int | None, ignore_index: int | None
) -> tuple[Tensor, Tensor]:
    """The input layer's general route, for everything but plain (N, K) rows: checked rows."""
    sigmoid = probs.ndim == 1 or (probs.ndim == 2 and probs.shape[1] == 1)
    sigmoid |= labels.shape == probs.shape and (
        labels.dtype.is_floating_point or labels.dtype == torch.bool
    )
    try:
        prepared = prepare(
            probs,
            labels,
            activation="sigmoid" if sigmoid else "softmax",
            class_dim=class_dim,
            ignore_index=ignore_index,
        )
    except (TypeError, ValueError) as error:
        raise _probs_wording(error) from None
    rows = prepared.rows()
    if prepared.activation == "sigmoid":
        positive = rows.logits
        check_unit_range(positive, "torch.sigmoid(logits)")
        return torch.stack([1 - positive, positive], 1), rows.labels.long()
    probs = rows.logits
    if probs.shape[1] < 2:
        raise ValueError(f"probs must have K >= 2 class columns, got K={probs.shape[1]}")
    check_rows(probs)
    labels = check_labels(rows.labels, probs.shape[0], probs.shape[1]).to(probs.device)
    return probs, labels
