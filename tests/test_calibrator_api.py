"""Python API frictions: options passed to fit, numpy inputs, and what a calibrator's repr shows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torchcal import Calibrator, TemperatureScaler

KINDS = sorted(Calibrator.registry)


@pytest.fixture(scope="module")
def data():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(400, 4, generator=generator) * 3
    labels = torch.distributions.Categorical(logits=logits / 2).sample()
    return logits, labels


@pytest.mark.parametrize("kind", KINDS)
def test_a_constructor_option_given_to_fit_says_where_it_goes(kind, data):
    cls = Calibrator.registry[kind]
    calibrator = cls()
    with pytest.raises(TypeError) as caught:
        calibrator.fit(*data, inputs="probs")
    message = str(caught.value)
    assert "inputs is a" in message and "constructor option, not a fit argument" in message
    assert f"{cls.__name__}(inputs='probs')" in message
    assert not calibrator.is_fitted
    with pytest.raises(TypeError, match="unexpected keyword argument 'bogus'"):
        calibrator.fit(*data, bogus=1)  # not an option at all: Python's own message


@pytest.mark.parametrize("kind", KINDS)
def test_numpy_probabilities_fit_and_predict_as_tensors_do(kind, data):
    logits, labels = data
    probs = torch.softmax(logits, dim=1)
    cls = Calibrator.registry[kind]
    from_tensors = cls(inputs="probs").fit(probs, labels, progress=False)
    from_numpy = cls(inputs="probs").fit(probs.numpy(), labels.numpy(), progress=False)
    expected = from_tensors.predict_proba(probs)
    assert torch.equal(from_numpy.predict_proba(probs.numpy()), expected)
    assert torch.equal(from_numpy.predict_proba(probs), expected)
    read_only = probs.numpy().copy()
    read_only.setflags(write=False)  # e.g. a memory map opened with mmap_mode="r"
    assert torch.equal(from_tensors.predict_proba(read_only), expected)
    numpy_logits = cls().fit(logits.numpy(), labels.numpy(), progress=False)
    reference = cls().fit(logits, labels, progress=False).predict_proba(logits)
    assert torch.equal(numpy_logits.predict_proba(logits.numpy()), reference)


@pytest.mark.parametrize("kind", KINDS)
def test_repr_shows_fitted_values_and_changed_options(kind, data):
    cls = Calibrator.registry[kind]
    name = cls.__name__
    assert repr(cls()) == f"{name}()"
    assert repr(cls(n_bins=10)) == f"{name}(n_bins=10)"
    fitted = cls().fit(*data, progress=False)
    if cls is TemperatureScaler:
        assert repr(fitted) == f"TemperatureScaler(T={fitted.temperature:.5g})"
    else:
        assert repr(fitted) == f"{name}(K=4, fitted)"


def test_temperature_repr_formats():
    logits = torch.randn(300, 3, generator=torch.Generator().manual_seed(1)) * 2
    targets = (torch.rand(300, 3, generator=torch.Generator().manual_seed(2)) < 0.4).float()
    scaler = TemperatureScaler(activation="sigmoid", per_class=True, temperature_bounds=(0.01, 50))
    assert repr(scaler) == (
        "TemperatureScaler(activation='sigmoid', per_class=True, temperature_bounds=(0.01, 50.0))"
    )
    scaler.fit(logits, targets, progress=False)
    shown = ", ".join(f"{float(t):.5g}" for t in scaler.temperatures)
    assert repr(scaler).startswith(f"TemperatureScaler(T=({shown}), activation='sigmoid'")
    wrapped = TemperatureScaler(torch.nn.Linear(2, 3))
    assert repr(wrapped).splitlines()[1].strip().startswith("(model): Linear")
    assert np.isfinite(scaler.temperatures.numpy()).all()
