"""Save a fitted calibrator to a small file, and load it back, without pickling the model.

The file is a safetensors file: the fitted tensors, named as the calibrator's buffers
(``temperature_`` for temperature scaling, ``weight_`` and ``bias_`` for the affine maps, ...),
plus string metadata in its header: ``format`` (always ``"torchcal"``), ``format_version``,
``torchcal_version``, ``calibrator`` (the kind, e.g. ``"temperature"`` or ``"dirichlet"``),
``options`` (the constructor options, JSON) and ``fit_result`` (the fitted state, JSON: see
:mod:`torchcal.calibrators._state`). It holds no
code and no model weights, so it is safe to load from anywhere and a few hundred bytes long:
:func:`load` accepts only values a fit could have produced (a finite T > 0 inside the
calibrator's bounds, weights of the right shape for the stored number of classes, ...) and
refuses anything else with a ``ValueError`` that names the file and the field. :func:`save`
writes a temporary file beside the target and renames it over the target, so an interrupted
save leaves the previous file intact.
safetensors is a dependency of torchcal, installed with it.
"""

from __future__ import annotations

import json
import math
import os
import stat
import struct
import types
import typing
from typing import Any

from torch import nn

from torchcal._version import __version__
from torchcal.calibrators.base import Calibrator
from torchcal.io._atomic import atomic_write

__all__ = ["FORMAT_VERSION", "load", "save"]


FORMAT = "torchcal"
#: 2: tensors named as the calibrator's buffers (``temperature_``, ``weight_``, ...) and one
#: fitted-state layout for every kind. Format 1 files (torchcal 0.1.0) load too: their tensor
#: names map to the buffers' (``temperature``, ``weight``, ``bias``) and their states are read
#: in both of their layouts (see :mod:`torchcal.calibrators._state`).
FORMAT_VERSION = 2
PathLike = str | os.PathLike[str]


def _safetensors() -> Any:
    try:
        import safetensors.torch
    except ImportError as error:
        raise ImportError(
            "torchcal.save and torchcal.load need the safetensors package: pip install "
            "safetensors (a dependency of torchcal, missing from this environment)"
        ) from error
    return safetensors


def save(calibrator: Calibrator, path: PathLike) -> None:
    """Write a fitted calibrator's values, fit result and options to ``path``.

    Every calibrator saves the same way (:class:`~torchcal.TemperatureScaler` and the others
    in :attr:`Calibrator.registry`). The wrapped model is not saved: save it as usual
    (``torch.save(model.state_dict(), ...)``) and pass it to :func:`load`. The file is written
    beside ``path`` and renamed over it in one step, keeping the mode of the file it replaces;
    a ``path`` that is a folder, a device or a FIFO is refused (``OSError``) before anything is
    written.

    Args:
        calibrator: a fitted calibrator of any kind.
        path: the file to write.

    Example:
        >>> import tempfile, torch, torchcal
        >>> _ = torch.manual_seed(0)
        >>> logits = torch.randn(500, 4) * 4
        >>> labels = torch.distributions.Categorical(logits=logits / 2).sample()
        >>> scaler = torchcal.TemperatureScaler().fit(logits, labels, progress=False)
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     torchcal.save(scaler, f"{folder}/calibration.safetensors")
        ...     loaded = torchcal.load(f"{folder}/calibration.safetensors")
        >>> loaded.temperature == scaler.temperature, loaded.fit_result == scaler.fit_result
        (True, True)
    """
    if not isinstance(calibrator, Calibrator):
        raise TypeError(
            f"save expects a torchcal calibrator (e.g. a TemperatureScaler), got "
            f"{type(calibrator).__name__}"
        )
    calibrator._check_fitted()
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "torchcal_version": __version__,
        "calibrator": calibrator.kind,
        "options": json.dumps(calibrator.options()),
        "fit_result": json.dumps(calibrator.get_extra_state()),
    }
    tensors = {name: tensor.contiguous() for name, tensor in calibrator.fitted_tensors().items()}
    data = _with_sorted_metadata(_safetensors().torch.save(tensors, metadata=metadata))
    with atomic_write(path, "wb") as file:
        file.write(data)


def _with_sorted_metadata(data: bytes) -> bytes:
    """``data``, a safetensors file, with its header's metadata in sorted key order.

    safetensors writes the metadata in the order of a hash map seeded afresh for every save, so
    the same calibrator saved twice gave different bytes (a different checksum, a different
    file to a build cache). The header is rewritten as safetensors writes it, compact JSON
    padded with spaces to a multiple of 8 bytes, with the metadata sorted; the tensors' bytes
    follow unchanged (their offsets count from the header's end).

    Example:
        >>> import safetensors.torch, torch
        >>> raw = safetensors.torch.save({"t": torch.ones(1)}, metadata={"b": "2", "a": "1"})
        >>> _with_sorted_metadata(raw)[8:].startswith(b'{"__metadata__":{"a":"1","b":"2"}')
        True
    """
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    metadata = header.pop("__metadata__", None)
    if metadata is not None:
        header = {"__metadata__": dict(sorted(metadata.items())), **header}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data[8 + length :]


