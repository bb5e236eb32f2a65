"""EnsembleTemperatureScaler: T from temperature scaling, weights against scipy SLSQP in float64."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.optimize
import torch
from conftest import requires_cuda, tempered_logits
from hypothesis import example, given, settings
from hypothesis import strategies as st

from torchcal import CalibrationWarning, TemperatureScaler
from torchcal._optim.simplex import frank_wolfe_gap, minimise_quadratic_on_simplex
from torchcal.calibrators.ensemble import (
    EnsembleTemperatureScaler,
    ensemble_temperature_calibrate,
    fit_weights,
)


def mixture_problem(n: int, k: int, seed: int, weights=(0.5, 0.3, 0.2), temperature=3.0):
    """Logits ``4 randn`` with labels drawn from a known ensemble: an interior optimum."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=generator) * 4
    z = logits.double()
    w1, w2, w3 = weights
    probs = w1 * torch.softmax(z / temperature, 1) + w2 * torch.softmax(z, 1) + w3 / k
    return logits, torch.multinomial(probs, 1, generator=generator).squeeze(1)


def numpy_components(logits: torch.Tensor, temperature: float) -> list[np.ndarray]:
    """softmax(z/T), softmax(z) and the uniform in float64 numpy, written independently."""

    def softmax(x: np.ndarray) -> np.ndarray:
        e = np.exp(x - x.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    z = logits.double().numpy()
    return [softmax(z / temperature), softmax(z), np.full(z.shape, 1.0 / z.shape[1])]


def numpy_objective(loss: str, components, labels: np.ndarray):
    """The weight objective in numpy: Brier score (mean over rows of the sum over classes), NLL."""
    onehot = np.eye(components[0].shape[1])[labels]

    def objective(w: np.ndarray) -> float:
        p = w[0] * components[0] + w[1] * components[1] + w[2] * components[2]
        if loss == "mse":
            return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))
        return float(-np.mean(np.log(p[np.arange(len(labels)), labels])))

    return objective


def slsqp_weights(objective) -> scipy.optimize.OptimizeResult:
    """The reference: SLSQP on the simplex, as the authors' code fits the weights."""
    result = scipy.optimize.minimize(
        objective,
        np.array([1.0, 0.0, 0.0]),
        method="SLSQP",
        bounds=[(0.0, 1.0)] * 3,
        constraints={"type": "eq", "fun": lambda w: w.sum() - 1.0},
        options={"ftol": 1e-15, "maxiter": 500},
    )
    assert result.success
    return result


# ------------------------------------------------------------------ exactness
@pytest.mark.parametrize("loss", ["mse", "nll"])
@pytest.mark.parametrize(
    ("problem", "interior"),
    [
        (lambda: mixture_problem(5_000, 10, seed=0), True),
        # labels from softmax(z / 2): temperature scaling alone is right, the optimum is on a face
        (lambda: tempered_logits(5_000, 10, 2.0, seed=1), False),
    ],
)
def test_weights_match_scipy_slsqp_in_float64(problem, interior, loss):
    logits, labels = problem()
    temperature = 2.5
    weights, _, converged = fit_weights(logits, labels, temperature, loss, max_iter=100)
    objective = numpy_objective(loss, numpy_components(logits, temperature), labels.numpy())
    reference = slsqp_weights(objective)
    assert converged
    # measured: weights within 1e-7 of SLSQP's, objectives equal to 1e-14
    np.testing.assert_allclose(weights, reference.x, atol=1e-6)
    assert objective(weights) <= reference.fun + 1e-12
    assert objective(weights) == pytest.approx(reference.fun, rel=1e-10)
    assert weights.sum() == pytest.approx(1.0, abs=1e-12) and (weights >= 0).all()
    assert bool((weights > 1e-6).all()) == interior


@pytest.mark.parametrize("loss", ["mse", "nll"])
def test_the_fitted_calibrator_agrees_with_scipy_and_temperature_scaling(loss):
    logits, labels = mixture_problem(4_000, 8, seed=2)
    ets = EnsembleTemperatureScaler(loss=loss).fit(logits, labels, progress=False)
    scaler = TemperatureScaler().fit(logits, labels, progress=False)
    assert ets.temperature == scaler.temperature  # the same solver with the same defaults
    components = numpy_components(logits, ets.temperature)
    objective = numpy_objective(loss, components, labels.numpy())
    reference = slsqp_weights(objective)
    np.testing.assert_allclose(ets.weights, reference.x, atol=1e-6)
    # the calibrated probabilities are the mixture, computed independently
    w1, w2, w3 = ets.weights
    mixture = w1 * components[0] + w2 * components[1] + w3 * components[2]
    np.testing.assert_allclose(ets.predict_proba(logits).double().numpy(), mixture, atol=1e-6)
    result = ets.fit_result
    assert result.converged and result.calibrator == "ensemble_temperature"
    assert result.n_parameters == 4 and result.n_samples == 4_000
    assert result.nll_after < result.nll_before and result.ece_after < result.ece_before
    if loss == "nll":
        assert result.nll_after == pytest.approx(objective(np.array(ets.weights)), abs=1e-5)


def test_the_paper_default_is_the_brier_score_and_each_loss_wins_its_own_objective():
    logits, labels = mixture_problem(4_000, 8, seed=3)
    assert EnsembleTemperatureScaler().loss == "mse"
    components = numpy_components(logits, 2.0)
    weights = {loss: fit_weights(logits, labels, 2.0, loss, 100)[0] for loss in ("mse", "nll")}
    for loss in ("mse", "nll"):
        objective = numpy_objective(loss, components, labels.numpy())
        other = weights["nll" if loss == "mse" else "mse"]
        assert objective(weights[loss]) <= objective(other)


