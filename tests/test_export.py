"""Exported calibrated models: a snapshot, plain tensors, the same outputs on every route."""

from __future__ import annotations

import pytest
import torch
from conftest import requires_cuda, tempered_logits
from export_routes import CHECK_BATCHES, EXPORT_BATCH, MODELS, ROUTES, inputs
from torch import nn

from torchcal import CalibratedModel, NotFittedError, TemperatureScaler
from torchcal.export import TemperatureHead


def fitted_scaler(model_name: str) -> TemperatureScaler:
    """A scaler wrapping ``model_name``, fitted on labels drawn at T = 2 from its logits."""
    model = MODELS[model_name][0]()
    x = inputs(model_name, 300)
    with torch.no_grad():
        logits = model(x)
    labels = torch.distributions.Categorical(logits=logits / 2).sample()
    return TemperatureScaler(model).fit(logits, labels, progress=False)


@pytest.fixture(scope="module")
def scalers() -> dict[str, TemperatureScaler]:
    torch.manual_seed(0)
    return {name: fitted_scaler(name) for name in MODELS}


# ------------------------------------------------------------------ every route matches eager
@pytest.mark.parametrize("output", ["logits", "probs"])
@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("route", list(ROUTES))
def test_each_route_matches_eager_at_new_batch_sizes(scalers, route, model_name, output, tmp_path):
    scaler = scalers[model_name]
    exported = scaler.export(output)
    deployed = ROUTES[route](exported, inputs(model_name, EXPORT_BATCH), tmp_path)
    for batch in CHECK_BATCHES:
        x = inputs(model_name, batch)
        with torch.no_grad():
            eager = scaler(x) if output == "logits" else scaler.predict_proba(x)
            original_logits = scaler.model(x)
            got = deployed(x)
        assert got.shape == eager.shape == (batch, 5)
        assert (got - eager).abs().max().item() <= 1e-5
        # Dividing by T > 0 never changes the predicted class, on any route.
        assert torch.equal(got.argmax(dim=1), original_logits.argmax(dim=1))


# ------------------------------------------------------------------ what the export is
def test_export_is_model_then_a_temperature_buffer_and_nothing_else(scalers):
    scaler = scalers["mlp"]
    exported = scaler.export("probs")
    assert type(exported) is CalibratedModel
    assert exported.model is scaler.model  # shared, not copied
    assert isinstance(exported.head, TemperatureHead)
    assert dict(exported.head.named_buffers()) == {"temperature": exported.head.temperature}
    assert list(exported.head.parameters()) == []
    assert float(exported.head.temperature) == scaler.temperature
    model_parameters = {id(p) for p in scaler.model.parameters()}
    assert {id(p) for p in exported.parameters()} == model_parameters
    assert set(exported.state_dict()) == {f"model.{k}" for k in scaler.model.state_dict()} | {
        "head.temperature"
    }
    assert not hasattr(exported, "fit") and not hasattr(exported, "fit_result")
    assert not exported.training  # the wrapped model is in eval mode


def test_export_is_a_snapshot_that_refitting_leaves_alone():
    logits, labels = tempered_logits(1_000, 6, 2.0, seed=1)
    scaler = TemperatureScaler().fit(logits, labels, progress=False)
    exported = scaler.export()
    before = exported(logits)
    assert exported.head.temperature.data_ptr() != scaler.temperature_.data_ptr()
    scaler.fit(*tempered_logits(1_000, 6, 0.5, seed=2), progress=False)
    assert scaler.temperature < 1.0
    torch.testing.assert_close(exported(logits), before, rtol=0, atol=0)