def load(path: PathLike, model: nn.Module | None = None) -> Calibrator:
    """Read a file written by :func:`save` into a fitted calibrator of the kind saved.

    Every value is checked as strictly as a fit would produce it before the calibrator is
    built (see the module docstring). Files of every format version up to
    :data:`FORMAT_VERSION` load, those torchcal 0.1.0 wrote (format 1) included.

    Args:
        path: the file.
        model: the classifier to wrap; ``None`` gives a calibrator of logits.

    Raises:
        ValueError: ``path`` does not exist, cannot be read (the message says "permission
            denied" when that is why), is not a regular file, is not a torchcal file, was
            written in a newer format version or for a calibrator this version does not know,
            or holds a field (named in the message) that no fit could have produced.
    """
    safetensors = _safetensors()
    name = os.fspath(path)
    data = _read_regular_file(name)
    try:
        tensors = safetensors.torch.load(data)
        (length,) = struct.unpack("<Q", data[:8])  # validated by the load above
        header = json.loads(data[8 : 8 + length])
    except (ValueError, RuntimeError, safetensors.SafetensorError) as error:
        raise ValueError(
            f"{name!r} is not a torchcal file: it cannot be read as safetensors ({error})"
        ) from error
    metadata = header.get("__metadata__") or {}
    if metadata.get("format") != FORMAT or not str(metadata.get("format_version", "")).isdigit():
        raise ValueError(
            f"{name!r} is not a torchcal file: its header has no torchcal format marker; "
            "write calibration files with torchcal.save(calibrator, path)"
        )
    version = int(metadata["format_version"])
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{name!r} has torchcal file format version {version} (written by torchcal "
            f"{metadata.get('torchcal_version', '?')}), but this torchcal {__version__} reads "
            f"format versions up to {FORMAT_VERSION}: upgrade torchcal to load it"
        )
    kind = metadata.get("calibrator")
    cls = Calibrator.registry.get(kind or "")
    if cls is None:
        known = ", ".join(repr(name) for name in sorted(Calibrator.registry))
        raise ValueError(
            f"{name!r} holds a calibrator of kind {kind!r}, which this torchcal {__version__} "
            f"cannot load (known: {known})"
        )
    options = _json_field(metadata, "options", name)
    if not isinstance(options, dict):
        raise ValueError(
            f"{name!r}: the field 'options' must be a JSON object, got {type(options).__name__}"
        )
    try:
        _check_option_types(cls, options)
        calibrator = cls(model, **options)
    except (TypeError, ValueError) as error:  # options of another kind or version, or invalid
        raise ValueError(
            f"{name!r} holds {kind!r} options this torchcal {__version__} does not accept "
            f"(field 'options'): {error}"
        ) from error
    state = _json_field(metadata, "fit_result", name)
    try:
        calibrator._restore(tensors, state)
    except ValueError as error:
        raise ValueError(f"{name!r} holds a {kind} calibrator no fit could produce: {error}") from (
            error
        )
    return calibrator


def _read_regular_file(path: str) -> bytes:
    """The bytes of ``path``, refusing anything but a regular file before reading a byte.

    The file is opened without blocking (a FIFO would otherwise wait forever for a writer) and
    checked on the open descriptor, so nothing can be swapped in between check and read.
    """
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError as error:
        raise ValueError(f"{path!r} is not a torchcal file: no such file") from error
    except PermissionError as error:
        raise ValueError(
            f"{path!r} cannot be read: permission denied (check the file's read permission)"
        ) from error
    except OSError as error:  # a folder on some systems, a dangling link, ...
        raise ValueError(f"{path!r} cannot be opened: {error.strerror or error}") from error
    try:
        mode = os.fstat(descriptor).st_mode
        if stat.S_ISDIR(mode):
            raise ValueError(f"{path!r} is a folder, not a torchcal file")
        if not stat.S_ISREG(mode):
            raise ValueError(
                f"{path!r} is not a regular file (a device, FIFO or socket); torchcal files "
                "are regular files written by torchcal.save"
            )
        with os.fdopen(descriptor, "rb") as file:
            descriptor = -1  # closed by the file object from here on
            return file.read()
    finally:
        if descriptor >= 0:
            os.close(descriptor)


def _json_field(metadata: dict[str, Any], field: str, path: str) -> Any:
    """The JSON value of the header field ``field``, with an error naming the file and field."""
    if field not in metadata:
        raise ValueError(
            f"{path!r} is not a complete torchcal file: the field {field!r} is missing"
        )
    try:
        return json.loads(metadata[field])
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path!r}: the field {field!r} is not valid JSON ({error})") from error


def _check_option_types(cls: type[Calibrator], options: dict[str, Any]) -> None:
    """Every option must have the JSON type its constructor declares (an int where it takes an
    int, a pair of finite numbers for bounds, ...), so a string never passes for a flag.

    Unknown option names are left for the constructor to refuse.
    """
    hints = typing.get_type_hints(cls.__init__)
    for key, value in options.items():
        if key not in hints or key in ("model", "return"):
            continue
        hint = hints[key]
        optional = isinstance(hint, types.UnionType) and type(None) in typing.get_args(hint)
        base = (
            next(arg for arg in typing.get_args(hint) if arg is not type(None))
            if optional
            else hint
        )
        if typing.get_origin(base) is typing.Literal:  # a choice: the constructor names them
            ok = isinstance(value, str)
        elif typing.get_origin(base) is tuple:
            ok = isinstance(value, list) and len(value) == len(typing.get_args(base))
            ok = ok and all(_is_number(v, typing.get_args(base)[0]) for v in value)
            if ok:
                options[key] = tuple(value)
        else:
            ok = (value is None and optional) or _is_number(value, base)
        if not ok:
            shown = getattr(base, "__name__", str(base))
            raise TypeError(
                f"option {key}={value!r} must be {shown}{' or null' if optional else ''}"
            )


def _is_number(value: object, kind: Any) -> bool:
    """Whether a JSON value has the Python type ``kind`` (an int counts as a float; a bool is
    only a bool; a float must be finite)."""
    if kind is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if kind is int:
        return isinstance(value, int)
    if kind is float:
        return isinstance(value, (int, float)) and math.isfinite(value)
    return isinstance(value, kind)
