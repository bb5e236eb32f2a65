"""Checks of fitted values read back from a file or a state dict, before a calibrator takes them.

A saved calibrator is data from outside: ``torchcal.load``, ``load_state_dict`` and the command
line's ``--scaler`` must accept only values a fit could have produced (a negative or NaN
temperature would silently invert or destroy every prediction). Each calibrator kind states its
own rules in one hook (``_check_loaded``) built from these checks; every check raises a
``ValueError`` that names the field and the offending value.

Example:
    >>> import torch
    >>> loaded_tensor({"temperature": torch.tensor(-2.0)}, "temperature", shape=(), positive=True)
    Traceback (most recent call last):
    ...
    ValueError: temperature must be > 0, got -2.0
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

import torch
from torch import Tensor

from torchcal._inputs.validation import FLOAT_DTYPES

__all__ = [
    "check_simplex",
    "loaded_int",
    "loaded_record",
    "loaded_tensor",
    "no_unknown_tensors",
]

_Record = TypeVar("_Record")


def _shown(tensor: Tensor, mask: Tensor) -> str:
    bad = tensor[mask].flatten()
    return f"{bad[0].item()!r}" + ("" if bad.numel() == 1 else f" (and {bad.numel() - 1} more)")


def loaded_tensor(
    tensors: Mapping[str, Any],
    name: str,
    *,
    shape: tuple[int, ...] | None = None,
    ndim: int | None = None,
    positive: bool = False,
    unit_interval: bool = False,
    bounds: tuple[float, float] | None = None,
) -> Tensor:
    """The floating tensor ``tensors[name]``, checked: present, the ``shape`` (or ``ndim``)
    given, every value finite, and ``> 0``, in ``[0, 1]`` or in ``bounds`` when asked.

    ``bounds`` are compared in the tensor's own dtype, so a value held at a bound and rounded
    to float32 when it was stored still counts as inside.
    """
    if name not in tensors:
        raise ValueError(f"the fitted tensor {name!r} is missing")
    tensor = tensors[name]
    if not isinstance(tensor, Tensor):
        raise ValueError(f"{name} must be a tensor, got {type(tensor).__name__}")
    if tensor.dtype not in FLOAT_DTYPES:
        raise ValueError(
            f"{name} must be float16, bfloat16, float32 or float64, got dtype {tensor.dtype}"
        )
    if shape is not None and tuple(tensor.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(tensor.shape)}")
    if ndim is not None and tensor.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {tuple(tensor.shape)}")
    if tensor.device.type == "meta":
        raise ValueError(f"{name} is a meta tensor: it holds no values")
    finite = torch.isfinite(tensor)
    if not bool(finite.all()):
        raise ValueError(f"{name} must be finite, got {_shown(tensor, ~finite)}")
    if positive and not bool((tensor > 0).all()):
        raise ValueError(f"{name} must be > 0, got {_shown(tensor, tensor <= 0)}")
    if unit_interval:
        outside = (tensor < 0) | (tensor > 1)
        if bool(outside.any()):
            raise ValueError(f"{name} must lie in [0, 1], got {_shown(tensor, outside)}")
    if bounds is not None:
        low, high = (torch.tensor(bound, dtype=tensor.dtype).item() for bound in bounds)
        outside = (tensor < low) | (tensor > high)
        if bool(outside.any()):
            raise ValueError(
                f"{name} must lie within temperature_bounds ({bounds[0]:g}, {bounds[1]:g}) "
                f"as a fit keeps it, got {_shown(tensor, outside)}"
            )
    return tensor


def check_simplex(weights: Tensor, name: str) -> None:
    """``weights`` (already finite) must be >= 0 and sum to 1 within ``8 * eps`` of their dtype
    (float32: 9.5e-7), the rounding of weights fitted in float64 and stored in that dtype."""
    negative = weights < 0
    if bool(negative.any()):
        raise ValueError(f"{name} must be >= 0, got {_shown(weights, negative)}")
    total = float(weights.double().sum())
    tolerance = 8 * torch.finfo(weights.dtype).eps
    if abs(total - 1.0) > tolerance:
        raise ValueError(f"{name} must sum to 1 (within {tolerance:.2g}), got a sum of {total!r}")


def no_unknown_tensors(tensors: Mapping[str, Any], known: set[str], kind: str) -> None:
    """A saved calibrator holds exactly its fitted tensors; anything else is refused."""
    unknown = sorted(set(tensors) - known)
    if unknown:
        raise ValueError(
            f"tensors {unknown} are not fitted values of a {kind} calibrator (it has "
            f"{sorted(known)})"
        )


def loaded_int(
    state: Mapping[str, Any], key: str, field: str, *, minimum: int | None = None
) -> int:
    """``state[key]``, which must be an int (not a bool) and ``>= minimum``."""
    value = state.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{field}.{key} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{field}.{key} must be >= {minimum}, got {value!r}")
    return value


def _accepts(annotation: str, value: object) -> bool:
    optional = annotation.endswith("| None")
    if value is None:
        return optional
    base = annotation.removesuffix("| None").strip()
    if base == "bool":
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if base == "int":
        return isinstance(value, int) and value >= 0
    if base == "float":  # JSON writes 2.0 as 2.0, but a hand-written 2 is the same number
        return isinstance(value, (int, float)) and not math.isnan(value)
    if base == "str":
        return isinstance(value, str)
    raise AssertionError(f"no loading rule for a field of type {annotation}")  # pragma: no cover


def loaded_record(record_type: type[_Record], value: object, field: str) -> _Record:
    """A fit-result record rebuilt from a dict, each field of its declared type.

    Keys this version does not know are ignored (as in ``from_dict``); a missing field without
    a default, a field of the wrong type, a NaN or a negative count is refused.
    """
    if not isinstance(value, dict):
        raise ValueError(f"{field} must be a JSON object, got {type(value).__name__}")
    hints = typing.get_type_hints(record_type)
    kept: dict[str, Any] = {}
    for spec in dataclasses.fields(record_type):  # type: ignore[arg-type]
        if spec.name not in value:
            if spec.default is dataclasses.MISSING:
                raise ValueError(f"{field} has no {spec.name!r}")
            continue
        annotation = _annotation_name(hints[spec.name])
        if not _accepts(annotation, value[spec.name]):
            raise ValueError(
                f"{field}.{spec.name} must be {annotation.replace('|', 'or')}"
                f"{' >= 0' if annotation == 'int' else ''}, got {value[spec.name]!r}"
            )
        kept[spec.name] = value[spec.name]
    return record_type(**kept)


def _annotation_name(hint: object) -> str:
    args = typing.get_args(hint)
    if args:  # X | None
        names = [arg.__name__ for arg in args if arg is not type(None)]
        return f"{names[0]} | None"
    return hint.__name__  # type: ignore[attr-defined]
