"""Every classifier shape reduced to rows: (M, K) softmax rows or (M,) independent sigmoids.

Supported inputs (``class_dim`` is where the classes are in ``logits``):

* softmax, ``(N, K)`` logits with ``(N,)`` integer labels;
* softmax, dense ``(N, K, *spatial)`` logits with ``(N, *spatial)`` labels (segmentation maps,
  volumes), ``class_dim=1``;
* softmax, token sequences ``(B, L, V)`` with ``(B, L)`` labels, ``class_dim=-1``;
* sigmoid, binary ``(N,)`` or ``(N, 1)`` logits with 0/1 labels of the same length;
* sigmoid, multi-label ``(N, K, ...)`` logits with 0/1 targets of the same shape.

Labels equal to ``ignore_index`` (default -100, as in ``torch.nn.functional.cross_entropy``) are
dropped. ``class_dim=None`` infers the class dimension as the only one whose removal leaves the
labels' shape. One-hot labels for softmax are rejected with a message saying how to convert them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from torchcal._inputs.sources import ColumnRows, RowSource, TensorRows, as_source, check_source
from torchcal._inputs.validation import (
    FLOAT_DTYPES,
    check_binary_targets,
    check_choice,
    check_has_values,
    check_row_sums,
    check_tensor,
)
from torchcal.errors import warn

ACTIVATIONS = ("auto", "softmax", "sigmoid")
INPUTS = ("logits", "probs")


@dataclass(frozen=True)
class Rows:
    """A classification problem flattened to rows.

    ``activation == "softmax"``: ``logits`` is (M, K) and ``labels`` (M,) integer class indices.
    ``activation == "sigmoid"``: ``logits`` is (M,) or, with per-class columns kept, (M, K), and
    ``labels`` holds 0/1 targets of the same shape as float.
    ``class_dim`` is the class dimension of the original input, counted from the end (< 0), or
    ``None`` for binary inputs without one.
    """

    activation: str
    logits: Tensor
    labels: Tensor
    class_dim: int | None
    n_ignored: int


def _check_float(logits: Tensor, name: str) -> None:
    if logits.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be a floating tensor (float16, bfloat16, float32 or float64), "
            f"got dtype {logits.dtype}"
        )


def resolve_class_dim(
    logits_shape: torch.Size, labels_shape: torch.Size, class_dim: int | None
) -> int:
    """The (non-negative) class dimension of softmax logits whose labels have ``labels_shape``."""
    ndim = len(logits_shape)
    if ndim < 2:
        raise ValueError(
            f"softmax logits need a class dimension, got shape {tuple(logits_shape)}; "
            "for one logit per sample use activation='sigmoid' (binary)"
        )

    def fits(dim: int) -> bool:
        return logits_shape[:dim] + logits_shape[dim + 1 :] == labels_shape

    if class_dim is not None:
        if not -ndim <= class_dim < ndim:
            raise ValueError(f"class_dim={class_dim} is out of range for {ndim}-d logits")
        dim = class_dim % ndim
        if not fits(dim):
            raise ValueError(
                f"labels of shape {tuple(labels_shape)} do not match logits of shape "
                f"{tuple(logits_shape)} with classes in dim {class_dim}: the labels must have the "
                "logits' shape without the class dimension"
            )
        return dim
    candidates = [dim for dim in range(ndim) if fits(dim)]
    if ndim == 2:  # (N, K): classes are always the columns
        candidates = [1] if fits(1) else []
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        if tuple(labels_shape) == tuple(logits_shape):
            raise ValueError(
                f"labels have the logits' shape {tuple(logits_shape)}: one-hot labels are not "
                "accepted for softmax; pass class indices (labels.argmax(dim=class_dim)), or "
                "activation='sigmoid' for multi-label 0/1 targets"
            )
        column = ndim == 2 and tuple(labels_shape) == (logits_shape[0], 1)
        raise ValueError(
            f"labels of shape {tuple(labels_shape)} do not match logits of shape "
            f"{tuple(logits_shape)}: expected the logits' shape without its class dimension, "
            "e.g. logits (N, K) with labels (N,), (N, K, H, W) with (N, H, W), or (B, L, V) "
            "with (B, L)"
            + ("; (N, 1) labels hold one class index per row: pass labels.reshape(-1)" * column)
        )
    raise ValueError(
        f"the class dimension of logits {tuple(logits_shape)} with labels "
        f"{tuple(labels_shape)} is ambiguous (dims {candidates} fit); pass class_dim"
    )


def _drop_ignored(
    logits: Tensor, labels: Tensor, ignore_index: int | None
) -> tuple[Tensor, Tensor, int]:
    if ignore_index is None or labels.dtype.is_floating_point:
        return logits, labels, 0
    keep = labels != ignore_index
    n_ignored = int(labels.numel() - keep.sum())
    if n_ignored == 0:
        return logits, labels, 0
    if n_ignored == labels.numel():
        raise ValueError(
            f"every one of the {labels.numel()} labels equals ignore_index={ignore_index}: "
            "nothing is left to calibrate on"
        )
    return logits[keep], labels[keep], n_ignored


def _softmax_class_dim(logits_shape: torch.Size, labels: Tensor, class_dim: int | None) -> int:
    """The class dimension of softmax logits, after checking that the labels are indices."""
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        if labels.shape == logits_shape:
            resolve_class_dim(logits_shape, labels.shape, None)  # raises the one-hot message
        raise TypeError(
            f"labels must be an integer tensor of class indices, got dtype {labels.dtype}; "
            "convert with labels.long() if the values are whole numbers"
        )
    return resolve_class_dim(logits_shape, labels.shape, class_dim)


def _softmax_rows(
    logits: Tensor, labels: Tensor, class_dim: int | None, ignore_index: int | None
) -> Rows:
    dim = _softmax_class_dim(logits.shape, labels, class_dim)
    n_classes = logits.shape[dim]
    if logits.ndim == 2 and dim == 1:
        rows, flat_labels = logits, labels
    else:
        rows = logits.movedim(dim, -1).reshape(-1, n_classes)
        flat_labels = labels.reshape(-1)
    rows, flat_labels, n_ignored = _drop_ignored(rows, flat_labels, ignore_index)
    return Rows("softmax", rows, flat_labels.long(), dim - logits.ndim, n_ignored)


def _is_binary(shape: tuple[int, ...]) -> bool:
    """Whether logits of ``shape`` hold one logit per sample: (N,) or (N, 1)."""
    return len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)


def _check_binary_labels(n_entries: int, labels_shape: tuple[int, ...]) -> None:
    """Labels of binary logits with ``n_entries`` entries must match them one to one."""
    if tuple(labels_shape) not in ((n_entries,), (n_entries, 1)):
        raise ValueError(
            f"binary logits have {n_entries} entries but labels have shape "
            f"{tuple(labels_shape)}; they must match one to one"
        )


def _sigmoid_class_dim(
    logits: Tensor, labels: Tensor, class_dim: int | None, per_class: bool
) -> int | None:
    """Check sigmoid logits against their targets; the class dim (>= 0), None if binary."""
    ndim = logits.ndim
    if _is_binary(logits.shape):
        if per_class:
            raise ValueError("per_class=True needs multi-label logits (N, K) with K >= 2")
        _check_binary_labels(logits.shape[0], labels.shape)
        return None
    if labels.shape != logits.shape:
        raise ValueError(
            f"multi-label targets must have the logits' shape {tuple(logits.shape)}, "
            f"got {tuple(labels.shape)}"
        )
    if class_dim is not None and not -ndim <= class_dim < ndim:
        raise ValueError(f"class_dim={class_dim} is out of range for {ndim}-d logits")
    return (1 if class_dim is None else class_dim) % ndim


def _sigmoid_rows(
    logits: Tensor,
    labels: Tensor,
    class_dim: int | None,
    ignore_index: int | None,
    per_class: bool,
) -> Rows:
    dim = _sigmoid_class_dim(logits, labels, class_dim, per_class)
    class_axis = None if dim is None else dim - logits.ndim
    if dim is not None and per_class:
        n_classes = logits.shape[dim]
        logits = logits.movedim(dim, -1).reshape(-1, n_classes)
        labels = labels.movedim(dim, -1).reshape(-1, n_classes)
    else:
        logits, labels = logits.reshape(-1), labels.reshape(-1)
    n_ignored = 0
    if not per_class:
        logits, labels, n_ignored = _drop_ignored(logits, labels, ignore_index)
    target_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    return Rows(
        "sigmoid", logits, check_binary_targets(labels).to(target_dtype), class_axis, n_ignored
    )


def check_probabilities_input(probs: Tensor) -> None:
    """Refuse ``inputs='probs'`` values outside [0, 1]."""
    if not bool(((probs >= 0) & (probs <= 1)).all()):
        raise ValueError(
            f"inputs='probs' needs probabilities in [0, 1], found values in "
            f"[{float(probs.min()):.4g}, {float(probs.max()):.4g}]; "
            "pass logits with inputs='logits'"
        )


def probabilities_to_logits(probs: Tensor, activation: str) -> Tensor:
    """log p for softmax probabilities, log(p / (1 - p)) for sigmoid ones (a new tensor).

    Pure tensor arithmetic (no checks), so it exports. The logs are taken in float32 (float64 for
    float64 probabilities): half-precision probabilities, subnormal ones included, are exact in
    float32, so nothing is rounded away. A zero probability maps to the log of float32's (or
    float64's) smallest normal number rather than -inf.

    Example:
        >>> probabilities_to_logits(torch.tensor([0.5, 0.25, 0.25]), "softmax").exp()
        tensor([0.5000, 0.2500, 0.2500])
        >>> smallest = torch.tensor([2.0**-24], dtype=torch.float16)  # float16's least subnormal
        >>> round(float(probabilities_to_logits(smallest, "softmax")), 4)
        -16.6355
    """
    if probs.dtype != torch.float64:
        probs = probs.float()
    tiny = torch.finfo(probs.dtype).tiny
    if activation == "softmax":
        return probs.clamp_min(tiny).log()
    return probs.clamp_min(tiny).log() - (1 - probs).clamp_min(tiny).log()


def _probs_to_logits(probs: Tensor, labels: Tensor, activation: str) -> Tensor:
    check_probabilities_input(probs)
    if activation == "softmax" and probs.numel():
        check_row_sums(probs)
    _warn_about_impossible_labels(probs, labels, activation)
    return probabilities_to_logits(probs, activation)


def _warn_about_impossible_labels(probs: Tensor, labels: Tensor, activation: str) -> None:
    """Warn when the probability of a true label is exactly 0: its NLL is infinite."""
    if activation == "softmax":  # labels out of range are refused later, by the fit
        valid = (labels >= 0) & (labels < probs.shape[1])
        at_label = probs.gather(1, labels.where(valid, 0)[:, None]).squeeze(1)
        impossible = (at_label == 0) & valid
    else:
        impossible = torch.where(labels == 1, probs == 0, probs == 1)
    count = int(impossible.sum())
    if count:
        tiny = torch.finfo(torch.float64 if probs.dtype == torch.float64 else torch.float32).tiny
        warn(
            f"{count} of {impossible.numel()} true labels have probability exactly 0, so their "
            f"NLL is infinite; they are fitted as probability {tiny:.3g}. Rounded probabilities "
            "(float16, a clamp) lose the small values that calibration needs: pass the logits "
            "with inputs='logits' if you can",
        )


def _check_options(activation: str, inputs: str) -> None:
    """``activation`` and ``inputs`` must be among the known choices."""
    check_choice(activation, "activation", ACTIVATIONS)
    check_choice(inputs, "inputs", INPUTS)


def _resolve_activation(activation: str, shape: tuple[int, ...]) -> str:
    """``activation`` with "auto" resolved: sigmoid for binary logits of ``shape``, else softmax."""
    if activation != "auto":
        return activation
    return "sigmoid" if _is_binary(shape) else "softmax"


def _check_inputs(
    logits: object, labels: object, activation: str, per_class: bool, inputs: str
) -> tuple[Tensor, Tensor, str]:
    """Check the tensors and options every shape shares; resolve ``activation="auto"``."""
    # The one place a fit's tensors come in: without autograd history from here on, so no fit
    # builds a graph through (or needs the caller to detach) model outputs.
    logits = check_has_values(check_tensor(logits, "logits"), "logits").detach()
    labels = check_has_values(check_tensor(labels, "labels"), "labels").detach()
    _check_float(logits, "logits")
    _check_options(activation, inputs)
    if logits.numel() == 0:
        raise ValueError(
            f"logits are empty (shape {tuple(logits.shape)}): at least 1 sample is needed"
        )
    activation = _resolve_activation(activation, logits.shape)
    if per_class and activation != "sigmoid":
        raise ValueError(
            "per_class=True is for multi-label sigmoid models: pass activation='sigmoid'"
        )
    return logits, labels, activation


def to_rows(
    logits: object,
    labels: object,
    *,
    activation: str = "auto",
    class_dim: int | None = None,
    ignore_index: int | None = -100,
    per_class: bool = False,
    inputs: str = "logits",
) -> Rows:
    """Validate shapes and flatten ``logits``/``labels`` to rows (see the module docstring).

    Example:
        >>> rows = to_rows(torch.zeros(2, 4, 3, 3), torch.zeros(2, 3, 3, dtype=torch.long))
        >>> rows.activation, tuple(rows.logits.shape), rows.class_dim
        ('softmax', (18, 4), -3)
    """
    logits, labels, activation = _check_inputs(logits, labels, activation, per_class, inputs)
    if activation == "softmax":
        rows = _softmax_rows(logits, labels, class_dim, ignore_index)
    else:
        rows = _sigmoid_rows(logits, labels, class_dim, ignore_index, per_class)
    if inputs == "probs":
        converted = _probs_to_logits(rows.logits, rows.labels, rows.activation)
        rows = Rows(rows.activation, converted, rows.labels, rows.class_dim, rows.n_ignored)
    return rows


@dataclass(frozen=True)
class FitRows:
    """What a temperature fit reads: one row source per temperature, each with its labels.

    ``sources[i]`` gives (M, K) softmax rows with (M,) integer ``labels[i]``, or (M,) sigmoid
    entries with (M,) 0/1 targets. Nothing is copied: sources read the caller's tensor (or array,
    or file) chunk by chunk, and entries whose label equals ``ignore_index`` are skipped by the
    fit rather than dropped here (``None``: nothing to skip). The targets' 0/1 values and the
    logits' finiteness are checked by the fit.
    """

    activation: str
    sources: tuple[RowSource, ...]
    labels: tuple[Tensor, ...]
    class_dim: int | None
    ignore_index: int | None


def fit_rows(
    logits: object,
    labels: object,
    *,
    activation: str = "auto",
    class_dim: int | None = None,
    ignore_index: int | None = -100,
    per_class: bool = False,
    inputs: str = "logits",
) -> FitRows:
    """Like :func:`to_rows`, for a fit: row sources over the logits instead of copies.

    ``logits`` may also be a numpy array (memory-mapped arrays included) or a file opened with
    :func:`torchcal.open_logits`; those hold (N, K) softmax rows or (N,) binary logits.

    Example:
        >>> rows = fit_rows(torch.zeros(2, 4, 3, 3), torch.zeros(2, 3, 3, dtype=torch.long))
        >>> rows.activation, tuple(rows.sources[0].shape), rows.class_dim
        ('softmax', (18, 4), -3)
    """
    if isinstance(labels, np.ndarray):
        labels = torch.from_numpy(labels)
    if not isinstance(logits, Tensor):
        return _source_rows(logits, labels, activation, class_dim, ignore_index, per_class, inputs)
    if inputs == "probs":  # converted to log-probabilities: a new tensor anyway
        rows = to_rows(
            logits,
            labels,
            activation=activation,
            class_dim=class_dim,
            ignore_index=ignore_index,
            per_class=per_class,
            inputs=inputs,
        )
        if rows.logits.ndim == 2 and rows.activation == "sigmoid":  # per class: columns
            columns = range(rows.logits.shape[1])
            sources = tuple(TensorRows(rows.logits[:, k], False) for k in columns)
            targets = tuple(rows.labels[:, k] for k in columns)
        else:
            sources = (TensorRows(rows.logits, rows.activation == "softmax"),)
            targets = (rows.labels,)
        return FitRows(rows.activation, sources, targets, rows.class_dim, None)
    logits, labels, activation = _check_inputs(logits, labels, activation, per_class, inputs)
    if activation == "softmax":
        dim = _softmax_class_dim(logits.shape, labels, class_dim)
        source = TensorRows(logits.movedim(dim, -1))
        return FitRows("softmax", (source,), (labels.reshape(-1),), dim - logits.ndim, ignore_index)
    dim = _sigmoid_class_dim(logits, labels, class_dim, per_class)
    class_axis = None if dim is None else dim - logits.ndim
    if dim is None or not per_class:
        source = TensorRows(logits, rows_of_width=False)
        return FitRows("sigmoid", (source,), (labels.reshape(-1),), class_axis, ignore_index)
    moved, moved_labels = logits.movedim(dim, -1), labels.movedim(dim, -1)
    columns = range(logits.shape[dim])
    sources = tuple(TensorRows(moved[..., k], rows_of_width=False) for k in columns)
    targets = tuple(moved_labels[..., k].reshape(-1) for k in columns)
    return FitRows("sigmoid", sources, targets, class_axis, None)


def _source_rows(
    logits: object,
    labels: object,
    activation: str,
    class_dim: int | None,
    ignore_index: int | None,
    per_class: bool,
    inputs: str,
) -> FitRows:
    """A numpy array or an opened file: (N, K) softmax rows or (N,) binary logits."""
    source = as_source(logits)
    labels = check_has_values(check_tensor(labels, "labels"), "labels").detach()
    _check_options(activation, inputs)
    check_source(source)
    if inputs == "probs" or per_class:
        option = "inputs='probs'" if inputs == "probs" else "per_class=True"
        raise ValueError(
            f"{option} needs the logits as a torch.Tensor; arrays and files read in chunks "
            "take (N, K) logits or (N,) binary logits"
        )
    shape = tuple(source.shape)
    activation = _resolve_activation(activation, shape)
    if activation == "softmax":
        if len(shape) != 2 or class_dim not in (None, 1, -1):
            raise ValueError(
                f"arrays and files read in chunks must hold (N, K) rows of class scores, got "
                f"shape {shape}"
                + ("" if class_dim is None else f" with class_dim={class_dim}")
                + "; save dense maps or token sequences with the classes last, reshaped to "
                "(-1, K), or pass them as a torch.Tensor"
            )
        _softmax_class_dim(torch.Size(shape), labels, None)
        return FitRows("softmax", (source,), (labels,), -1, ignore_index)
    if not _is_binary(shape):
        raise ValueError(
            f"arrays and files read in chunks hold (N,) binary logits for a sigmoid fit, got "
            f"shape {shape}; pass multi-label logits as a torch.Tensor"
        )
    _check_binary_labels(shape[0], labels.shape)
    if len(shape) == 2:
        source = ColumnRows(source)
    return FitRows("sigmoid", (source,), (labels.reshape(-1),), None, ignore_index)
