"""The hostile-input contract: every calibrator kind, over families of bad input.

Each case ends in one of the three outcomes of :mod:`hostile` (a refusal naming the problem, a
CalibrationWarning with the result at its documented bound, or an exact result checked against an
independent reference); anything else fails. The families follow the causes of the hostile-input
review: autograd history (1), rows whose range overflows float32 (2), degenerate objectives (3),
fits that fail part-way (5), half-precision probabilities (8), scalar options that would allocate
without bound (12), and meta tensors, wrong class counts and one-class labels (14).
Open-ended families are generated with hypothesis: a small profile by default, a larger one
behind ``pytest -m slow``.
"""

from __future__ import annotations

import copy
import math
import tempfile
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from conftest import numpy_nll, scipy_temperature, tempered_logits
from hostile import expect_exact, expect_refused, expect_warned
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torchcal import CalibrationWarning, Calibrator, TemperatureScaler
from torchcal.calibrators import SoftmaxCalibrator

KINDS = sorted(Calibrator.registry)
#: Kinds that fit a temperature first and keep it (``temperature_bounds`` is theirs).
TEMPERATURE_KINDS = ["ensemble_temperature", "temperature"]
#: Kinds whose map cannot represent a row that spans more than float32's range.
AFFINE_KINDS = ["dirichlet", "matrix", "vector"]
BOUNDS = (1e-3, 1e3)
FLOAT32_MAX = torch.finfo(torch.float32).max

settings.register_profile(
    "hostile", max_examples=25, deadline=None, derandomize=True, database=None
)
settings.register_profile(
    "hostile-slow", max_examples=300, deadline=None, derandomize=True, database=None
)
SMALL = settings(settings.get_profile("hostile"), suppress_health_check=[HealthCheck.too_slow])
LARGE = settings(settings.get_profile("hostile-slow"), suppress_health_check=[HealthCheck.too_slow])


def make(kind: str, model: torch.nn.Module | None = None, **options: Any) -> Calibrator:
    return Calibrator.registry[kind](model, **options)


def quietly(call: Callable[[], Any]) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        return call()


def problem(n: int = 240, k: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Informative logits: labels drawn from softmax(logits / 2)."""
    return tempered_logits(n, k, temperature=2.0, scale=2.0, seed=seed)


def state_of(calibrator: Calibrator) -> dict[str, Any]:
    """Everything a fit sets: buffers, the extra state (fit result, class count, flags)."""
    return {
        "buffers": {name: b.clone() for name, b in calibrator.named_buffers()},
        "extra": copy.deepcopy(calibrator.get_extra_state()),
        "is_fitted": calibrator.is_fitted,
        "fit_result": copy.deepcopy(calibrator.fit_result),
        "n_classes": getattr(calibrator, "_n_classes", None),
    }


def assert_same_state(calibrator: Calibrator, before: dict[str, Any]) -> None:
    after = state_of(calibrator)
    assert after["buffers"].keys() == before["buffers"].keys()
    for name, value in before["buffers"].items():
        got = after["buffers"][name]
        assert got.shape == value.shape and torch.equal(got.nan_to_num(), value.nan_to_num()), name
    assert after["extra"] == before["extra"]
    assert after["is_fitted"] == before["is_fitted"]
    assert after["fit_result"] == before["fit_result"]
    assert after["n_classes"] == before["n_classes"]


def assert_optimal(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> None:
    """T minimises the float64 NLL as well as scipy's bounded Brent does (to 1e-9 relative)."""
    z, y = logits.double().numpy(), labels.numpy()
    reference = scipy_temperature(logits.double(), labels)
    ours, best = numpy_nll(z, y, temperature), numpy_nll(z, y, reference)
    assert math.isfinite(temperature) and BOUNDS[0] <= temperature <= BOUNDS[1]
    assert ours <= best + 1e-9 * max(1.0, abs(best)), (temperature, reference, ours, best)


# ------------------------------------------------------------------ cause 1: autograd history
@pytest.mark.parametrize("kind", KINDS)
def test_logits_with_autograd_history_fit_as_detached_logits_do(kind):
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 4)
    x = torch.randn(240, 8)
    with torch.no_grad():
        labels = torch.distributions.Categorical(logits=model(x) / 2).sample()
    logits = model(x)  # with autograd history, as model(x) gives it
    values, grad_fn = logits.detach().clone(), logits.grad_fn
    reference = quietly(lambda: make(kind).fit(logits.detach().clone(), labels))

    def check(calibrator: Calibrator) -> None:
        assert calibrator.is_fitted
        for name, value in reference.fitted_tensors().items():
            fitted = calibrator.fitted_tensors()[name]
            assert torch.equal(fitted, value) and not fitted.requires_grad, name
        assert logits.requires_grad and logits.grad_fn is grad_fn
        assert torch.equal(logits.detach(), values)
        if kind == "temperature":
            assert_optimal(values, labels, calibrator.temperature)

    expect_exact(lambda: make(kind).fit(logits, labels), check)
    assert model.weight.grad is None  # the fit never ran backward through the model


