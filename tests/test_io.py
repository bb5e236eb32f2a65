"""torchcal.save / torchcal.load: a small model-free file that round-trips a fitted scaler."""

from __future__ import annotations

import json
import struct
import sys

import pytest
import safetensors.torch
import torch
from conftest import tempered_logits
from torch import nn

import torchcal
from torchcal import NotFittedError, TemperatureScaler
from torchcal.io.state import FORMAT_VERSION


@pytest.fixture
def scaler() -> TemperatureScaler:
    logits, labels = tempered_logits(1_000, 6, 1.7, seed=11)
    return TemperatureScaler(method="newton", tol=1e-7, n_bins=10).fit(
        logits, labels, progress=False
    )


def test_round_trip_keeps_temperature_fit_result_and_options(scaler, tmp_path):
    path = tmp_path / "calibration.safetensors"
    torchcal.save(scaler, path)
    loaded = torchcal.load(path)
    assert loaded.is_fitted and loaded.model is None
    assert loaded.temperature == scaler.temperature  # bit for bit
    assert loaded.fit_result == scaler.fit_result
    assert (loaded.method, loaded.tol, loaded.n_bins) == ("newton", 1e-7, 10)
    assert loaded.temperature_bounds == scaler.temperature_bounds
    assert path.stat().st_size < 2_000