def test_logits_only_export_maps_logits_to_calibrated_logits_and_probabilities():
    logits, labels = tempered_logits(1_000, 6, 2.0, seed=3)
    scaler = TemperatureScaler().fit(logits, labels, progress=False)
    as_logits, as_probs = scaler.export("logits"), scaler.export("probs")
    assert not as_logits.training and not as_probs.training
    assert list(as_logits.parameters()) == []
    torch.testing.assert_close(as_logits(logits), logits / scaler.temperature, rtol=0, atol=0)
    torch.testing.assert_close(as_probs(logits), scaler.predict_proba(logits), rtol=0, atol=0)
    assert torch.equal(as_probs(logits).argmax(dim=1), logits.argmax(dim=1))


def test_the_exported_graph_is_only_the_calibration_arithmetic():
    logits, labels = tempered_logits(200, 4, 2.0, seed=4)
    scaler = TemperatureScaler().fit(logits, labels, progress=False)
    for output, expected in [("logits", {"div"}), ("probs", {"div", "softmax"})]:
        program = torch.export.export(scaler.export(output), (logits,))
        ops = {
            node.target.__name__.split(".")[0]
            for node in program.graph.nodes
            if node.op == "call_function"
        }
        assert ops == expected


def test_exporting_an_unfitted_scaler_raises():
    with pytest.raises(NotFittedError, match=r"call \.fit"):
        TemperatureScaler(nn.Linear(3, 2)).export()


def test_bad_export_arguments_are_named():
    scaler = TemperatureScaler().fit(*tempered_logits(200, 3, seed=5), progress=False)
    with pytest.raises(ValueError, match=r"output must be one of 'logits', 'probs'; got 'proba'"):
        scaler.export("proba")
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module or None, got str"):
        CalibratedModel("resnet", TemperatureHead(torch.tensor(2.0)))


def test_a_model_in_training_mode_exports_in_training_mode_and_keeps_it():
    model = nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.5))
    scaler = TemperatureScaler(model).fit(*tempered_logits(200, 3, seed=6), progress=False)
    exported = scaler.export()
    assert exported.training and model.training
    exported.eval()  # deploys in eval mode; the shared model follows, as documented
    assert not model.training


# ------------------------------------------------------------------ torch.compile
def test_torch_compile_of_the_scaler_matches_eager():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    x = torch.randn(64, 8)
    with torch.no_grad():
        labels = torch.distributions.Categorical(logits=model(x) / 2).sample()
    scaler = TemperatureScaler(model).fit(model(x).detach(), labels, progress=False)
    compiled = torch.compile(scaler)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), scaler(x), rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------ devices
@requires_cuda
def test_export_follows_the_scaler_to_cuda():
    scaler = TemperatureScaler().fit(*tempered_logits(500, 4, seed=7), progress=False).cuda()
    logits = torch.randn(10, 4, device="cuda")
    exported = scaler.export("probs")
    assert exported.head.temperature.device.type == "cuda"
    torch.testing.assert_close(exported(logits), scaler.predict_proba(logits))


@pytest.mark.parametrize("kind", ["temperature", "vector", "matrix"])
@pytest.mark.parametrize(
    ("shape", "label_shape"),
    [((40, 4, 3, 2), (40, 3, 2)), ((6, 7, 5), (6, 7))],  # segmentation maps; token logits (B, L, V)
)
def test_the_export_calibrates_and_normalises_over_the_fitted_class_dimension(
    kind, shape, label_shape
):
    import warnings

    from torchcal import CalibrationWarning, Calibrator

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(*shape, generator=generator) * 3
    n_classes = shape[1] if len(shape) == 4 else shape[-1]
    labels = torch.randint(0, n_classes, label_shape, generator=generator)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        calibrator = Calibrator.registry[kind]().fit(logits, labels, progress=False)
    probs = calibrator.export("probs")(logits)
    assert torch.allclose(probs, calibrator.predict_proba(logits), atol=1e-6)
    class_dim = 1 if len(shape) == 4 else -1
    assert torch.allclose(probs.sum(dim=class_dim), torch.ones(label_shape), atol=1e-6)
    assert torch.allclose(calibrator.export("logits")(logits), calibrator(logits), atol=1e-6)