# ------------------------------------------------------------------ cause 2: overflowing rows
def overflowing(dtype: torch.dtype, label: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Informative logits with row 0 set to +-3e38 (labelled ``label``), and the same data
    with row 0 replaced by one whose softmax is the same one-hot vector in float32."""
    logits, labels = problem(seed=1)
    logits[0, 0], logits[0, 1] = 3e38, -3e38
    labels[0] = label
    limit = logits.clone()
    limit[0] = torch.tensor([1e4, -1e4, 0.0, 0.0])
    return logits.to(dtype), labels, limit.to(dtype)


@pytest.mark.parametrize("label", [0, 1], ids=["labelled-top", "labelled-bottom"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("kind", KINDS)
def test_rows_whose_range_overflows_float32_fit_their_limit_or_are_refused(kind, dtype, label):
    logits, labels, limit = overflowing(dtype, label)
    calibrator = make(kind)
    if kind in AFFINE_KINDS:
        expect_refused(lambda: calibrator.fit(logits, labels), "row 0", "float32")
        assert not calibrator.is_fitted
        return
    wide = logits.double()  # the float64 reference sees the exact values

    def check(fitted: Calibrator) -> None:
        assert fitted.is_fitted
        if kind in TEMPERATURE_KINDS:
            temperature = fitted.temperature
            if label == 0:  # the row is right with an infinite margin: it costs nothing
                assert_optimal(wide, labels, temperature)
            else:  # its NLL is ~6e38 / T: only T -> infinity helps
                assert temperature == pytest.approx(BOUNDS[1])
        else:  # softmax already gives the row its limit, the one-hot vector
            expected = quietly(lambda: make(kind).fit(limit, labels))
            for name, value in expected.fitted_tensors().items():
                assert torch.equal(fitted.fitted_tensors()[name], value), name
        probs = fitted.predict_proba(logits[1:])
        assert bool(torch.isfinite(probs).all())
        result = fitted.fit_result
        assert math.isfinite(result.nll_after) and math.isfinite(result.ece_after)

    if kind in TEMPERATURE_KINDS and label == 1:
        expect_warned(lambda: calibrator.fit(logits, labels), "upper bound", check=check)
    else:
        expect_exact(lambda: calibrator.fit(logits, labels), check)


@pytest.mark.parametrize("kind", KINDS)
def test_rows_whose_range_overflows_float64_are_refused_by_row(kind):
    logits, labels = problem(seed=2)
    logits = logits.double()
    logits[3, 0], logits[3, 2] = 1.5e308, -1.5e308
    calibrator = make(kind)
    expect_refused(lambda: calibrator.fit(logits, labels), "row 3", "float64")
    assert not calibrator.is_fitted


# ------------------------------------------------------------------ cause 3: degenerate objectives
def separable(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.eye(4).repeat(60, 1) * 5).to(dtype), torch.arange(4).repeat(60)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("kind", TEMPERATURE_KINDS)
def test_every_label_the_top_score_holds_t_at_the_lower_bound(kind, dtype):
    logits, labels = separable(dtype)

    def check(fitted: Calibrator) -> None:
        assert fitted.temperature == pytest.approx(BOUNDS[0])
        if kind == "temperature":
            assert fitted.fit_result.bound == "lower" and fitted.fit_result.converged
        # independent check: the float64 NLL keeps falling towards T -> 0
        z, y = logits.double().numpy(), labels.numpy()
        assert numpy_nll(z, y, 0.5) < numpy_nll(z, y, 1.0) < numpy_nll(z, y, 2.0)

    words = ("lower bound", "top score") if kind == "temperature" else ("lower bound",)
    expect_warned(lambda: make(kind).fit(logits, labels), *words, check=check)


def flat(case: str) -> tuple[torch.Tensor, torch.Tensor]:
    if case == "all-equal":
        return torch.full((200, 4), 0.7), torch.arange(4).repeat(50)
    # logits no better than the label marginal: the labels are independent of them
    logits, _ = problem(200, 4, seed=4)
    # make the slope at beta = 0 non-negative by construction: each row's label logit is its
    # smallest score, so the label is as unlikely as the logits can make it
    return logits, logits.argmin(dim=1)


@pytest.mark.parametrize("case", ["all-equal", "label-at-the-bottom"])
@pytest.mark.parametrize("kind", TEMPERATURE_KINDS)
def test_a_slope_at_beta_zero_of_zero_or_more_holds_t_at_the_upper_bound(kind, case):
    logits, labels = flat(case)
    z, y = logits.double().numpy(), labels.numpy()
    k = z.shape[1]
    assert (z.sum(axis=1) - k * z[np.arange(len(y)), y]).sum() >= 0  # the data's exact fact

    def check(fitted: Calibrator) -> None:
        assert fitted.temperature == pytest.approx(BOUNDS[1])
        if kind == "temperature":
            assert fitted.fit_result.bound == "upper"
        assert numpy_nll(z, y, 1e3) <= numpy_nll(z, y, 10.0) + 1e-12

    expect_warned(lambda: make(kind).fit(logits, labels), "upper bound", check=check)


@pytest.mark.parametrize("scale", [1e-30, 1e-44])
@pytest.mark.parametrize("kind", TEMPERATURE_KINDS)
def test_logits_too_small_for_float32_squares_still_reach_the_bound_they_imply(kind, scale):
    logits, labels = problem(seed=5)
    tiny = logits * scale  # the optimum is near 2 * scale: far below the lower bound

    def check(fitted: Calibrator) -> None:
        assert fitted.temperature == pytest.approx(BOUNDS[0])
        z, y = tiny.double().numpy(), labels.numpy()
        assert numpy_nll(z, y, 1e-3) <= numpy_nll(z, y, 1e-2)

    expect_warned(lambda: make(kind).fit(tiny, labels), "lower bound", check=check)


def test_the_distributed_path_decides_the_same_degenerate_cases():
    import torch.distributed as dist

    store = dist.FileStore(tempfile.mkdtemp() + "/store", 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        logits, labels = separable(torch.float32)

        def check(fitted: TemperatureScaler) -> None:
            assert fitted.temperature == pytest.approx(BOUNDS[0])
            assert fitted.fit_result.bound == "lower"

        fit = TemperatureScaler().fit
        expect_warned(lambda: fit(logits, labels, distributed=True), "lower bound", check=check)
        flat_logits, flat_labels = flat("all-equal")
        expect_warned(
            lambda: fit(flat_logits, flat_labels, distributed=True),
            "upper bound",
            check=lambda fitted: fitted.fit_result.bound == "upper" or pytest.fail(),
        )
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------------------ cause 5: failed fits
def warning_refit(kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """5-class data on which ``kind``'s fit warns part-way (after computing its values)."""
    if kind in TEMPERATURE_KINDS:  # T held at the lower bound
        return torch.eye(5).repeat(20, 1) * 5, torch.arange(5).repeat(20)
    if kind in AFFINE_KINDS:  # more parameters than samples (vector: 10 > 8)
        logits, labels = problem(8, 5, seed=6)
        return logits, torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    logits, labels = problem(100, 5, seed=6)  # class 4 never occurs
    return logits, labels.clamp(max=3)


@pytest.mark.parametrize("kind", KINDS)
def test_a_refit_that_warns_as_an_error_leaves_the_previous_fit_exactly(kind):
    logits, labels = problem(seed=7)
    calibrator = quietly(lambda: make(kind).fit(logits, labels))
    before = state_of(calibrator)
    expected = calibrator.predict_proba(logits)
    new_logits, new_labels = warning_refit(kind)

    def refit() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("error", CalibrationWarning)
            calibrator.fit(new_logits, new_labels)

    expect_refused(refit, errors=(CalibrationWarning,))
    assert_same_state(calibrator, before)
    assert torch.equal(calibrator.predict_proba(logits), expected)
    fresh = make(kind)

    def first_fit() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("error", CalibrationWarning)
            fresh.fit(new_logits, new_labels)

    expect_refused(first_fit, errors=(CalibrationWarning,))
    assert not fresh.is_fitted and fresh.fit_result is None


@pytest.mark.parametrize("kind", KINDS)
def test_a_refit_that_fails_late_leaves_the_previous_fit_exactly(kind, monkeypatch):
    logits, labels = problem(seed=8)
    calibrator = quietly(lambda: make(kind).fit(logits, labels))
    before = state_of(calibrator)

    def failing_report(*args: Any, **kwargs: Any) -> None:
        raise ValueError("the report failed")

    # the last step of every fit, after its values are computed and assigned
    target = "_result" if kind == "temperature" else "_record"
    where = TemperatureScaler if kind == "temperature" else Calibrator
    monkeypatch.setattr(where, target, failing_report)
    new_logits, new_labels = problem(120, 5, seed=9)
    expect_refused(lambda: calibrator.fit(new_logits, new_labels), "report failed")
    assert_same_state(calibrator, before)


# ------------------------------------------------------------------ cause 8: probabilities
def half_probabilities(seed: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """float16 probabilities, many of them float16 subnormals (below 6.1e-5), none zero."""
    logits, labels = tempered_logits(400, 5, temperature=2.0, scale=3.0, seed=seed)
    probs = torch.softmax(logits.double(), dim=1).half()
    assert bool((probs > 0).all()) and int((probs < 6.1e-5).sum()) > 50
    return probs, labels


@pytest.mark.parametrize("kind", KINDS)
def test_float16_probabilities_fit_as_their_exact_logs(kind):
    probs, labels = half_probabilities()
    exact_logs = probs.double().log()  # float64 logs of the float16 values

    def check(fitted: Calibrator) -> None:
        if kind == "temperature":
            assert_optimal(exact_logs, labels, fitted.temperature)
            assert fitted.temperature == pytest.approx(scipy_temperature(exact_logs, labels), 1e-4)
        reference = quietly(lambda: make(kind).fit(exact_logs.float(), labels))
        assert torch.allclose(
            fitted.predict_proba(probs).float(),
            reference.predict_proba(exact_logs.float()).float(),
            atol=1e-4,
        )

    outcome = quietly(lambda: make(kind, inputs="probs").fit(probs, labels))
    expect_exact(lambda: outcome, check)


@pytest.mark.parametrize("kind", KINDS)
def test_a_true_label_of_probability_zero_is_counted_in_a_warning(kind):
    probs, labels = half_probabilities(seed=11)
    probs = probs.clone()
    rows = [3, 7]
    probs[rows, labels[rows]] = 0.0
    # the rest of each row renormalised: still a probability vector, its label's entry exactly 0
    probs[rows] = (probs[rows].float() / probs[rows].float().sum(dim=1, keepdim=True)).to(probs)

    def check(fitted: Calibrator) -> None:
        assert fitted.is_fitted
        assert math.isfinite(fitted.fit_result.nll_after)

    expect_warned(
        lambda: make(kind, inputs="probs").fit(probs, labels),
        "2 of 400",
        "probability exactly 0",
        check=check,
    )


# ------------------------------------------------------------------ cause 12: scalar options
@pytest.mark.parametrize("kind", KINDS)
def test_a_bin_count_beyond_the_limit_is_refused_with_the_limit(kind):
    expect_refused(lambda: make(kind, n_bins=10**9), "n_bins", "65,536")
    if kind == "histogram":
        expect_refused(lambda: make(kind, bins=10**9), "bins", "65,536")


@pytest.mark.parametrize("kind", TEMPERATURE_KINDS)
def test_temperature_bounds_beyond_float32_are_refused_with_the_limit(kind):
    expect_refused(
        lambda: make(kind, temperature_bounds=(1e-3, 1e60)), "temperature_bounds", "3.403e+38"
    )
    expect_refused(
        lambda: make(kind, temperature_bounds=(1e-50, 1.0)), "temperature_bounds", "1.175e-38"
    )


def _bounds_case(kind: str, low: float, high: float) -> None:
    def check(calibrator: Calibrator) -> None:
        stored = torch.tensor(calibrator.temperature_bounds, dtype=torch.float32)
        assert bool(torch.isfinite(stored).all()) and bool((stored > 0).all())
        assert float(stored[0]) <= float(stored[1])

    valid = (
        all(math.isfinite(b) and b > 0 for b in (low, high))
        and low < high
        and torch.finfo(torch.float32).tiny <= low
        and high <= FLOAT32_MAX
    )
    if valid:
        expect_exact(lambda: make(kind, temperature_bounds=(low, high)), check)
    else:
        expect_refused(lambda: make(kind, temperature_bounds=(low, high)), "temperature_bounds")


ANY_FLOAT = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(
    [0.0, -1.0, 1e-39, 1e-38, 3.4e38, 3.5e38, 1e60]
)


@pytest.mark.parametrize("kind", TEMPERATURE_KINDS)
@SMALL
@given(low=ANY_FLOAT, high=ANY_FLOAT)
def test_any_temperature_bounds_are_refused_or_kept(kind, low, high):
    _bounds_case(kind, low, high)


@pytest.mark.slow
@pytest.mark.parametrize("kind", TEMPERATURE_KINDS)
@LARGE
@given(low=ANY_FLOAT, high=ANY_FLOAT)
def test_any_temperature_bounds_are_refused_or_kept_large(kind, low, high):
    _bounds_case(kind, low, high)


# ------------------------------------------------------------------ cause 14: smaller ones
@pytest.mark.parametrize("kind", KINDS)
def test_meta_tensors_are_refused_by_name(kind):
    logits = torch.empty(20, 4, device="meta")
    labels = torch.zeros(20, dtype=torch.long, device="meta")
    calibrator = make(kind)
    expect_refused(lambda: calibrator.fit(logits, labels), "logits", "meta")
    expect_refused(lambda: calibrator.fit(torch.randn(20, 4), labels), "labels", "meta")
    assert not calibrator.is_fitted


@pytest.mark.parametrize("kind", KINDS)
def test_one_class_labels_are_warned_about(kind):
    logits, _ = problem(200, 4, seed=12)
    labels = torch.zeros(200, dtype=torch.long)
    expect_warned(
        lambda: make(kind).fit(logits, labels),
        "labels are class 0",
        check=lambda fitted: fitted.is_fitted or pytest.fail(),
    )


@pytest.mark.parametrize("kind", KINDS)
def test_logits_of_the_wrong_class_count_are_refused_naming_the_count(kind):
    if kind == "temperature":  # one temperature per label of a multi-label model
        logits = torch.randn(200, 4) * 3
        targets = torch.bernoulli(torch.sigmoid(logits / 2))
        fitted = make(kind, activation="sigmoid", per_class=True).fit(logits, targets)
    else:
        fitted = quietly(lambda: make(kind).fit(*problem()))
    expect_refused(lambda: fitted(torch.randn(3, 5)), "4")
    expect_refused(lambda: fitted.predict_proba(torch.randn(3, 5)), "4")


# ------------------------------------------------------------------ open-ended logits
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
#: Extremes within what the float64 reference (``numpy_nll``, logits / T) can evaluate; rows
#: beyond float64 have their own test above.
SPECIALS = [0.0, 1.0, -1.0, 3e38, -3e38, 1e30, -1e30, 1e-30, 65504.0, -65504.0]


@st.composite
def hostile_logits(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor]:
    """Small logits at any scale, some entries replaced by extremes, in any float dtype."""
    n, k = draw(st.integers(2, 40)), draw(st.integers(2, 5))
    seed = draw(st.integers(0, 2**16))
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(n, k, generator=generator, dtype=torch.float64)
    base *= 10.0 ** draw(st.integers(-40, 38))
    if draw(st.booleans()):
        base[:] = base[:1]  # every row the same
    for _ in range(draw(st.integers(0, 4))):
        row, column = draw(st.integers(0, n - 1)), draw(st.integers(0, k - 1))
        base[row, column] = draw(st.sampled_from(SPECIALS))
    labels = torch.randint(0, k, (n,), generator=generator)
    if draw(st.booleans()):  # labels from the logits themselves: informative
        labels = base.argmax(dim=1) if draw(st.booleans()) else base.argmin(dim=1)
    return base.to(draw(st.sampled_from(DTYPES))), labels


def _temperature_contract(logits: torch.Tensor, labels: torch.Tensor) -> None:
    """Refused naming the logits, warned at a bound the float64 NLL agrees with, or optimal."""
    wide = logits.double()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            fitted, error = TemperatureScaler().fit(logits, labels), None
        except Exception as raised:  # classified below by the harness
            fitted, error = None, raised
    messages = [w for w in caught if issubclass(w.category, CalibrationWarning)]

    def replay() -> TemperatureScaler:
        for message in messages:
            warnings.warn(message.message, message.category, stacklevel=1)
        if error is not None:
            raise error
        assert fitted is not None
        return fitted

    if error is not None:
        expect_refused(replay, "logits")
        return
    z, y = wide.numpy(), labels.numpy()
    bound = fitted.fit_result.bound
    one_class = bool((labels == labels[0]).all()) and len(labels) > 1
    inexact = any("may be inexact" in str(w.message) for w in messages)
    if bound is None and inexact:  # the solver's own warning: T must still be the optimum
        optimal = lambda scaler: assert_optimal(wide, labels, scaler.temperature)  # noqa: E731
        expect_warned(replay, "may be inexact", check=optimal)
        return
    if bound is None and one_class:
        optimal = lambda scaler: assert_optimal(wide, labels, scaler.temperature)  # noqa: E731
        expect_warned(replay, "labels are class", check=optimal)
        return
    if bound is None:
        expect_exact(replay, lambda scaler: assert_optimal(wide, labels, scaler.temperature))
        return

    def at_bound(scaler: TemperatureScaler) -> None:
        held = BOUNDS[0] if bound == "lower" else BOUNDS[1]
        assert scaler.temperature == pytest.approx(held)
        inside = BOUNDS[0] * 10 if bound == "lower" else BOUNDS[1] / 10
        assert numpy_nll(z, y, held) <= numpy_nll(z, y, inside) + 1e-9 * max(
            1.0, abs(numpy_nll(z, y, inside))
        )

    expect_warned(replay, f"{bound} bound", check=at_bound)


@SMALL
@given(case=hostile_logits())
def test_any_finite_or_not_logits_end_in_a_clear_outcome(case):
    _temperature_contract(*case)


@pytest.mark.slow
@LARGE
@given(case=hostile_logits())
def test_any_finite_or_not_logits_end_in_a_clear_outcome_large(case):
    _temperature_contract(*case)


# ------------------------------------------------------------------ the contract covers every kind
def test_every_registered_kind_is_covered():
    assert set(KINDS) == {
        "dirichlet",
        "ensemble_temperature",
        "histogram",
        "isotonic",
        "matrix",
        "temperature",
        "vector",
    }
    assert all(
        issubclass(Calibrator.registry[k], SoftmaxCalibrator) for k in KINDS if k != "temperature"
    )