def test_the_file_holds_one_tensor_and_json_metadata_but_no_model(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(1_000, 6)
    logits, labels = tempered_logits(500, 6, 2.0, seed=12)
    scaler = TemperatureScaler(model).fit(logits, labels, progress=False)
    path = tmp_path / "calibration.safetensors"
    torchcal.save(scaler, path)
    assert path.stat().st_size < 2_000  # the 6000 weights are not in it
    with safetensors.safe_open(str(path), framework="pt") as file:
        assert list(file.keys()) == ["temperature_"]
        metadata = file.metadata()
    assert metadata["format"] == "torchcal"
    assert metadata["format_version"] == str(FORMAT_VERSION)
    assert metadata["torchcal_version"] == torchcal.__version__
    assert metadata["calibrator"] == "temperature"
    assert (
        json.loads(metadata["fit_result"])["fit_results"][0]["temperature"]
        == scaler.fit_result.temperature
    )
    loaded = torchcal.load(path, model=model)
    assert loaded.model is model
    x = torch.randn(5, 1_000)
    torch.testing.assert_close(loaded(x), scaler(x), rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["temperature", "dirichlet"])
def test_the_same_calibrator_saves_to_the_same_bytes_every_time(tmp_path, kind):
    """safetensors writes its metadata in the order of a hash map seeded afresh for every save
    (twenty saves of one dict gave twenty different headers); the files are made canonical
    (metadata sorted), so equal calibrators give equal files."""
    logits, labels = tempered_logits(300, 5, 1.5, seed=3)
    calibrator = torchcal.Calibrator.registry[kind]().fit(logits, labels, progress=False)
    paths = [tmp_path / f"{number}.safetensors" for number in range(10)]
    for path in paths:
        torchcal.save(calibrator, path)
    first = paths[0].read_bytes()
    assert all(path.read_bytes() == first for path in paths[1:])
    (length,) = struct.unpack("<Q", first[:8])
    header = json.loads(first[8 : 8 + length])
    assert next(iter(header)) == "__metadata__"
    assert list(header["__metadata__"]) == sorted(header["__metadata__"])
    with safetensors.safe_open(str(paths[0]), framework="pt") as file:  # readable as written
        assert file.metadata()["calibrator"] == kind
    assert torchcal.load(paths[0]).kind == kind


def test_a_scaler_loaded_from_a_state_dict_without_fit_result_saves_and_loads(tmp_path):
    fresh = TemperatureScaler()
    fresh.load_state_dict({"temperature_": torch.tensor(1.5)}, strict=False)
    torchcal.save(fresh, tmp_path / "t.safetensors")
    loaded = torchcal.load(tmp_path / "t.safetensors")
    assert loaded.temperature == 1.5 and loaded.fit_result is None


def test_an_unfitted_scaler_cannot_be_saved(tmp_path):
    with pytest.raises(NotFittedError):
        torchcal.save(TemperatureScaler(), tmp_path / "t.safetensors")
    with pytest.raises(TypeError, match=r"save expects a torchcal calibrator .*got Linear"):
        torchcal.save(nn.Linear(2, 2), tmp_path / "t.safetensors")


def test_a_newer_format_version_names_both_versions(scaler, tmp_path):
    path = tmp_path / "future.safetensors"
    torchcal.save(scaler, path)
    with safetensors.safe_open(str(path), framework="pt") as file:
        metadata, tensors = file.metadata(), {k: file.get_tensor(k) for k in file.keys()}  # noqa: SIM118
    metadata.update(format_version=str(FORMAT_VERSION + 1), torchcal_version="9.0.0")
    safetensors.torch.save_file(tensors, str(path), metadata=metadata)
    message = (
        rf"format version {FORMAT_VERSION + 1} \(written by torchcal 9\.0\.0\), but this "
        rf"torchcal {torchcal.__version__} reads format versions up to {FORMAT_VERSION}"
    )
    with pytest.raises(ValueError, match=message):
        torchcal.load(path)


def test_files_that_are_not_torchcal_files_are_refused(tmp_path):
    garbage = tmp_path / "notes.txt"
    garbage.write_text("temperature = 2")
    with pytest.raises(
        ValueError, match="is not a torchcal file: it cannot be read as safetensors"
    ):
        torchcal.load(garbage)
    weights = tmp_path / "weights.safetensors"
    safetensors.torch.save_file({"temperature": torch.tensor(2.0)}, str(weights))
    with pytest.raises(ValueError, match="is not a torchcal file: its header has no torchcal"):
        torchcal.load(weights)
    with pytest.raises(ValueError, match="is not a torchcal file"):
        torchcal.load(tmp_path / "missing.safetensors")


def saved_as_kind(scaler: TemperatureScaler, path, kind: str):
    """Save ``scaler``, then relabel the file as a ``kind`` calibrator with a (3, 3) weight."""
    torchcal.save(scaler, path)
    with safetensors.safe_open(str(path), framework="pt") as file:
        metadata = file.metadata()
    safetensors.torch.save_file(
        {"weight": torch.eye(3)}, str(path), metadata={**metadata, "calibrator": kind}
    )
    return path


def test_an_unknown_calibrator_kind_is_named(scaler, tmp_path):
    path = saved_as_kind(scaler, tmp_path / "bbq.safetensors", "bbq")
    with pytest.raises(ValueError, match="calibrator of kind 'bbq'"):
        torchcal.load(path)


def test_without_safetensors_the_error_says_what_to_install(scaler, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(ImportError, match=r"need the safetensors package: pip install safetensors"):
        torchcal.save(scaler, tmp_path / "t.safetensors")


def test_per_class_and_shape_options_round_trip(tmp_path):
    logits = torch.randn(400, 3) * 3
    targets = torch.bernoulli(torch.sigmoid(logits / 2)).float()
    scaler = torchcal.TemperatureScaler(activation="sigmoid", per_class=True)
    scaler.fit(logits, targets, progress=False)
    torchcal.save(scaler, tmp_path / "multi.safetensors")
    loaded = torchcal.load(tmp_path / "multi.safetensors")
    torch.testing.assert_close(loaded.temperatures, scaler.temperatures)
    assert loaded.fit_result == scaler.fit_result
    torch.testing.assert_close(loaded.predict_proba(logits), scaler.predict_proba(logits))


def test_options_that_do_not_fit_the_kind_are_named(scaler, tmp_path):
    path = saved_as_kind(scaler, tmp_path / "mixed.safetensors", "matrix")
    with pytest.raises(ValueError, match=r"'matrix' options this torchcal .* does not accept"):
        torchcal.load(path)
