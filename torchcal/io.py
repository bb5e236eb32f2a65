"""Save a fitted calibrator to a small file, and load it back, without pickling the model.

The file is a safetensors file: the fitted tensors (for temperature scaling, the scalar
``temperature``; for the other calibrators their fitted buffers) plus string metadata in its
header: ``format`` (always ``"torchcal"``), ``format_version``, ``torchcal_version``,
``calibrator`` (the kind, e.g. ``"temperature"`` or ``"dirichlet"``), ``options`` (the
constructor options, JSON) and ``fit_result`` (the fitted state: fit results, class dimension;
JSON). It holds no
code and no model weights, so it is safe to load from anywhere and a few hundred bytes long.
safetensors is a dependency of torchcal, installed with it.
"""

from __future__ import annotations

import json
import os
from typing import Any

from torch import nn

from torchcal._version import __version__
from torchcal.calibrator import Calibrator

FORMAT = "torchcal"
FORMAT_VERSION = 1
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
    (``torch.save(model.state_dict(), ...)``) and pass it to :func:`load`.

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
    _safetensors().torch.save_file(tensors, os.fspath(path), metadata=metadata)


def load(path: PathLike, model: nn.Module | None = None) -> Calibrator:
    """Read a file written by :func:`save` into a fitted calibrator of the kind saved.

    Args:
        path: the file.
        model: the classifier to wrap; ``None`` gives a calibrator of logits.

    Raises:
        ValueError: the file is not a torchcal file, or was written in a newer format version or
            for a calibrator this version does not know.
    """
    safetensors = _safetensors()
    path = os.fspath(path)
    try:
        with safetensors.safe_open(path, framework="pt") as file:
            metadata = file.metadata() or {}
            tensors = {name: file.get_tensor(name) for name in file.keys()}  # noqa: SIM118
    except (OSError, ValueError, RuntimeError, safetensors.SafetensorError) as error:
        raise ValueError(
            f"{path!r} is not a torchcal file: it cannot be read as safetensors ({error})"
        ) from error
    if metadata.get("format") != FORMAT or not metadata.get("format_version", "").isdigit():
        raise ValueError(
            f"{path!r} is not a torchcal file: its header has no torchcal format marker; "
            "write calibration files with torchcal.save(calibrator, path)"
        )
    version = int(metadata["format_version"])
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{path!r} has torchcal file format version {version} (written by torchcal "
            f"{metadata.get('torchcal_version', '?')}), but this torchcal {__version__} reads "
            f"format versions up to {FORMAT_VERSION}: upgrade torchcal to load it"
        )
    kind = metadata.get("calibrator")
    cls = Calibrator.registry.get(kind or "")
    if cls is None:
        known = ", ".join(repr(name) for name in sorted(Calibrator.registry))
        raise ValueError(
            f"{path!r} holds a calibrator of kind {kind!r}, which this torchcal {__version__} "
            f"cannot load (known: {known})"
        )
    options = json.loads(metadata["options"])
    try:
        calibrator = cls(model, **options)
    except TypeError as error:  # options of another kind or version
        raise ValueError(
            f"{path!r} holds {kind!r} options this torchcal {__version__} does not accept: {error}"
        ) from error
    state = json.loads(metadata["fit_result"])
    calibrator._restore(tensors, {} if state is None else state)
    return calibrator
