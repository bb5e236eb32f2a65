"""TemperatureScaler: exactness against scipy, properties, degenerate data, model safety."""

from __future__ import annotations

import copy
import functools
import io
import math
import warnings

import pytest
import torch
from conftest import (
    newton_temperature,
    numpy_nll,
    requires_cuda,
    scipy_temperature,
    tempered_logits,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from torchcal import CalibrationWarning, NotFittedError, TemperatureScaler
from torchcal._optim import temperature as _solver
from torchcal.metrics import expected_calibration_error


def fit(logits, labels, **options):
    return TemperatureScaler(**options).fit(logits, labels, progress=False)


def fit_quietly(logits, labels, **options):
    """``fit`` with CalibrationWarnings silenced, for property tests that meet bounds by chance."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        return fit(logits, labels, **options)


# ------------------------------------------------------------------ exactness against scipy
PROBLEMS = [(10_000, 10, 2.0), (10_000, 100, 2.0), (50_000, 1_000, 2.0), (5_000, 10, 0.6)]


@functools.lru_cache(maxsize=1)  # the methods of one problem run one after the other
def optimum_problem(n: int, k: int, temperature: float):
    """Logits, labels, their float64 optimum T* and their NLL at T = 1 (numpy)."""
    logits, labels = tempered_logits(n, k, temperature, seed=n + k)
    reference = newton_temperature(logits, labels)
    return logits, labels, reference, numpy_nll(logits.numpy(), labels.numpy(), 1.0)


@pytest.mark.parametrize(("n", "k", "temperature"), [PROBLEMS[1], PROBLEMS[3]])
def test_the_newton_reference_is_scipys_optimum(n, k, temperature):
    logits, labels, reference, _ = optimum_problem(n, k, temperature)
    # scipy's search compares NLL values, which pins a flat minimum down to about 1e-8 only
    assert reference == pytest.approx(scipy_temperature(logits, labels), rel=1e-7)


@pytest.mark.parametrize("method", ["lbfgs", "newton"])
@pytest.mark.parametrize(("n", "k", "temperature"), PROBLEMS)
def test_fit_lands_on_the_float64_optimum(n, k, temperature, method):
    logits, labels, reference, nll_at_one = optimum_problem(n, k, temperature)
    scaler = fit(logits, labels, method=method)
    assert abs(scaler.temperature / reference - 1) <= 1e-5
    result = scaler.fit_result
    assert result.converged and result.bound is None and result.solver == method
    assert result.n_samples == n
    assert result.nll_after <= result.nll_before
    assert result.nll_after == pytest.approx(
        numpy_nll(logits.numpy(), labels.numpy(), scaler.temperature), rel=1e-6
    )
    assert result.nll_before == pytest.approx(nll_at_one, rel=1e-6)


def test_fit_result_ece_matches_the_metric_on_probabilities():
    logits, labels = tempered_logits(4_000, 10, 2.5, seed=3)
    result = fit(logits, labels).fit_result
    before = expected_calibration_error(torch.softmax(logits.double(), 1), labels)
    after = expected_calibration_error(
        torch.softmax(logits.double() / result.temperature, 1), labels
    )
    assert result.ece_before == pytest.approx(float(before), abs=1e-6)
    assert result.ece_after == pytest.approx(float(after), abs=1e-6)
    assert result.ece_after < result.ece_before


def test_fit_counts_its_passes_over_the_data():
    logits, labels = tempered_logits(50_000, 100, 2.0, seed=1)
    result = fit(logits, labels).fit_result
    # one validating pass (which also reports T = 1), the warm start's Taylor step on all rows
    # (its steps on a 1/16 subsample are not whole passes) and the solver's own evaluations, the
    # first of them the warm start's last, reused without a pass
    assert result.data_passes == 2 + result.function_evaluations
    assert 1 <= result.function_evaluations <= 6


@pytest.mark.parametrize("method", ["lbfgs", "newton"])
@pytest.mark.parametrize(
    ("n", "k", "temperature", "data_passes"),
    [(3_000, 10, 2.0, 3), (10_000, 10, 0.7, 4), (20_000, 100, 2.0, 3), (40_000, 40, 5.0, 3)],
)
def test_the_warm_start_lands_so_close_that_the_solver_only_verifies(
    n, k, temperature, data_passes, method
):
    logits, labels = tempered_logits(n, k, temperature, seed=n + k)
    reference = scipy_temperature(logits, labels)
    result = fit(logits, labels, method=method).fit_result
    assert abs(result.temperature / reference - 1) <= 2e-7
    assert result.converged and result.function_evaluations == 1
    assert result.iterations == (0 if method == "lbfgs" else 1)
    # without a subsample (fewer than 2**20 logits) the Taylor steps on all rows start from the
    # validating pass's derivatives at T = 1, and two or three more evaluations reach the
    # optimum (two where the first step crosses it: the Hermite step across lands within 1e-7);
    # with one, an evaluation at the subsample's optimum and one where its Taylor step leads.
    # The solver reuses the last of them.
    assert result.data_passes == data_passes


def _confident_model_logits(seed: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """800 x 10 logits of a confident model: every row's top logit 8 to 12 above the rest, on
    the wrong class for 4% of the rows. Its NLL's slope in beta has a knee between T = 1 and
    T* (about 1.67)."""
    generator = torch.Generator().manual_seed(seed)
    n, k = 800, 10
    labels = torch.randint(0, k, (n,), generator=generator)
    logits = torch.randn(n, k, generator=generator) * 2
    margin = 8 + 4 * torch.rand(n, generator=generator)
    wrong = torch.rand(n, generator=generator) < 0.04
    top = torch.where(wrong, (labels + 1) % k, labels)
    logits[torch.arange(n), top] += margin
    return logits, labels


@pytest.mark.parametrize("method", ["lbfgs", "newton"])
def test_a_confident_model_is_fitted_in_three_passes(method):
    # The Hermite interpolant across [0, 1] falls short of the knee; the Taylor step in log T
    # lands close enough that the next evaluation is the solver's only one (4 passes before).
    logits, labels = _confident_model_logits()
    result = fit(logits, labels, method=method).fit_result
    assert abs(result.temperature / scipy_temperature(logits, labels) - 1) <= 2e-7
    assert result.converged and result.data_passes == 3


@pytest.mark.parametrize("beta", [0.4, 1.0, 2.5])
def test_the_taylor_step_in_log_temperature_uses_the_derivatives_in_log_temperature(beta):
    """:func:`log_temperature_step` converts the derivatives in beta by the chain rule; autograd's
    derivatives of the NLL in u = log T, taken independently, give the same step."""
    from torchcal._objectives.temperature import Evaluation, SoftmaxTemperatureNLL

    logits, labels = tempered_logits(300, 6, 1.8, seed=31)
    logits = logits.double()
    evaluation = SoftmaxTemperatureNLL(logits, labels).evaluate(beta, hessian=True, taylor=True)

    def nll(u: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(logits * torch.exp(-u), labels)

    u = torch.tensor(-math.log(beta), dtype=torch.float64, requires_grad=True)
    derivatives, value = [], nll(u)
    for _ in range(4):
        (value,) = torch.autograd.grad(value, u, create_graph=True)
        derivatives.append(float(value))
    in_u = Evaluation(beta, 0.0, *derivatives[:2], None, third=derivatives[2],
                      fourth=derivatives[3])  # fmt: skip
    expected = beta * math.expm1(-_solver.taylor_step(in_u))
    assert _solver.log_temperature_step(evaluation) == pytest.approx(expected, rel=1e-9)


def test_a_default_fit_that_only_verifies_never_builds_a_torch_optimizer(monkeypatch):
    logits, labels = tempered_logits(5_000, 10, 2.0, seed=11)
    monkeypatch.setattr(torch.optim, "LBFGS", None)  # building one would fail
    result = fit(logits, labels).fit_result
    assert result.converged and result.iterations == 0


@pytest.mark.parametrize("method", ["lbfgs", "newton"])
def test_the_solver_still_iterates_from_a_far_start(monkeypatch, method):
    logits, labels = tempered_logits(5_000, 10, 2.0, seed=11)
    reference = scipy_temperature(logits, labels)
    monkeypatch.setattr(_solver, "warm_start", lambda *args: 1.0)  # T = 1, half the optimum
    result = fit(logits, labels, method=method).fit_result
    assert result.converged and result.iterations >= 2 and result.function_evaluations >= 3
    # LBFGS judges its distance to the optimum with the curvature at its start
    assert abs(result.temperature / reference - 1) <= 1e-5


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_every_float_dtype_fits_its_own_values_exactly(dtype):
    logits, labels = tempered_logits(5_000, 20, 1.7, seed=7)
    logits = logits.to(dtype)
    reference = scipy_temperature(logits.double(), labels)
    scaler = fit(logits, labels)
    assert abs(scaler.temperature / reference - 1) <= 1e-5
    assert scaler(logits).dtype == dtype


# ------------------------------------------------------------------ properties
small_problems = st.tuples(
    st.integers(min_value=20, max_value=300),
    st.integers(min_value=2, max_value=12),
    st.floats(min_value=0.3, max_value=4.0),
    st.integers(min_value=0, max_value=10_000),
)


@settings(max_examples=40, deadline=None)
@given(small_problems)
def test_temperature_is_positive_finite_and_inside_the_bounds(problem):
    n, k, temperature, seed = problem
    logits, labels = tempered_logits(n, k, temperature, seed=seed)
    scaler = fit_quietly(logits, labels)
    assert math.isfinite(scaler.temperature)
    assert 1e-3 <= scaler.temperature <= 1e3
    assert math.isfinite(scaler.fit_result.nll_after)


@settings(max_examples=30, deadline=None)
@given(small_problems)
def test_calibration_never_changes_the_predicted_class(problem):
    n, k, temperature, seed = problem
    logits, labels = tempered_logits(n, k, temperature, seed=seed)
    scaler = fit_quietly(logits, labels)
    assert torch.equal(scaler.predict_proba(logits).argmax(1), logits.argmax(1))


@settings(max_examples=30, deadline=None)
@given(small_problems, st.floats(min_value=-1e3, max_value=1e3))
def test_adding_a_constant_to_each_row_leaves_the_fit_unchanged(problem, offset):
    n, k, temperature, seed = problem
    logits, labels = tempered_logits(n, k, temperature, seed=seed)
    shifts = torch.linspace(-1, 1, n)[:, None].double() * offset
    # Shifted in float64, which perturbs the logits by about |offset| * 1e-16 only: rounding
    # them to float32 would change the data itself (by |offset| * 6e-8), and a nearly separable
    # set's optimal T moves with that by far more than the solver's tolerance (2e-4 seen).
    shifted = logits.double() + shifts
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        plain, moved = fit(logits.double(), labels), fit(shifted, labels)
    # each fit is within tol = 1e-6 of the optimum in log T
    assert moved.temperature == pytest.approx(plain.temperature, rel=3e-6)


# ------------------------------------------------------------------ degenerate data
def test_all_correct_with_a_margin_ends_at_the_lower_bound_with_a_warning():
    logits, _ = tempered_logits(500, 5, seed=2)
    labels = logits.argmax(dim=1)
    with pytest.warns(CalibrationWarning, match="every sample's label has the top score"):
        scaler = fit(logits, labels)
    assert scaler.temperature == pytest.approx(1e-3)
    assert scaler.fit_result.bound == "lower"
    assert math.isfinite(scaler.fit_result.nll_after)


def test_labels_no_better_than_chance_end_at_the_upper_bound_with_a_warning():
    generator = torch.Generator().manual_seed(4)
    logits = torch.randn(2_000, 10, generator=generator)
    labels = torch.randint(0, 10, (2_000,), generator=generator)
    labels = torch.where(labels == logits.argmax(1), (labels + 1) % 10, labels)  # worse than chance
    with pytest.warns(CalibrationWarning, match="no better than chance"):
        scaler = fit(logits, labels)
    assert scaler.temperature == pytest.approx(1e3)
    assert scaler.fit_result.bound == "upper"
    assert scaler.fit_result.nll_after == pytest.approx(math.log(10), abs=1e-3)


def test_custom_bounds_are_respected():
    logits, labels = tempered_logits(2_000, 10, 8.0, seed=5)
    with pytest.warns(CalibrationWarning, match="above the upper bound 4"):
        scaler = fit(logits, labels, temperature_bounds=(0.5, 4.0))
    assert scaler.temperature == pytest.approx(4.0)


def test_an_unconverged_fit_says_so():
    logits, labels = tempered_logits(2_000, 10, 3.0, seed=6)
    with pytest.warns(CalibrationWarning, match="without reaching tol"):
        scaler = fit(logits, labels, method="newton", max_iter=1, tol=1e-12)
    assert not scaler.fit_result.converged


# ------------------------------------------------------------------ state, devices, modes
def test_unfitted_scaler_refuses_to_predict():
    scaler = TemperatureScaler()
    for use in (lambda: scaler(torch.zeros(2, 3)), lambda: scaler.temperature):
        with pytest.raises(NotFittedError, match=r"call \.fit"):
            use()


def test_state_dict_deepcopy_and_to_carry_the_temperature():
    logits, labels = tempered_logits(1_000, 10, 1.5, seed=8)
    scaler = fit(logits, labels)
    buffer = io.BytesIO()
    torch.save(scaler.state_dict(), buffer)
    buffer.seek(0)
    fresh = TemperatureScaler()
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert fresh.temperature == pytest.approx(scaler.temperature, rel=1e-7)
    assert fresh.fit_result == scaler.fit_result
    assert copy.deepcopy(scaler).temperature == scaler.temperature
    assert scaler.to(torch.float64).temperature == pytest.approx(scaler.temperature, rel=1e-7)
    torch.testing.assert_close(fresh(logits), logits / scaler.temperature)


def test_state_dict_of_a_wrapped_model_round_trips_into_a_fresh_scaler(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    x = torch.randn(300, 6)
    with torch.no_grad():
        logits = model(x)
    labels = torch.distributions.Categorical(logits=logits / 2).sample()
    scaler = TemperatureScaler(model).fit(logits, labels, progress=False)
    torch.save(scaler.state_dict(), tmp_path / "scaler.pt")
    fresh_model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    fresh = TemperatureScaler(fresh_model)
    fresh.load_state_dict(torch.load(tmp_path / "scaler.pt", weights_only=True))
    assert fresh.is_fitted and fresh.temperature == scaler.temperature
    assert fresh.fit_result == scaler.fit_result
    torch.testing.assert_close(fresh_model.state_dict(), model.state_dict(), rtol=0, atol=0)
    torch.testing.assert_close(fresh(x), scaler(x), rtol=0, atol=0)


def test_temperature_is_read_only():
    scaler = fit(*tempered_logits(200, 4, seed=9))
    with pytest.raises(AttributeError):
        scaler.temperature = 2.0


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 16), nn.Dropout(0.5), nn.ReLU())
        self.head = nn.Linear(16, 4)
        self.body[0].weight.requires_grad_(False)

    def forward(self, x):
        return self.head(self.body(x)) * 4


def _loader(n=300, seed=0, batch_size=64):
    """Inputs with labels drawn from a fixed _Net's softmax at T = 2: the optimum is near 2."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    teacher = _Net().eval()
    x = torch.randn(n, 6, generator=generator)
    with torch.no_grad():
        y = torch.multinomial(torch.softmax(teacher(x) / 2, 1), 1, generator=generator).squeeze(1)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size)


