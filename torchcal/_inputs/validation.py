"""Argument and tensor checks shared by every public entry point.

Each check raises ``TypeError`` or ``ValueError`` with a message that names the argument, the
offending value or count, and how to fix it. None of them copies or modifies the tensors.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
#: The most equal-width bins a histogram or reliability diagram may have. A calibration set fills
#: a few thousand bins at best, and the bin tables grow with the count (with K classes, a
#: histogram calibrator holds K x bins values).
MAX_BINS = 1 << 16
#: The temperature range a float32 buffer holds: T and 1/T both finite and normal.
FLOAT32_TEMPERATURE_RANGE = (torch.finfo(torch.float32).tiny, torch.finfo(torch.float32).max)


def check_tensor(value: object, name: str) -> Tensor:
    """Return ``value`` if it is a tensor, else raise a ``TypeError`` naming ``name``."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def check_has_values(tensor: Tensor, name: str) -> Tensor:
    """Refuse a tensor without values (on the ``meta`` device): nothing can be fitted on it.

    Example:
        >>> check_has_values(torch.zeros(2), "logits")
        tensor([0., 0.])
    """
    if tensor.is_meta:
        raise ValueError(
            f"{name} are on the meta device, which holds shapes but no values; a fit needs the "
            "real values: materialise the model (e.g. model.to_empty(device=...) and load its "
            "weights) and compute the logits on a real device"
        )
    return tensor


def check_float_dtype(dtype: torch.dtype, name: str = "logits") -> None:
    """Refuse a dtype that is not one of :data:`FLOAT_DTYPES` (for tensors and row sources).

    Example:
        >>> check_float_dtype(torch.int64)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        TypeError: logits must be a floating tensor (float16, ...), got dtype torch.int64
    """
    if dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be a floating tensor (float16, bfloat16, float32 or float64), "
            f"got dtype {dtype}"
        )


def check_logits_matrix(logits: object, name: str = "logits") -> Tensor:
    """Check that ``logits`` is a non-empty floating (N, K) tensor with K >= 2."""
    logits = check_tensor(logits, name)
    check_matrix_layout(logits.shape, logits.dtype, name)
    return logits


def check_matrix_layout(shape: tuple[int, ...], dtype: torch.dtype, name: str = "logits") -> None:
    """Check that a tensor or row source of ``shape`` and ``dtype`` holds (N, K) logits, K >= 2."""
    check_float_dtype(dtype, name)
    if len(shape) != 2:
        raise ValueError(
            f"{name} must have shape (N, K) with one row of class scores per sample, "
            f"got {len(shape)} dimension(s) with shape {tuple(shape)}"
        )
    if shape[0] == 0:
        raise ValueError(f"{name} is empty: it has 0 rows, at least 1 sample is needed")
    if shape[1] < 2:
        raise ValueError(
            f"{name} has K={shape[1]} class column(s); softmax temperature scaling needs "
            "K >= 2 (for one logit per sample use a binary calibrator)"
        )


def check_labels(
    labels: object,
    n_samples: int,
    n_classes: int,
    name: str = "labels",
    ignore_index: int | None = None,
) -> Tensor:
    """Check that ``labels`` is an integer (N,) tensor of class indices in [0, n_classes).

    Labels equal to ``ignore_index`` (if given) are exempt from the range check. Returns them as
    int64 (any integer dtype is accepted).
    """
    labels = check_tensor(labels, name)
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(
            f"{name} must be an integer tensor of class indices, got dtype {labels.dtype}; "
            "convert with labels.long() if the values are whole numbers"
        )
    if labels.ndim != 1:
        if labels.ndim == 2 and labels.shape[1] == 1:  # argmax would make every label 0
            advice = "(N, 1) labels hold one class index per row: pass labels.reshape(-1)"
        elif labels.ndim == 2 and labels.shape[1] == n_classes:
            advice = "one-hot labels can be converted with labels.argmax(dim=1)"
        else:
            advice = "pass one integer class index per row of the logits"
        raise ValueError(f"{name} must have shape (N,), got shape {tuple(labels.shape)}; {advice}")
    if labels.shape[0] != n_samples:
        raise ValueError(
            f"{name} has {labels.shape[0]} entries but the logits have {n_samples} rows; "
            "they must match one to one"
        )
    if n_samples:
        outside = _outside(labels, (labels < 0) | (labels >= n_classes), ignore_index)
        if outside:
            count, example = outside
            raise ValueError(
                f"{name} must lie in [0, {n_classes}) for {n_classes} classes; "
                f"found {count} out of range, e.g. {int(example)}"
            )
    return labels.long()  # indices for gather; no copy when already int64


