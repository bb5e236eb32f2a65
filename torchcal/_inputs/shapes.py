"""Where the classes are: the shapes every classifier input may have, and their checks.

Supported inputs (``class_dim`` is where the classes are in ``logits``):

* softmax, ``(N, K)`` logits with ``(N,)`` integer labels;
* softmax, dense ``(N, K, *spatial)`` logits with ``(N, *spatial)`` labels (segmentation maps,
  volumes), ``class_dim=1``;
* softmax, token sequences ``(B, L, V)`` with ``(B, L)`` labels, ``class_dim=-1``;
* sigmoid, binary ``(N,)`` or ``(N, 1)`` logits with 0/1 labels of the same length;
* sigmoid, multi-label ``(N, K, ...)`` logits with 0/1 targets of the same shape.

``class_dim=None`` infers the class dimension as the only one whose removal leaves the labels'
shape. One-hot labels for softmax are rejected with a message saying how to convert them.
:func:`torchcal._inputs.prepare.prepare` lays the inputs out as rows with these checks.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor

from torchcal._inputs.validation import check_choice

#: How the logits are read: ``"auto"`` picks sigmoid for one logit per sample, else softmax.
Activation = Literal["auto", "softmax", "sigmoid"]
#: What a calibrator is given: logits, or probabilities when only those are at hand (fitted as
#: log-probabilities or log-odds).
Inputs = Literal["logits", "probs"]
#: The choices of each, as checked at run time.
ACTIVATIONS: tuple[str, ...] = get_args(Activation)
INPUTS: tuple[str, ...] = get_args(Inputs)


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


def softmax_class_dim(logits_shape: torch.Size, labels: Tensor, class_dim: int | None) -> int:
    """The class dimension of softmax logits, after checking that the labels are indices."""
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        if labels.shape == logits_shape:
            resolve_class_dim(logits_shape, labels.shape, None)  # raises the one-hot message
        raise TypeError(
            f"labels must be an integer tensor of class indices, got dtype {labels.dtype}; "
            "convert with labels.long() if the values are whole numbers"
        )
    return resolve_class_dim(logits_shape, labels.shape, class_dim)


def is_binary(shape: tuple[int, ...]) -> bool:
    """Whether logits of ``shape`` hold one logit per sample: (N,) or (N, 1)."""
    return len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)


def check_binary_labels(n_entries: int, labels_shape: tuple[int, ...]) -> None:
    """Labels of binary logits with ``n_entries`` entries must match them one to one."""
    if tuple(labels_shape) not in ((n_entries,), (n_entries, 1)):
        raise ValueError(
            f"binary logits have {n_entries} entries but labels have shape "
            f"{tuple(labels_shape)}; they must match one to one"
        )


def sigmoid_class_dim(
    logits: Tensor, labels: Tensor, class_dim: int | None, per_class: bool
) -> int | None:
    """Check sigmoid logits against their targets; the class dim (>= 0), None if binary."""
    ndim = logits.ndim
    if is_binary(logits.shape):
        if per_class:
            raise ValueError("per_class=True needs multi-label logits (N, K) with K >= 2")
        check_binary_labels(logits.shape[0], labels.shape)
        return None
    if labels.shape != logits.shape:
        raise ValueError(
            f"multi-label targets must have the logits' shape {tuple(logits.shape)}, "
            f"got {tuple(labels.shape)}"
        )
    if class_dim is not None and not -ndim <= class_dim < ndim:
        raise ValueError(f"class_dim={class_dim} is out of range for {ndim}-d logits")
    return (1 if class_dim is None else class_dim) % ndim


def check_options(activation: str, inputs: str) -> None:
    """``activation`` and ``inputs`` must be among the known choices."""
    check_choice(activation, "activation", ACTIVATIONS)
    check_choice(inputs, "inputs", INPUTS)


def resolve_activation(activation: str, shape: tuple[int, ...]) -> str:
    """``activation`` with "auto" resolved: sigmoid for binary logits of ``shape``, else softmax."""
    if activation != "auto":
        return activation
    return "sigmoid" if is_binary(shape) else "softmax"