def test_fit_on_a_loader_equals_fit_on_its_logits_and_leaves_the_model_as_it_was():
    torch.manual_seed(0)
    model = _Net()
    model.train()
    model.head.eval()  # mixed modes must come back exactly
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    scaler = TemperatureScaler(model).fit(_loader(), progress=False)
    assert model.training and model.body.training and not model.head.training
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]), name
        assert p.grad is None
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(x) for x, _ in _loader()])
    labels = torch.cat([y for _, y in _loader()])
    direct = fit(logits, labels)
    assert scaler.temperature == pytest.approx(direct.temperature, rel=1e-7)
    assert 1.0 < scaler.temperature < 4.0 and scaler.fit_result.bound is None
    x = next(iter(_loader()))[0]
    torch.testing.assert_close(scaler(x), model(x) / scaler.temperature)
    torch.testing.assert_close(
        scaler.predict_proba(x), torch.softmax(model(x) / scaler.temperature, 1)
    )


def test_fit_never_modifies_the_callers_tensors():
    logits, labels = tempered_logits(1_000, 10, seed=10)
    logits_copy, labels_copy = logits.clone(), labels.clone()
    fit(logits, labels)
    assert torch.equal(logits, logits_copy) and torch.equal(labels, labels_copy)


def test_fit_without_a_model_takes_a_loader_of_logits():
    logits, labels = tempered_logits(1_000, 10, 1.3, seed=11)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(logits, labels), 100)
    from_loader = TemperatureScaler().fit(loader, progress=False)
    assert from_loader.temperature == pytest.approx(fit(logits, labels).temperature, rel=1e-7)


