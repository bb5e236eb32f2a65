"""Load logits and labels saved as ``.pt``, ``.npy``, ``.npz`` or ``.safetensors``; write outputs.

A file holds one tensor, or several of which ``key`` names one; from ``.npz`` and
``.safetensors`` files only that one is read. Every failure raises :class:`DataFileError` with a
one-line message naming the file. Outputs are written by :func:`output_file`, atomically.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Literal

import numpy as np
import torch
from torch import Tensor

from torchcal.calibrators.base import Calibrator
from torchcal.io._atomic import atomic_write, check_writable_target

__all__ = [
    "SUFFIXES",
    "DataFileError",
    "check_output",
    "load_scaler",
    "load_tensor",
    "output_file",
    "safetensors_key",
    "save_scaler",
]

#: The file types :func:`load_tensor` reads, by suffix.
SUFFIXES = (".pt", ".pth", ".npy", ".npz", ".safetensors")


class DataFileError(ValueError):
    """A data file is missing, unreadable or does not hold one tensor."""


def _pick(names: Iterable[str], path: Path, key: str | None, key_option: str) -> str:
    """The name of the one array to read from a file holding ``names``."""
    names = sorted(names)
    if key is not None:
        if key not in names:
            raise DataFileError(
                f"{path}: no array named {key!r}; it holds {', '.join(names) or 'none'}: "
                f"name one with {key_option}"
            )
        return key
    if len(names) != 1:
        raise DataFileError(
            f"{path} holds {len(names)} arrays ({', '.join(names)}); name one with {key_option}"
        )
    return names[0]


def safetensors_key(path: str | Path, key: str | None = None, key_option: str = "key") -> str:
    """The name of the tensor to read from a ``.safetensors`` file, from its header alone.

    Args:
        path: the ``.safetensors`` file.
        key: the tensor's name; ``None`` when the file holds only one.
        key_option: what the error messages call ``key`` (the CLI's ``--logits-key``).

    Returns:
        ``key``, or the name of the file's only tensor.
    """
    path = Path(path)
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as file:
            names = list(file.keys())
    except Exception as error:  # the reader's own exception types
        raise DataFileError(f"{path}: cannot read it as .safetensors: {_reason(error)}") from error
    return _pick(names, path, key, key_option)


def _reason(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def load_tensor(path: str | Path, key: str | None = None, key_option: str = "key") -> Tensor:
    """The tensor stored in ``path`` (the suffix picks the format).

    Only the array named is read from ``.npz`` and ``.safetensors`` files.

    Args:
        path: a ``.pt``, ``.pth``, ``.npy``, ``.npz`` or ``.safetensors`` file.
        key: the array's name in a file that holds several (a dict in ``.pt``, ``.npz``,
            ``.safetensors``); ``None`` when it holds one.
        key_option: what the error messages call ``key`` (the CLI's ``--logits-key``).

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> np.save(folder / "labels.npy", np.array([0, 2, 1]))
        >>> load_tensor(folder / "labels.npy")
        tensor([0, 2, 1])
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataFileError(
            f"{path}: unknown file type {suffix!r}; use one of {', '.join(SUFFIXES)}"
        )
    if not path.is_file():
        raise DataFileError(f"{path}: no such file")
    try:
        if suffix in (".pt", ".pth"):
            loaded = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(loaded, dict):
                loaded = loaded[_pick(loaded, path, key, key_option)]
            if not isinstance(loaded, Tensor):
                raise DataFileError(f"{path} holds a {type(loaded).__name__}, not a tensor")
            return loaded
        if suffix == ".npy":
            return torch.from_numpy(np.load(path, allow_pickle=False))
        if suffix == ".npz":  # members are decompressed one by one, on access
            with np.load(path, allow_pickle=False) as archive:
                return torch.from_numpy(archive[_pick(archive.files, path, key, key_option)])
        from safetensors import safe_open

        with safe_open(path, framework="pt") as file:
            return file.get_tensor(_pick(file.keys(), path, key, key_option))
    except DataFileError:
        raise
    except ImportError as error:
        raise DataFileError(f"{path}: reading {suffix} files needs {error.name}") from error
    except Exception as error:  # every reader has its own exception types
        raise DataFileError(f"{path}: cannot read it as {suffix}: {_reason(error)}") from error


@contextlib.contextmanager
def output_file(path: str | Path, mode: Literal["w", "wb"] = "w") -> Iterator[IO]:
    """Open ``path`` for writing, atomically, as a context manager.

    The data goes to a temporary file in the same folder, renamed over ``path`` only once it is
    written in full, so a failed or interrupted write leaves an earlier file as it was. Any
    failure to write raises ``OSError`` with one line naming ``path`` and the reason.

    Args:
        path: the file to write; its folder must exist.
        mode: ``"w"`` for text, ``"wb"`` for bytes.

    Example:
        >>> import tempfile
        >>> with output_file(Path(tempfile.mkdtemp()) / "missing" / "report.json") as file:
        ...     _ = file.write("{}")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        OSError: cannot write .../missing/report.json: the folder ... does not exist
    """
    try:
        with atomic_write(path, mode) as file:
            yield file
    except OSError as error:
        raise _write_error(path, error) from error


def check_output(path: str | Path) -> Path:
    """Raise the ``OSError`` :func:`output_file` would raise for a target that cannot be written
    (a folder, a device, a missing folder), before any work is spent on what goes there.

    Args:
        path: the file to be written.

    Returns:
        ``path`` as a ``Path``.
    """
    try:
        return check_writable_target(path)
    except OSError as error:
        raise _write_error(path, error) from error


def _write_error(path: str | Path, error: OSError) -> OSError:
    # the reason without the temporary file's name (the user knows only ``path``)
    reason = error.strerror or str(error)
    return OSError(f"cannot write {path}: {reason or type(error).__name__}")


def save_scaler(scaler: Calibrator, path: str | Path) -> Path:
    """Save a fitted calibrator (its values, fit record and options, no model) with
    :func:`torchcal.save`, atomically (see :func:`output_file`).

    Args:
        scaler: the fitted calibrator.
        path: the file to write; its folder must exist.

    Returns:
        ``path`` as a ``Path``.
    """
    from torchcal.io.state import save

    path = Path(path)
    check_output(path)
    # torchcal.save writes to a path: a scratch file, whose bytes then go through output_file
    with tempfile.TemporaryDirectory() as scratch:
        scratch_file = Path(scratch, "calibrator.safetensors")
        try:
            save(scaler, scratch_file)
            data = scratch_file.read_bytes()
        except OSError as error:
            raise _write_error(path, error) from error
        except Exception as error:  # safetensors reports a failed write with its own type
            if type(error).__name__ != "SafetensorError":
                raise
            raise _write_error(path, OSError(_reason(error))) from error
    with output_file(path, "wb") as file:
        file.write(data)
    return path


def load_scaler(path: str | Path) -> Calibrator:
    """A model-less calibrator (a :class:`TemperatureScaler` or another kind) read by
    :func:`torchcal.load`; any failure raises :class:`DataFileError`.

    Args:
        path: a file written by :func:`save_scaler` or :func:`torchcal.save`.
    """
    from torchcal.io.state import load

    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"{path}: no such file")
    try:
        return load(path)
    except (ValueError, ImportError) as error:
        raise DataFileError(f"{path}: not a saved calibrator: {error}") from error
