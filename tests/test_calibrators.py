"""The contract every calibrator keeps, checked for each registered kind.

Fit on logits or a loader, calibrated probabilities, the wrapped model left untouched, bad input
named, export with parity on every deployment route, and save/load and state-dict round trips.
Each method's exactness against its own reference is tested in its own file.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from conftest import tempered_logits
from export_routes import CHECK_BATCHES, EXPORT_BATCH, MODELS, ROUTES, inputs

import torchcal
from torchcal import CalibrationWarning, Calibrator, NotFittedError
from torchcal._objectives.temperature import SoftmaxTemperatureNLL
from torchcal.calibrators import SoftmaxCalibrator
from torchcal.compare import DEFAULT_METHODS

KINDS = sorted(Calibrator.registry)


def make(kind: str, model: torch.nn.Module | None = None, **options) -> Calibrator:
    return Calibrator.registry[kind](model, **options)


def fit_quietly(calibrator: Calibrator, *args, **kwargs) -> Calibrator:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        return calibrator.fit(*args, progress=False, **kwargs)


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    return tempered_logits(3000, 5, temperature=2.0, seed=3)


@pytest.fixture(scope="module")
def fitted(data) -> dict[str, Calibrator]:
    return {kind: fit_quietly(make(kind), *data) for kind in KINDS}


def test_every_method_compared_by_default_is_registered():
    assert set(DEFAULT_METHODS) == set(KINDS)


# ------------------------------------------------------------------ fit and use
@pytest.mark.parametrize("kind", KINDS)
def test_fit_gives_probabilities_and_a_fit_result_that_improves_calibration(kind, fitted, data):
    calibrator, (logits, labels) = fitted[kind], data
    assert calibrator.is_fitted and calibrator.kind == kind
    probs = calibrator.predict_proba(logits)
    assert probs.shape == logits.shape and probs.dtype == torch.float32
    assert (probs >= 0).all() and torch.allclose(probs.sum(dim=1), torch.ones(len(probs)))
    result = calibrator.fit_result
    assert result.n_samples == len(labels)
    # The logits are twice too confident: every method reduces the ECE it is fitted on.
    assert result.ece_after < 0.5 * result.ece_before
    assert torch.allclose(torch.softmax(calibrator(logits), dim=1), probs, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32])
@pytest.mark.parametrize("kind", KINDS)
def test_labels_of_any_integer_dtype_fit_as_int64_labels(kind, dtype, fitted, data):
    logits, labels = data
    calibrator = fit_quietly(make(kind), logits, labels.to(dtype))
    for name, value in fitted[kind].fitted_tensors().items():
        assert torch.equal(calibrator.fitted_tensors()[name], value), name
    assert labels.dtype == torch.int64  # the caller's labels are left as they were


@pytest.mark.parametrize("kind", KINDS)
def test_a_loader_fit_equals_the_tensor_fit_and_leaves_the_model_untouched(kind):
    model = MODELS["mlp"][0]()
    model.train()
    model[0].weight.requires_grad_(False)
    before = copy.deepcopy(model.state_dict())
    x = inputs("mlp", 600)
    with torch.no_grad():
        logits = model.eval()(x)
    model.train()
    labels = torch.distributions.Categorical(logits=logits / 2).sample()
    loader = [(x[i : i + 100], labels[i : i + 100]) for i in range(0, 600, 100)]
    from_loader = fit_quietly(make(kind, model), loader)
    from_tensors = fit_quietly(make(kind), logits, labels)
    assert model.training and all(m.training for m in model.modules())
    assert not model[0].weight.requires_grad and model[3].weight.requires_grad
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    model.eval()
    with torch.no_grad():
        assert torch.allclose(
            from_loader.predict_proba(x), from_tensors.predict_proba(logits), atol=1e-6
        )


@pytest.mark.parametrize("kind", KINDS)
def test_dense_and_token_shapes_equal_the_flattened_fit(kind):
    logits, labels = tempered_logits(20 * 36, 4, seed=5)
    maps = logits.reshape(20, 6, 6, 4).permute(0, 3, 1, 2)  # (N, K, H, W)
    map_labels = labels.reshape(20, 6, 6)
    dense = fit_quietly(make(kind), maps, map_labels)
    flat = fit_quietly(make(kind), logits, labels)
    expected = flat.predict_proba(logits).reshape(20, 6, 6, 4).permute(0, 3, 1, 2)
    assert torch.allclose(dense.predict_proba(maps), expected, atol=1e-5)
    tokens = fit_quietly(make(kind), logits.reshape(20, 36, 4), labels.reshape(20, 36))
    assert torch.allclose(
        tokens.predict_proba(logits.reshape(20, 36, 4)).reshape(-1, 4),
        expected.permute(0, 2, 3, 1).reshape(-1, 4),
        atol=1e-5,
    )


@pytest.mark.parametrize("kind", KINDS)
def test_ignored_labels_are_left_out_of_the_fit(kind, data):
    logits, labels = data
    padded = torch.cat([logits, torch.randn(50, 5) * 10])
    padded_labels = torch.cat([labels, torch.full((50,), -100)])
    ignoring = fit_quietly(make(kind), padded, padded_labels)
    assert ignoring.fit_result.n_samples == len(labels)
    plain = fit_quietly(make(kind), logits, labels)
    assert torch.allclose(ignoring.predict_proba(logits), plain.predict_proba(logits), atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_a_fit_validates_its_rows_in_one_pass(kind, data, monkeypatch):
    """The temperature objective built to validate the rows is the one a temperature is fitted
    on (vector, matrix and Dirichlet scaling start from it, ensemble scaling mixes it in); the
    methods without a temperature (histogram, isotonic) validate the rows without building it."""
    prepare = SoftmaxTemperatureNLL._prepare
    calls = []

    def counted(objective):
        calls.append(objective)
        return prepare(objective)

    monkeypatch.setattr(SoftmaxTemperatureNLL, "_prepare", counted)
    fit_quietly(make(kind), *data)
    assert len(calls) == (0 if kind in ("histogram", "isotonic") else 1)


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("kind", KINDS)
def test_bad_input_is_named_and_the_tensors_are_untouched(kind, data):
    logits, labels = data
    saved_logits, saved_labels = logits.clone(), labels.clone()
    bad = logits.clone()
    bad[7, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        make(kind).fit(bad, labels)
    with pytest.raises(ValueError, match="label"):
        make(kind).fit(logits, torch.where(labels == 0, 9, labels))
    with pytest.raises(ValueError, match="look like probabilities"):
        make(kind).fit(torch.softmax(logits, dim=1), labels)
    with pytest.raises(ValueError):
        make(kind).fit(logits, labels[:-1])
    with pytest.raises(ValueError, match="empty"):
        make(kind).fit(logits[:0], labels[:0])
    assert torch.equal(logits, saved_logits) and torch.equal(labels, saved_labels)


@pytest.mark.parametrize("kind", KINDS)
def test_an_unfitted_calibrator_says_so(kind, tmp_path):
    calibrator = make(kind)
    assert not calibrator.is_fitted
    for use in (lambda: calibrator(torch.randn(2, 5)), calibrator.export):
        with pytest.raises(NotFittedError):
            use()
    with pytest.raises(NotFittedError):
        torchcal.save(calibrator, tmp_path / "c.safetensors")


# ------------------------------------------------------------------ export
@pytest.fixture(scope="module")
def fitted_on_mlp() -> dict[str, Calibrator]:
    model = MODELS["mlp"][0]()
    x = inputs("mlp", 600)
    with torch.no_grad():
        logits = model(x)
    labels = torch.distributions.Categorical(logits=logits / 2).sample()
    return {kind: fit_quietly(make(kind, model), logits, labels) for kind in KINDS}


@pytest.mark.parametrize("route", list(ROUTES))
@pytest.mark.parametrize("kind", KINDS)
def test_every_route_matches_eager(kind, route, fitted_on_mlp, tmp_path):
    calibrator = fitted_on_mlp[kind]
    exported = calibrator.export("probs")
    assert not list(exported.head.parameters())
    deployed = ROUTES[route](exported, inputs("mlp", EXPORT_BATCH), tmp_path)
    for batch in CHECK_BATCHES:
        x = inputs("mlp", batch)
        with torch.no_grad():
            expected = calibrator.predict_proba(x)
            got = deployed(x)
        assert got.shape == expected.shape == (batch, 5)
        assert (got - expected).abs().max().item() <= 1e-5


@pytest.mark.parametrize("kind", KINDS)
def test_the_export_is_a_snapshot(kind, data):
    logits, labels = data
    calibrator = fit_quietly(make(kind), logits, labels)
    exported = calibrator.export("logits")
    expected = calibrator(logits)
    fit_quietly(calibrator, logits[:500] * 3, labels[:500])
    assert torch.equal(exported(logits), expected)


# ------------------------------------------------------------------ save and load
@pytest.mark.parametrize("kind", KINDS)
def test_save_and_load_round_trip(kind, fitted, data, tmp_path):
    calibrator, (logits, _) = fitted[kind], data
    torchcal.save(calibrator, tmp_path / "calibration.safetensors")
    loaded = torchcal.load(tmp_path / "calibration.safetensors")
    assert type(loaded) is type(calibrator) and loaded.options() == calibrator.options()
    assert loaded.fit_result == calibrator.fit_result
    assert torch.equal(loaded.predict_proba(logits), calibrator.predict_proba(logits))


@pytest.mark.parametrize("kind", KINDS)
def test_state_dict_round_trip_into_a_fresh_calibrator(kind, fitted, data):
    calibrator, (logits, _) = fitted[kind], data
    fresh = make(kind)
    fresh.load_state_dict(calibrator.state_dict())
    assert fresh.is_fitted and fresh.fit_result == calibrator.fit_result
    assert torch.equal(fresh.predict_proba(logits), calibrator.predict_proba(logits))
    clone = copy.deepcopy(calibrator)
    assert torch.equal(clone.predict_proba(logits), calibrator.predict_proba(logits))


@pytest.mark.parametrize(
    "kind", [k for k in KINDS if issubclass(Calibrator.registry[k], SoftmaxCalibrator)]
)
def test_logits_of_the_wrong_width_are_refused(kind, fitted):
    with pytest.raises(ValueError, match="5"):
        fitted[kind](torch.randn(4, 7))


# ------------------------------------------------------------------ probabilities as inputs
@pytest.mark.parametrize("kind", KINDS)
def test_a_calibrator_of_probabilities_takes_probabilities_when_used_and_exported(kind, data):
    logits, labels = data
    probs = torch.softmax(logits, dim=1)
    of_probs = fit_quietly(make(kind, inputs="probs"), probs, labels)
    of_logits = fit_quietly(make(kind), torch.log_softmax(logits, dim=1), labels)
    expected = of_logits.predict_proba(torch.log_softmax(logits, dim=1))
    assert torch.allclose(of_probs.predict_proba(probs), expected, atol=1e-5)
    assert torch.allclose(of_probs.export("probs")(probs), expected, atol=1e-5)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        of_probs(logits)


def test_a_sigmoid_scaler_exports_sigmoid_probabilities():
    logits = torch.randn(400) * 4
    labels = torch.bernoulli(torch.sigmoid(logits / 2))
    scaler = torchcal.TemperatureScaler().fit(logits, labels, progress=False)
    assert torch.allclose(scaler.export("probs")(logits), scaler.predict_proba(logits))