@requires_cuda
def test_cuda_fit_equals_cpu_fit_and_stays_on_the_device():
    logits, labels = tempered_logits(20_000, 100, 2.0, seed=12)
    reference = scipy_temperature(logits, labels)
    scaler = fit(logits.cuda(), labels.cuda())
    assert abs(scaler.temperature / reference - 1) <= 1e-5
    model = nn.Linear(8, 3).cuda()
    loader = [(torch.randn(32, 8), torch.randint(0, 3, (32,))) for _ in range(4)]
    wrapped = TemperatureScaler(model).fit(loader, progress=False).cuda()
    assert next(model.parameters()).device.type == "cuda"
    assert wrapped(torch.randn(4, 8, device="cuda")).device.type == "cuda"


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("logits", "labels", "error", "message"),
    [
        (
            torch.tensor([[0.0, float("nan")], [1.0, 2.0]]),
            torch.tensor([0, 1]),
            ValueError,
            "NaN or infinite values in 1 row",
        ),
        (
            torch.tensor([[0.0, 1.0], [float("inf"), 2.0]]),
            torch.tensor([0, 1]),
            ValueError,
            "e.g. row 1",
        ),
        (
            torch.tensor([[0.0, 1.0], [1.0, 2.0]]),
            torch.tensor([0, 2]),
            ValueError,
            r"\[0, 2\).*e.g. 2",
        ),
        (torch.tensor([[0.0, 1.0], [1.0, 2.0]]), torch.tensor([-1, 0]), ValueError, "e.g. -1"),
        (
            torch.tensor([[0.0, 1.0], [1.0, 2.0]]),
            torch.tensor([0.0, 1.0]),
            TypeError,
            "integer tensor",
        ),
        (
            torch.tensor([[0.0, 1.0], [1.0, 2.0]]),
            torch.tensor([0, 1, 1]),
            ValueError,
            r"labels of shape \(3,\) do not match logits of shape \(2, 2\)",
        ),
        (torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), ValueError, "empty"),
        (torch.tensor(1.0), torch.tensor(0), ValueError, "need a class dimension"),
        (torch.tensor([[1, 2], [3, 4]]), torch.tensor([0, 1]), TypeError, "floating tensor"),
        (
            torch.tensor([[0.7, 0.3], [0.2, 0.8]]),
            torch.tensor([0, 1]),
            ValueError,
            "look like probabilities",
        ),
        (torch.tensor([[0.0, 1.0]]), torch.tensor([[1, 0]]), ValueError, "one-hot"),
        ([[0.0, 1.0], [1.0, 0.0]], torch.tensor([0, 1]), TypeError, "torch.Tensor, a numpy"),
    ],
)
def test_bad_input_is_named_in_the_error(logits, labels, error, message):
    with pytest.raises(error, match=message):
        fit(logits, labels)


