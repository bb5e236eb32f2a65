"""Load logits and labels saved as ``.pt``, ``.npy``, ``.npz`` or ``.safetensors``.

A file holds one tensor, or several of which ``key`` names one. Every failure raises
:class:`DataFileError` with a one-line message naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from torchcal.calibrator import Calibrator

__all__ = ["SUFFIXES", "DataFileError", "load_scaler", "load_tensor", "save_scaler"]

SUFFIXES = (".pt", ".pth", ".npy", ".npz", ".safetensors")


class DataFileError(ValueError):
    """A data file is missing, unreadable or does not hold one tensor."""


def _pick(values: dict[str, Tensor], path: Path, key: str | None) -> Tensor:
    if key is not None:
        if key not in values:
            raise DataFileError(f"{path}: no array named {key!r}; it holds {sorted(values)}")
        return values[key]
    if len(values) != 1:
        raise DataFileError(
            f"{path} holds {len(values)} arrays ({', '.join(sorted(values))}); name one with key"
        )
    return next(iter(values.values()))


def load_tensor(path: str | Path, key: str | None = None) -> Tensor:
    """The tensor stored in ``path`` (the suffix picks the format).

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
                loaded = _pick(loaded, path, key)
            if not isinstance(loaded, Tensor):
                raise DataFileError(f"{path} holds a {type(loaded).__name__}, not a tensor")
            return loaded
        if suffix == ".npy":
            return torch.from_numpy(np.load(path, allow_pickle=False))
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                arrays = {name: torch.from_numpy(archive[name]) for name in archive.files}
            return _pick(arrays, path, key)
        from safetensors.torch import load_file

        return _pick(load_file(path), path, key)
    except DataFileError:
        raise
    except ImportError as error:
        raise DataFileError(f"{path}: reading {suffix} files needs {error.name}") from error
    except Exception as error:  # every reader has its own exception types
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataFileError(f"{path}: cannot read it as {suffix}: {reason}") from error


def save_scaler(scaler: Calibrator, path: str | Path) -> Path:
    """Save a fitted calibrator (its values, fit record and options, no model) with
    :func:`torchcal.save`, creating the folder if needed."""
    from torchcal.io import save

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save(scaler, path)
    return path


def load_scaler(path: str | Path) -> Calibrator:
    """A model-less calibrator (a :class:`TemperatureScaler` or another kind) read by
    :func:`torchcal.load`."""
    from torchcal.io import load

    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"{path}: no such file")
    try:
        return load(path)
    except (ValueError, ImportError) as error:
        raise DataFileError(f"{path}: not a saved calibrator: {error}") from error