def check_binary_targets(labels: Tensor, ignore_index: int | None = None) -> Tensor:
    """Check that every entry of ``labels`` is 0 or 1, except those equal to ``ignore_index``."""
    outside = _outside(labels, (labels != 0) & (labels != 1), ignore_index)
    if outside:
        count, example = outside
        raise ValueError(
            f"sigmoid targets must be 0 or 1; found {count} other value(s), e.g. {example}"
        )
    return labels


def _outside(labels: Tensor, bad: Tensor, ignore_index: int | None) -> tuple[int, Any] | None:
    """The count and first value of the ``bad`` entries of ``labels`` other than
    ``ignore_index`` (found with boolean masks, not a copy of the kept labels), or None."""
    if ignore_index is not None:
        bad &= labels != ignore_index
    if not bool(bad.any()):
        return None
    return int(bad.sum()), labels[bad][0].item()


def check_some_kept(n_kept: int, described: str, ignore_index: int | None) -> None:
    """Refuse labels of which none is kept: ``described`` names them ("one of the 12 labels").

    Example:
        >>> check_some_kept(0, "next-token label", -100)
        Traceback (most recent call last):
        ...
        ValueError: every next-token label equals ignore_index=-100: nothing is left to calibrate on
    """
    if n_kept == 0:
        raise ValueError(
            f"every {described} equals ignore_index={ignore_index}: nothing is left to calibrate on"
        )


def check_unit_interval(probs: Tensor, name: str, conversion: str) -> None:
    """Check that every value of ``probs`` is finite and in [0, 1]; ``conversion`` fixes logits."""
    finite = torch.isfinite(probs)
    if not bool(finite.all()):
        raise ValueError(f"{name} contains {int((~finite).sum())} NaN or infinite value(s)")
    low, high = float(probs.min()), float(probs.max())
    if low < 0.0 or high > 1.0:
        raise ValueError(
            f"{name} must hold probabilities in [0, 1], found values in [{low:.4g}, {high:.4g}]; "
            f"if these are logits, apply {conversion} first"
        )


def check_probabilities_matrix(probs: object, name: str = "probs") -> Tensor:
    """Check that ``probs`` is a floating (N, K) tensor of values in [0, 1]."""
    probs = check_tensor(probs, name)
    if not probs.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating tensor, got dtype {probs.dtype}")
    if probs.ndim != 2:
        raise ValueError(f"{name} must have shape (N, K), got shape {tuple(probs.shape)}")
    if probs.shape[0] == 0:
        raise ValueError(f"{name} is empty: it has 0 rows, at least 1 sample is needed")
    if probs.shape[1] < 2:
        raise ValueError(f"{name} must have K >= 2 class columns, got K={probs.shape[1]}")
    check_unit_interval(probs, name, "torch.softmax(logits, dim=1)")
    return probs


def check_positive_int(value: object, name: str, minimum: int = 1) -> int:
    """Check that ``value`` is an int >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_bin_count(value: object, name: str) -> int:
    """Check a number of bins: an int in [1, :data:`MAX_BINS`].

    Example:
        >>> check_bin_count(15, "n_bins")
        15
    """
    value = check_positive_int(value, name)
    if value > MAX_BINS:
        raise ValueError(
            f"{name}={value} is more bins than the limit of {MAX_BINS:,}: a calibration set "
            "cannot fill that many, and the tables grow with the count; use fewer bins"
        )
    return value


def check_choice(value: object, name: str, choices: tuple[str, ...]) -> str:
    """Check that ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value  # type: ignore[return-value]