def test_fit_on_logits_without_labels_says_what_is_missing():
    with pytest.raises(TypeError, match="needs labels"):
        TemperatureScaler().fit(torch.zeros(3, 2))


def test_empty_loader_is_an_error():
    with pytest.raises(ValueError, match="no batches"):
        TemperatureScaler(nn.Linear(2, 2)).fit([], progress=False)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"method": "adam"}, "method must be one of"),
        ({"temperature_bounds": (2.0, 1.0)}, "low < high"),
        ({"temperature_bounds": (0.0, 1.0)}, "finite and > 0"),
        ({"tol": -1.0}, "tol must be finite and > 0"),
        ({"max_iter": 0}, "max_iter must be >= 1"),
        ({"model": "resnet"}, "torch.nn.Module"),
    ],
)
def test_bad_options_are_rejected_at_construction(options, message):
    with pytest.raises((ValueError, TypeError), match=message):
        TemperatureScaler(**options)


def test_one_logit_per_sample_cannot_be_a_softmax():
    with pytest.raises(ValueError, match="K >= 2"):
        fit(torch.zeros(4, 1), torch.zeros(4, dtype=torch.long), activation="softmax")


def test_a_stalled_lbfgs_fit_whose_optimum_lies_beyond_a_bound_is_held_there():
    # bfloat16 logits of 1e18: every softmax is one-hot, the NLL is linear in beta over the whole
    # box and LBFGS stalls short of the bound (it stopped at T = 986.6, "may be inexact"). The
    # slope at the bound decides: the optimum lies beyond T = 1000 (NLL still falls there).
    logits = torch.tensor([[1.5402e18, -2.9273e17], [-2.1797e18, 5.6745e17]], dtype=torch.bfloat16)
    labels = torch.tensor([1, 1])  # the first row wrong, the second right: dNLL/dbeta(0) < 0
    with pytest.warns(CalibrationWarning, match="above the upper bound"):
        scaler = fit(logits, labels)
    result = scaler.fit_result
    assert scaler.temperature == pytest.approx(1e3) and result.bound == "upper"
    assert result.converged
    z = logits.double()
    at_bound = numpy_nll(z.numpy(), labels.numpy(), 1e3)
    assert at_bound <= numpy_nll(z.numpy(), labels.numpy(), 986.6)
