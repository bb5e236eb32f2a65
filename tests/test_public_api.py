"""The public surface: what every public module exports, how it is documented, how its string
options are typed, and which way its imports point.

Each check collects every offender and fails once with the whole list, so one run shows all
that is left to fix.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import pkgutil
import typing
from pathlib import Path

import pytest

import torchcal

PACKAGE_DIR = Path(torchcal.__file__).parent


def _module_names() -> list[str]:
    """Every module of the package, by dotted name (packages by their own name)."""
    names = ["torchcal"]
    for info in pkgutil.walk_packages([str(PACKAGE_DIR)], prefix="torchcal."):
        names.append(info.name)
    return sorted(names)


def _is_public(name: str) -> bool:
    return not any(part.startswith("_") for part in name.split("."))


ALL_MODULES = _module_names()
PUBLIC_MODULES = [name for name in ALL_MODULES if _is_public(name)]


def _fail_with(offenders: list[str], what: str) -> None:
    if offenders:
        listing = "\n  ".join(offenders)
        pytest.fail(f"{len(offenders)} {what}:\n  {listing}", pytrace=False)


# ---------------------------------------------------------------------------------- __all__


def test_the_public_modules_are_found() -> None:
    for name in ("torchcal", "torchcal.dial", "torchcal.metrics", "torchcal.io.mapped"):
        assert name in PUBLIC_MODULES
    assert not any("._" in name for name in PUBLIC_MODULES)


def test_every_public_module_declares_all_and_every_name_in_it_exists() -> None:
    offenders = []
    for name in PUBLIC_MODULES:
        module = importlib.import_module(name)
        exported = getattr(module, "__all__", None)
        if exported is None:
            offenders.append(f"{name}: no __all__")
            continue
        offenders += [f"{name}: __all__ names {n!r}, which it lacks" for n in exported
                      if not hasattr(module, n)]  # fmt: skip
        if len(set(exported)) != len(exported):
            offenders.append(f"{name}: __all__ names something twice")
    _fail_with(offenders, "public modules without a valid __all__")


# ---------------------------------------------------------------------------------- docstrings


def _takes_arguments(function: object) -> bool:
    try:
        parameters = inspect.signature(function).parameters  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return any(name not in ("self", "cls") for name in parameters)


def _is_record(cls: type) -> bool:
    return dataclasses.is_dataclass(cls) or (issubclass(cls, tuple) and hasattr(cls, "_fields"))


def _own_init(cls: type) -> object | None:
    """The ``__init__`` a class gets from torchcal (itself or a torchcal base), if any."""
    for klass in cls.__mro__:
        if "__init__" in vars(klass):
            return vars(klass)["__init__"] if klass.__module__.startswith("torchcal") else None
    return None


def _documented_members(cls: type) -> list[tuple[str, object]]:
    """The public methods and properties a torchcal class defines itself."""
    members = []
    for name, value in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(value, (staticmethod, classmethod)):
            value = value.__func__
        if inspect.isfunction(value) or isinstance(value, property):
            members.append((name, value))
    return members


def _docstring_offences(label: str, obj: object, record: bool = False) -> list[str]:
    doc = inspect.getdoc(obj)
    if not doc:
        return [f"{label}: no docstring"]
    if isinstance(obj, property):
        return []
    if inspect.isclass(obj):
        if record:
            if "Attributes:" in doc or "Args:" in doc or not dataclasses.fields(obj):
                return []
            return [f"{label}: a record without an Attributes: section"]
        init = _own_init(obj)
        if init is None or not _takes_arguments(init):
            return []
        if "Args:" in doc or "Args:" in (inspect.getdoc(init) or ""):
            return []
        return [f"{label}: no Args: section for its constructor"]
    if _takes_arguments(obj) and "Args:" not in doc:
        return [f"{label}: no Args: section"]
    return []


def _public_callables() -> list[tuple[str, object]]:
    """(dotted name, object) of every public callable: functions and classes in a public
    module's ``__all__``, and the public methods those classes define."""
    found: dict[int, tuple[str, object]] = {}
    for name in PUBLIC_MODULES:
        module = importlib.import_module(name)
        for exported in getattr(module, "__all__", ()):
            obj = getattr(module, exported, None)
            if inspect.ismodule(obj) or not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue
            home = f"{getattr(obj, '__module__', name)}.{obj.__qualname__}"
            found.setdefault(id(obj), (home, obj))
    listed = []
    for home, obj in sorted(found.values(), key=lambda item: item[0]):
        listed.append((home, obj))
        if inspect.isclass(obj):
            listed += [(f"{home}.{m}", member) for m, member in _documented_members(obj)]
    return listed


