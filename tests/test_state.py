"""One state path for every calibrator: options from the constructor's signature, one fitted-state
layout, fitted buffers named with a trailing underscore and read through properties."""

from __future__ import annotations

import inspect
import json
import typing
import warnings

import pytest
import safetensors
import torch
from conftest import tempered_logits

import torchcal
from torchcal import CalibrationWarning, Calibrator, NotFittedError
from torchcal.calibrators._state import read_state
from torchcal.io.state import FORMAT_VERSION

KINDS = sorted(Calibrator.registry)
STATE_KEYS = {"torchcal_version", "fitted", "fit_results", "activation", "class_dim", "n_classes"}


def fitted(kind: str) -> Calibrator:
    logits, labels = tempered_logits(300, 4, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        return Calibrator.registry[kind]().fit(logits, labels, progress=False)


@pytest.mark.parametrize("kind", KINDS)
def test_options_are_the_constructor_signature(kind):
    cls = Calibrator.registry[kind]
    options = cls().options()
    parameters = set(inspect.signature(cls.__init__).parameters) - {"self", "model"}
    assert set(options) == parameters
    assert cls(**options).options() == options
    assert not hasattr(cls, "_hyperparameters")


@pytest.mark.parametrize("kind", KINDS)
def test_string_options_are_literal_types(kind):
    hints = typing.get_type_hints(Calibrator.registry[kind].__init__)
    for name in ("activation", "inputs", "method", "loss"):
        if name in hints:
            assert typing.get_origin(hints[name]) is typing.Literal, name


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_writes_one_state_layout_and_its_buffers(kind, tmp_path):
    calibrator = fitted(kind)
    state = calibrator.get_extra_state()
    assert set(state) == STATE_KEYS and state["fitted"] is True
    assert len(state["fit_results"]) == 1 and state["fit_results"][0]["calibrator"] == kind
    names = [name for name, _ in calibrator.named_buffers()]
    assert all(name.endswith("_") for name in names)
    assert list(calibrator.fitted_tensors()) == names
    path = tmp_path / "saved.safetensors"
    torchcal.save(calibrator, path)
    with safetensors.safe_open(str(path), framework="pt") as file:
        assert list(file.keys()) == sorted(names)
        metadata = file.metadata()
    assert metadata["format_version"] == str(FORMAT_VERSION) == "2"
    assert json.loads(metadata["fit_result"]) == json.loads(json.dumps(state))


@pytest.mark.parametrize(
    ("kind", "name", "buffer"),
    [
        ("vector", "weight", "weight_"),
        ("matrix", "bias", "bias_"),
        ("histogram", "bin_values", "bin_values_"),
        ("isotonic", "thresholds", "thresholds_"),
        ("isotonic", "values", "values_"),
        ("temperature", "temperatures", "temperature_"),
    ],
)
def test_fitted_values_are_read_as_copies_without_the_underscore(kind, name, buffer):
    with pytest.raises(NotFittedError, match="not fitted yet"):
        getattr(Calibrator.registry[kind](), name)
    calibrator = fitted(kind)
    value = getattr(calibrator, name)
    assert torch.equal(value, getattr(calibrator, buffer))
    value.add_(1.0)  # a copy: the fitted value stays
    assert not torch.equal(value, getattr(calibrator, buffer))


def test_every_layout_written_so_far_reads_the_same():
    record = fitted("vector").fit_result.to_dict()
    current = {"fitted": True, "fit_results": [record], "class_dim": -1, "n_classes": 4}
    softmax_v1 = {"fitted": True, "fit_result": record, "class_dim": -1, "n_classes": 4}
    assert read_state(softmax_v1, "vector") == read_state(current, "vector")
    scaler = fitted("temperature").fit_result.to_dict()
    temperature_v1 = {"fit_results": [scaler], "activation": "softmax", "class_dim": -1}
    bare = read_state(scaler, "temperature")
    assert bare.fit_results == read_state(temperature_v1, "temperature").fit_results
    assert bare.fitted is None  # decided by the temperature: NaN until fitted
