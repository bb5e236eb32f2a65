"""The fitted state every calibrator keeps beside its tensors: one format written, every format
read.

A calibrator's extra state (``state_dict()["_extra_state"]``, and the ``fit_result`` field of a
file written by :func:`torchcal.save`) is one JSON object:

``torchcal_version``
    the version that wrote it (informative only).
``fitted``
    whether the calibrator was fitted.
``fit_results``
    the fit's :class:`~torchcal.FitResult` records as dicts (one per fitted temperature of a
    per-class temperature scaler, else one), or ``null`` when the values were set without a fit.
``activation``
    ``"softmax"`` or ``"sigmoid"``: the link the calibrated logits are read through.
``class_dim``
    the (negative) class dimension fitted on; ``null`` for elementwise sigmoid logits.
``n_classes``
    the number of classes the calibrator checks its inputs against; ``null`` where it checks none
    (temperature scaling, whose per-class temperatures carry their own count).

:func:`read_state` also reads the layouts earlier versions wrote, all under file format 1:
temperature scaling's ``{fit_results, activation, class_dim}`` (fitted exactly when a
temperature is set), its first layout (one bare fit-result record), and the other calibrators'
``{fitted, fit_result, class_dim, n_classes}``. Every field is checked for its type here; a
calibrator checks that the fields and its tensors belong together (``_check_loaded``).

Example:
    >>> state = read_state({"fitted": True, "fit_result": None, "class_dim": -1,
    ...                     "n_classes": 3}, "vector")
    >>> state.fitted, state.fit_results, state.activation, state.n_classes
    (True, None, 'softmax', 3)
    >>> read_state({"fitted": "yes"}, "vector")
    Traceback (most recent call last):
    ...
    ValueError: fit_result.fitted must be true or false, got 'yes'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torchcal._version import __version__
from torchcal.calibrators._loaded import loaded_record
from torchcal.calibrators.result import FitResult, upgraded_record

__all__ = ["FittedState", "read_state", "written_state"]

ACTIVATIONS = ("softmax", "sigmoid")


@dataclass(frozen=True)
class FittedState:
    """The fitted state read back, each field of its type (see the module docstring).

    Attributes:
        fitted: whether the state says the calibrator was fitted; ``None`` for an older
            temperature state, which left that to its tensor (T is NaN until fitted).
        fit_results: the fit's records, or ``None`` when the values were set without a fit.
        activation: ``"softmax"`` or ``"sigmoid"``.
        class_dim: the negative class dimension, or ``None`` for elementwise sigmoid logits.
        n_classes: the class count inputs are checked against, or ``None``.
    """

    fitted: bool | None = None
    fit_results: tuple[FitResult, ...] | None = None
    activation: str = "softmax"
    class_dim: int | None = -1
    n_classes: int | None = None


def written_state(
    *,
    fitted: bool,
    fit_result: FitResult | tuple[FitResult, ...] | None,
    activation: str,
    class_dim: int | None,
    n_classes: int | None,
) -> dict[str, Any]:
    """The extra state of a calibrator, in the current format (see the module docstring).

    Args:
        fitted: whether the calibrator is fitted.
        fit_result: its fit result, a tuple of them (per-class temperatures), or ``None``.
        activation: the link its calibrated logits are read through.
        class_dim: the class dimension it was fitted on.
        n_classes: the class count it checks inputs against, or ``None``.
    """
    if fit_result is None:
        results = None
    elif isinstance(fit_result, FitResult):
        results = [fit_result.to_dict()]
    else:
        results = [record.to_dict() for record in fit_result]
    return {
        "torchcal_version": __version__,
        "fitted": fitted,
        "fit_results": results,
        "activation": activation,
        "class_dim": class_dim,
        "n_classes": n_classes,
    }


def read_state(state: object, kind: str) -> FittedState:
    """The fitted state of a calibrator of ``kind``, from any format written so far, each field
    checked for its type; raises ``ValueError`` naming the field otherwise.

    Args:
        state: the JSON object (``fit_result`` field of a file, or ``_extra_state``).
        kind: the calibrator's kind; records that do not name one are taken to be of it.
    """
    if not isinstance(state, dict):
        raise ValueError(f"fit_result must be a JSON object, got {type(state).__name__}")
    state = _in_current_layout(state)
    fitted = state.get("fitted")
    if fitted is not None and not isinstance(fitted, bool):
        raise ValueError(f"fit_result.fitted must be true or false, got {fitted!r}")
    activation = state.get("activation", "softmax")
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"fit_result.activation must be 'softmax' or 'sigmoid', got {activation!r}"
        )
    class_dim = state.get("class_dim", -1)
    if class_dim is not None and (not _is_int(class_dim) or class_dim >= 0):
        raise ValueError(
            f"fit_result.class_dim must be a negative integer or null, got {class_dim!r}"
        )
    n_classes = state.get("n_classes")
    if n_classes is not None and (not _is_int(n_classes) or n_classes < 0):
        raise ValueError(f"fit_result.n_classes must be an integer >= 0 or null, got {n_classes!r}")
    return FittedState(
        fitted, _records(state.get("fit_results"), kind), activation, class_dim, n_classes
    )


def _in_current_layout(state: dict[str, Any]) -> dict[str, Any]:
    """An older layout's fields under the current names (the current layout as it is)."""
    if "fit_results" in state:  # the current layout, or temperature scaling's of format 1
        return state
    if {"fitted", "fit_result", "n_classes"} & set(state):  # the softmax calibrators' format 1
        record = state.get("fit_result")
        return {**state, "fit_results": None if record is None else [record]}
    if "temperature" in state:  # temperature scaling's first layout: one bare fit result
        return {"fit_results": [state]}
    return state


def _records(results: object, kind: str) -> tuple[FitResult, ...] | None:
    if results is None:
        return None
    if not isinstance(results, list) or not results:
        raise ValueError(f"fit_result.fit_results must be a non-empty list, got {results!r}")
    records = []
    for i, result in enumerate(results):
        field = f"fit_result.fit_results[{i}]"
        values = (
            {"calibrator": kind, **upgraded_record(result)} if isinstance(result, dict) else result
        )
        record = loaded_record(FitResult, values, field)
        if record.calibrator != kind:
            raise ValueError(f"{field}.calibrator must be {kind!r}, got {record.calibrator!r}")
        records.append(record)
    return tuple(records)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