def test_every_public_callable_has_a_docstring_with_an_args_section() -> None:
    offenders = []
    for label, obj in _public_callables():
        record = inspect.isclass(obj) and _is_record(obj)
        offenders += _docstring_offences(label, obj, record=record)
    _fail_with(offenders, "public callables documented incompletely")


# ---------------------------------------------------------------------------------- Literal

#: String options that take a fixed set of values: (callable, parameter).
STRING_OPTIONS = [
    ("torchcal.TemperatureScaler", "activation"),
    ("torchcal.TemperatureScaler", "inputs"),
    ("torchcal.TemperatureScaler", "method"),
    ("torchcal.TemperatureScaler.export", "output"),
    ("torchcal.calibrators.Calibrator.export", "output"),
    ("torchcal.calibrators.SoftmaxCalibrator.export", "output"),
    ("torchcal.VectorScaler", "inputs"),
    ("torchcal.MatrixScaler", "inputs"),
    ("torchcal.DirichletCalibrator", "inputs"),
    ("torchcal.HistogramBinning", "inputs"),
    ("torchcal.IsotonicCalibrator", "inputs"),
    ("torchcal.EnsembleTemperatureScaler", "inputs"),
    ("torchcal.EnsembleTemperatureScaler", "loss"),
    ("torchcal.compare", "inputs"),
    ("torchcal.Comparison.best", "metric"),
    ("torchcal.export.CalibratedModel", "output"),
    ("torchcal.export.CalibratedModel", "link"),
    ("torchcal.export.KeywordCalibratedModel", "output"),
    ("torchcal.export.ProbabilitiesToLogits", "activation"),
    ("torchcal.metrics.ReliabilityBins.calibration_error", "norm"),
    ("torchcal.metrics.reliability_bins", "strategy"),
    ("torchcal.metrics.expected_calibration_error", "strategy"),
    ("torchcal.metrics.expected_calibration_error", "norm"),
    ("torchcal.metrics.maximum_calibration_error", "strategy"),
    ("torchcal.metrics.classwise_calibration_error", "strategy"),
    ("torchcal.metrics.classwise_calibration_error", "norm"),
    ("torchcal.metrics.debiased_calibration_error", "strategy"),
    ("torchcal.metrics.CalibrationErrorMeter", "norm"),
    ("torchcal.metrics.CalibrationErrorMeter", "inputs"),
]


def _resolve(dotted: str) -> object:
    """The object a dotted name reaches from the package, importing submodules on the way."""
    parts = dotted.split(".")
    obj = importlib.import_module(parts[0])
    for index, part in enumerate(parts[1:], start=1):
        if not hasattr(obj, part) and inspect.ismodule(obj):
            importlib.import_module(".".join(parts[: index + 1]))
        obj = getattr(obj, part)
    return obj


def _is_literal(annotation: object, namespace: dict[str, object]) -> bool:
    if isinstance(annotation, str):
        try:
            annotation = eval(annotation, dict(namespace), {"typing": typing})
        except Exception:
            return annotation.replace(" ", "").startswith(("Literal[", "typing.Literal["))
    if typing.get_origin(annotation) is typing.Literal:
        return True
    # Literal[...] | None, Optional[Literal[...]]
    return any(typing.get_origin(arg) is typing.Literal for arg in typing.get_args(annotation))