# ------------------------------------------------------------------ the simplex solver
@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(-3, 3), min_size=9, max_size=9),
    st.lists(st.floats(-3, 3), min_size=3, max_size=3),
    st.integers(1, 3),
)
# two face minimisers whose values differ by less than their rounding: only the gap tells them apart
@example(entries=[0.0, 1e-08, -1.0, 0, 0, 0, 0, 0, 0], linear=[0.0, 0.0, -1.0], rank=1)
def test_quadratic_on_simplex_meets_the_kkt_conditions(entries, linear, rank):
    factor = np.array(entries).reshape(3, 3)[:rank]
    hessian = factor.T @ factor  # positive semi-definite, singular for rank < 3
    linear = np.array(linear)
    weights = minimise_quadratic_on_simplex(hessian, linear)
    assert weights.sum() == pytest.approx(1.0, abs=1e-12) and (weights >= 0).all()
    gap = frank_wolfe_gap(hessian @ weights + linear, weights)
    assert gap <= 1e-9 * (1 + np.abs(hessian).max() + np.abs(linear).max())


# ------------------------------------------------------------------ behaviour
def test_the_predicted_class_never_changes_and_outputs_are_log_probabilities():
    logits, labels = mixture_problem(3_000, 6, seed=4)
    ets = EnsembleTemperatureScaler().fit(logits, labels, progress=False)
    test = torch.randn(500, 6) * 6
    calibrated = ets(test)
    assert torch.equal(calibrated.argmax(dim=1), test.argmax(dim=1))
    assert torch.allclose(calibrated.exp().sum(dim=1), torch.ones(500), atol=1e-6)


@pytest.mark.parametrize("weights", [(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.3, 0.7, 0.0)])
def test_zero_weights_and_extreme_logits_stay_finite_and_exact(weights):
    logits = torch.tensor([[0.0, 200.0, -200.0], [1.0, 2.0, 3.0]])
    out = ensemble_temperature_calibrate(logits, torch.tensor(2.0), torch.tensor(weights))
    assert bool(torch.isfinite(out).all())
    w1, w2, _ = weights
    z = logits.double()
    expected = w1 * torch.softmax(z / 2, 1) + w2 * torch.softmax(z, 1)
    assert torch.allclose(out.double().exp(), expected, atol=1e-7)
    # computed in log space: the entry whose probability underflows keeps its log-probability
    if w1 > 0:
        assert float(out[0, 2]) == pytest.approx(np.log(w1) - 200.0, abs=1e-3)


def test_half_precision_is_computed_in_float32():
    logits, labels = mixture_problem(2_000, 5, seed=5)
    ets = EnsembleTemperatureScaler().fit(logits.half(), labels, progress=False)
    out = ets(logits.half())
    assert out.dtype == torch.float32
    assert ets.temperature == pytest.approx(
        EnsembleTemperatureScaler().fit(logits.half().float(), labels, progress=False).temperature
    )


def test_a_temperature_at_its_bound_warns():
    logits = torch.randn(300, 4)
    labels = torch.randint(0, 4, (300,), generator=torch.Generator().manual_seed(0))
    with pytest.warns(CalibrationWarning, match="beyond the upper bound"):
        ets = EnsembleTemperatureScaler(temperature_bounds=(0.5, 2.0)).fit(
            logits, labels, progress=False
        )
    assert ets.temperature == pytest.approx(2.0)


def test_the_head_is_a_snapshot_that_torchscript_compiles():
    logits, labels = mixture_problem(2_000, 5, seed=7)
    ets = EnsembleTemperatureScaler().fit(logits, labels, progress=False)
    head = ets.head()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated in torch 2.13
        scripted = torch.jit.script(head)
    assert torch.equal(scripted(logits), ets(logits))
    assert [name for name, _ in head.named_buffers()] == ["temperature", "weights"]
    ets.fit(logits * 2, labels, progress=False)  # refitting leaves the head as it was
    assert torch.equal(head(logits), scripted(logits))


def test_options_rebuild_the_calibrator_and_bad_options_are_rejected():
    ets = EnsembleTemperatureScaler(loss="nll", temperature_bounds=(0.1, 10.0), tol=1e-7)
    options = ets.options()
    assert options["loss"] == "nll" and options["temperature_bounds"] == [0.1, 10.0]
    assert EnsembleTemperatureScaler(**options).options() == options
    with pytest.raises(ValueError, match="loss must be one of 'mse', 'nll'"):
        EnsembleTemperatureScaler(loss="brier")
    with pytest.raises(ValueError, match="low < high"):
        EnsembleTemperatureScaler(temperature_bounds=(2.0, 1.0))
    with pytest.raises(ValueError, match="max_iter must be >= 1"):
        EnsembleTemperatureScaler(max_iter=0)


@requires_cuda
def test_fits_and_applies_on_cuda_as_on_cpu():
    logits, labels = mixture_problem(3_000, 6, seed=6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        cpu = EnsembleTemperatureScaler().fit(logits, labels, progress=False)
        cuda = EnsembleTemperatureScaler().to("cuda").fit(logits.cuda(), labels.cuda())
    assert cuda.weights_.device.type == "cuda"
    np.testing.assert_allclose(cuda.weights, cpu.weights, atol=1e-6)
    assert torch.allclose(cuda(logits.cuda()).cpu(), cpu(logits), atol=1e-5)