def check_positive_finite(value: object, name: str) -> float:
    """Check that ``value`` is a real number, finite and > 0, and return it as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value <= 0.0:
        raise ValueError(f"{name} must be finite and > 0, got {value}")
    return value


def check_model(model: object) -> nn.Module | None:
    """Check that ``model`` is a ``torch.nn.Module`` or ``None``, and return it."""
    if model is not None and not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module or None, got {type(model).__name__}")
    return model


def check_temperature_bounds(bounds: tuple[float, float]) -> tuple[float, float]:
    """Check ``temperature_bounds``: ``(low, high)``, finite and > 0, with ``low < high``, inside
    the range a float32 temperature holds (:data:`FLOAT32_TEMPERATURE_RANGE`, about 1.2e-38 to
    3.4e38), since the fitted T is kept in a float32 buffer.

    Example:
        >>> check_temperature_bounds((1e-3, 1000))
        (0.001, 1000.0)
    """
    if isinstance(bounds, (str, bytes)) or not hasattr(bounds, "__len__") or len(bounds) != 2:
        raise TypeError(f"temperature_bounds must be a pair (low, high), got {bounds!r}")
    low, high = (check_positive_finite(b, "temperature_bounds") for b in bounds)
    if not low < high:
        raise ValueError(f"temperature_bounds must be (low, high) with low < high, got {bounds}")
    smallest, largest = FLOAT32_TEMPERATURE_RANGE
    if low < smallest or high > largest:
        raise ValueError(
            f"temperature_bounds={bounds} leaves the range a float32 temperature holds, "
            f"[{smallest:.4g}, {largest:.4g}]; keep both bounds inside it"
        )
    return low, high


def check_floating(value: object, name: str) -> Tensor:
    """Check that ``value`` is a floating tensor (float16, bfloat16, float32 or float64)."""
    value = check_tensor(value, name)
    check_float_dtype(value.dtype, name)
    return value


def check_dim(dim: object, ndim: int, name: str = "dim") -> int:
    """Check that ``dim`` indexes a tensor with ``ndim`` dimensions; return it as a negative int."""
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"{name} must be an int, got {type(dim).__name__}")
    if not -ndim <= dim < ndim:
        raise ValueError(
            f"{name}={dim} is out of range for a tensor with {ndim} dimension(s); "
            f"use a value in [{-ndim}, {ndim - 1}]"
        )
    return dim - ndim if dim >= 0 else dim


def check_temperature(temperature: object, shape: torch.Size, name: str = "temperature") -> Tensor:
    """Check a temperature for logits of ``shape``: a real number or a tensor, finite and > 0.

    A tensor must broadcast against the logits without changing their shape, e.g. (N, 1) for one
    temperature per row of (N, K) logits or (K,) for one per class. Returns a tensor (0-dim for a
    number) that the logits can be divided by.
    """
    if isinstance(temperature, Tensor):
        if temperature.dtype.is_complex or temperature.dtype == torch.bool:
            raise TypeError(f"{name} must hold real numbers, got dtype {temperature.dtype}")
        try:
            broadcast = torch.broadcast_shapes(temperature.shape, shape)
        except RuntimeError:
            broadcast = None
        if broadcast != shape:
            raise ValueError(
                f"{name} of shape {tuple(temperature.shape)} does not broadcast to the logits' "
                f"shape {tuple(shape)}; use shape (N, 1) for one temperature per row or (K,) for "
                "one per class"
            )
        if temperature.numel():
            bad = ~torch.isfinite(temperature) | (temperature <= 0)
            if bool(bad.any()):
                example = float(temperature[bad].flatten()[0])
                raise ValueError(
                    f"{name} must be finite and > 0 everywhere; found {int(bad.sum())} value(s) "
                    f"that are not, e.g. {example}"
                )
        return temperature
    return torch.tensor(check_positive_finite(temperature, name), dtype=torch.float64)


def check_probabilities(probs: object, dim: int = -1, name: str = "probs") -> tuple[Tensor, int]:
    """Check probabilities over ``dim`` of any shape: finite, in [0, 1], summing to 1.

    The sums may be off by ``max(1e-4, sqrt(eps))`` of the dtype (about 0.03 for float16).
    Returns the tensor and ``dim`` as a negative int.
    """
    probs = check_floating(probs, name)
    if probs.ndim == 0:
        raise ValueError(f"{name} must have a class dimension, got a 0-dim tensor")
    dim = check_dim(dim, probs.ndim)
    if probs.shape[dim] == 0:
        raise ValueError(f"{name} has no classes: dimension {dim} has size 0")
    if probs.numel() == 0:
        return probs, dim
    check_unit_interval(probs, name, "torchcal.dial.softmax(logits)")
    tolerance = max(1e-4, torch.finfo(probs.dtype).eps ** 0.5)
    error = (probs.to(torch.float64).sum(dim=dim) - 1.0).abs()
    worst = float(error.max())
    if worst > tolerance:
        raise ValueError(
            f"{name} must sum to 1 over dim {dim}; {int((error > tolerance).sum())} row(s) do "
            f"not, off by up to {worst:.4g} (tolerance {tolerance:.1g}); normalise them, or pass "
            "the dim that holds the classes"
        )
    return probs, dim


def row_sum_tolerance(dtype: torch.dtype) -> float:
    """How far from 1 the rows of softmax probabilities in ``dtype`` may sum: 1e-3, or the
    dtype's machine epsilon where rounding each entry may move the sum further (bfloat16).

    Example:
        >>> row_sum_tolerance(torch.float32), row_sum_tolerance(torch.bfloat16)
        (0.001, 0.0078125)
    """
    return max(1e-3, torch.finfo(dtype).eps) if dtype.is_floating_point else 1e-3


def check_row_sums(probs: Tensor) -> None:
    """Rows of (N, K) ``probs`` sum to 1 within :func:`row_sum_tolerance`, from one read.

    Example:
        >>> check_row_sums(torch.tensor([[0.25, 0.75], [0.0, 0.0]]))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: probs rows must sum to 1; 1 row(s) do not, e.g. row 1 sums to 0. ...
    """
    if probs.dtype == torch.float64 or (
        probs.dtype == torch.float32 and probs.device.type == "cpu"
    ):
        # a BLAS product reads the rows fastest on a CPU; on a GPU it could use TF32
        sums = probs @ probs.new_ones(probs.shape[1])
    else:  # in float32 (float16 and bfloat16 cannot hold a sum to 1e-3)
        sums = probs.sum(dim=1, dtype=torch.float32)
    tolerance = row_sum_tolerance(probs.dtype)
    low, high = torch.stack(list(torch.aminmax(sums))).tolist()
    if low >= 1 - tolerance and high <= 1 + tolerance:
        return
    off = (sums - 1).abs() > tolerance
    row = int(off.nonzero()[0])
    total = float(probs[row].sum(dtype=torch.float64))
    raise ValueError(
        f"probs rows must sum to 1; {int(off.sum())} row(s) do not, e.g. row {row} sums to "
        f"{total:.6g}. Pass softmax probabilities, not logits or scores"
    )


def check_softmax_rows(logits: Tensor, labels: Tensor) -> Tensor:
    """Validate (M, K) logits and (M,) labels held in memory; return the labels as int64.

    The checks of the temperature objective's validating pass, with its messages, for methods
    that fit on the rows directly: floating (M, K) logits with K >= 2, labels in [0, K), every
    row finite, every row's range max - min finite in float64, and not every row a probability
    distribution (in [0, 1], summing to 1).

    Example:
        >>> check_softmax_rows(torch.tensor([[0.0, float("nan")]]), torch.tensor([0]))
        Traceback (most recent call last):
        ...
        ValueError: logits contain NaN or infinite values in 1 row, e.g. row 0; check the ...
    """
    check_matrix_layout(logits.shape, logits.dtype)
    labels = check_labels(labels, logits.shape[0], logits.shape[1])
    row_max = logits.amax(dim=1).to(torch.float64)
    row_min = logits.amin(dim=1).to(torch.float64)
    bad = (~(torch.isfinite(row_max) & torch.isfinite(row_min))).nonzero()
    if bad.numel():
        count, row = bad.numel(), int(bad[0])
        raise ValueError(
            f"logits contain NaN or infinite values in {count} {'row' if count == 1 else 'rows'}, "
            f"e.g. row {row}; check the model's outputs before calibrating"
        )
    overflowing = (~torch.isfinite(row_max - row_min)).nonzero()
    if overflowing.numel():
        row = int(overflowing[0])
        raise ValueError(
            f"logits row {row} spans from {float(row_max[row]):.4g} down past "
            f"-{torch.finfo(torch.float64).max:.4g}: its range max - min overflows float64, "
            "too wide to calibrate; check the model's outputs"
        )
    sums = logits.sum(dim=1, dtype=torch.float32 if logits.dtype != torch.float64 else None)
    if (
        float(row_min.min()) >= 0
        and float(row_max.max()) <= 1
        and bool(((sums - 1).abs() <= 1e-3).all())
    ):
        raise ValueError(
            "logits look like probabilities: every row lies in [0, 1] and sums to 1. "
            "Temperature scaling needs the raw scores before softmax; pass the model's logits, "
            "or inputs='probs' if only probabilities are available"
        )
    return labels
