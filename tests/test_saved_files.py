"""Files and state dicts written by earlier torchcal versions keep loading, with the same outputs.

``tests/data/make_saved_files.py`` wrote each ``tests/data/saved_v<version>/`` folder with the
version it names; nothing there is ever regenerated. Every file must load with
:func:`torchcal.load`, every state dict into a fresh calibrator of its kind, and both must give
the stored calibrated logits (the same float32 computation, so a tight tolerance) and fit result.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import torch

import torchcal
from torchcal import Calibrator, FitResult

DATA = Path(__file__).parent / "data"
FOLDERS = sorted(DATA.glob("saved_v*"))


def _writer() -> Any:
    spec = importlib.util.spec_from_file_location("make_saved_files", DATA / "make_saved_files.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


WRITER = _writer()
CASES = [(folder, name) for folder in FOLDERS for name in WRITER.CALIBRATORS]


def _expected(folder: Path, name: str) -> dict[str, Any]:
    return torch.load(folder / "expected.pt", weights_only=True)[name]


def _check(calibrator: Calibrator, folder: Path, name: str) -> None:
    expected = _expected(folder, name)
    assert calibrator.is_fitted
    with torch.no_grad():
        outputs = calibrator(expected["inputs"])
    torch.testing.assert_close(outputs, expected["outputs"], rtol=1e-6, atol=1e-6)
    assert WRITER.result_dicts(calibrator.fit_result) == _current(expected["fit_result"])


def _current(records: Any) -> Any:
    """Stored fit-result dicts in the current fields (0.1.0 named the kind or solver ``method``)."""
    if records is None or isinstance(records, dict):
        return None if records is None else FitResult.from_dict(records).to_dict()
    return tuple(FitResult.from_dict(record).to_dict() for record in records)


def test_there_are_saved_files():
    assert FOLDERS, "tests/data holds no saved_v* folder"


@pytest.mark.parametrize(("folder", "name"), CASES, ids=[f"{f.name}-{n}" for f, n in CASES])
def test_a_saved_file_loads_and_calibrates_as_it_did(folder, name):
    loaded = torchcal.load(folder / f"{name}.safetensors")
    assert loaded.kind == WRITER.CALIBRATORS[name][0]
    _check(loaded, folder, name)


@pytest.mark.parametrize(("folder", "name"), CASES, ids=[f"{f.name}-{n}" for f, n in CASES])
def test_a_saved_state_dict_loads_and_calibrates_as_it_did(folder, name):
    kind, options = WRITER.CALIBRATORS[name]
    calibrator = Calibrator.registry[kind](**options)
    calibrator.load_state_dict(torch.load(folder / f"{name}.pt", weights_only=True))
    _check(calibrator, folder, name)