def test_string_options_with_fixed_values_are_typed_as_literal() -> None:
    offenders = []
    for dotted, parameter in STRING_OPTIONS:
        try:
            obj = _resolve(dotted)
        except (ImportError, AttributeError) as error:
            offenders.append(f"{dotted}: not found ({error})")
            continue
        function = obj.__init__ if inspect.isclass(obj) else obj
        signature = inspect.signature(function)
        if parameter not in signature.parameters:
            offenders.append(f"{dotted}: no parameter {parameter!r}")
            continue
        annotation = signature.parameters[parameter].annotation
        if not _is_literal(annotation, getattr(function, "__globals__", {})):
            offenders.append(f"{dotted}({parameter}=...): annotated {annotation!r}, not Literal")
    _fail_with(offenders, "string options not typed as Literal")


# ---------------------------------------------------------------------------------- layers

#: The layers, lowest first: a module may import from its own layer and the layers below.
LAYERS: dict[str, int] = {
    "errors": 0,
    "_version": 0,
    "_side_by_side": 0,
    "_inputs": 1,
    "_terms": 1,
    "metrics": 2,
    "dial": 2,
    "_objectives": 3,
    "_optim": 4,
    "calibrators": 5,
    "export": 5,
    "io": 6,
    "compare": 6,
    "_report": 6,
    "_demo": 6,
    "plots": 6,
    "cli": 6,
    "integrations": 6,
    "__main__": 7,
    "": 7,  # the package itself: torchcal/__init__.py
}
#: Parts that may import only from the parts named (besides the layer order).
ONLY_FROM: dict[str, set[str]] = {
    "errors": set(),
    "_version": set(),
    "_side_by_side": set(),
    "metrics": {"_inputs", "_terms", "errors", "metrics"},
    "dial": {"_inputs", "_terms", "errors", "metrics", "dial"},
}


def _part(module: str) -> str:
    """The top-level part of the package a dotted module name belongs to."""
    return module.split(".")[1] if module.count(".") else ""


def _module_file(name: str) -> Path:
    relative = Path(*name.split(".")[1:])
    package = PACKAGE_DIR / relative / "__init__.py"
    return package if package.exists() else (PACKAGE_DIR / relative).with_suffix(".py")


def _imported_modules(name: str) -> list[tuple[int, str]]:
    """(line, module) for every torchcal module that module ``name`` imports, lazily or not."""
    path = _module_file(name)
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    imported = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - node.level + 1]
                source = ".".join([*base, node.module] if node.module else base)
            else:
                source = node.module or ""
            for alias in node.names:
                candidate = f"{source}.{alias.name}"
                target = candidate if candidate in ALL_MODULES else source
                imported.append((node.lineno, target))
    inside = {(line, target) for line, target in imported if target.split(".")[0] == "torchcal"}
    return sorted(inside)


def test_the_layers_point_one_way() -> None:
    offenders = []
    for name in ALL_MODULES:
        part = _part(name)
        where = f"{_module_file(name).relative_to(PACKAGE_DIR.parent)}"
        if part not in LAYERS:
            offenders.append(f"{where}: part {part!r} has no layer; add it to LAYERS")
            continue
        for line, target in _imported_modules(name):
            target_part = _part(target)
            if target_part == part:
                continue
            allowed = ONLY_FROM.get(part)
            if allowed is not None and target_part not in allowed:
                offenders.append(f"{where}:{line}: {part!r} imports {target} (only {allowed})")
            elif LAYERS.get(target_part, 99) > LAYERS[part]:
                offenders.append(f"{where}:{line}: {part!r} imports {target}, a higher layer")
    _fail_with(offenders, "imports against the layer order")


def test_the_comparison_metrics_are_the_reported_ones() -> None:
    from torchcal._report import METRICS
    from torchcal.compare import Metric

    assert list(typing.get_args(Metric)) == list(METRICS)
