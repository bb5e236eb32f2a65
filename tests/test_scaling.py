"""Vector, matrix and Dirichlet scaling: exactness against scipy, properties, degenerate data.

The reference is written here in numpy, independently of torchcal: the same objective (mean NLL
plus the ODIR penalty lambda / (K (K - 1)) * sum_{i != j} W_ij^2 + mu / K * sum_j b_j^2) with its
analytic gradient, minimised by scipy's L-BFGS-B in float64 from the identity map.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.optimize
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torchcal._objectives.affine import AffineObjective
from torchcal._optim.affine import fit_affine
from torchcal.calibrators.scaling import (
    MAX_MATRIX_CLASSES,
    DirichletCalibrator,
    MatrixScaler,
    VectorScaler,
    affine_calibration,
)
from torchcal.errors import CalibrationWarning

CLASSES = {"vector": VectorScaler, "matrix": MatrixScaler, "dirichlet": DirichletCalibrator}


# ------------------------------------------------------------------ the independent reference
def log_softmax_np(z: np.ndarray) -> np.ndarray:
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def reference_fit(
    logits: np.ndarray,
    labels: np.ndarray,
    *,
    log_probs: bool,
    diagonal: bool,
    reg_lambda: float,
    reg_mu: float,
) -> dict:
    """Minimise mean NLL + ODIR with scipy L-BFGS-B (float64, analytic gradient)."""
    x = log_softmax_np(logits) if log_probs else logits.astype(np.float64)
    m, k = x.shape
    off_coef = 0.0 if diagonal else reg_lambda / (k * (k - 1))
    bias_coef = reg_mu / k
    off_mask = 1.0 - np.eye(k)
    onehot = np.eye(k)[labels]
    n_weight = k if diagonal else k * k

    def unpack(params):
        weight = params[:n_weight] if diagonal else params[:n_weight].reshape(k, k)
        return weight, params[n_weight:]

    def objective(params):
        weight, bias = unpack(params)
        scores = x * weight + bias if diagonal else x @ weight.T + bias
        log_p = log_softmax_np(scores)
        nll = -(log_p * onehot).sum() / m
        residual = (np.exp(log_p) - onehot) / m
        grad_weight = (residual * x).sum(axis=0) if diagonal else residual.T @ x
        grad_bias = residual.sum(axis=0)
        value = nll + bias_coef * (bias**2).sum()
        grad_bias = grad_bias + 2 * bias_coef * bias
        if not diagonal:
            value += off_coef * ((weight * off_mask) ** 2).sum()
            grad_weight = grad_weight + 2 * off_coef * weight * off_mask
        return value, np.concatenate([grad_weight.ravel(), grad_bias])

    start = np.concatenate([np.ones(k) if diagonal else np.eye(k).ravel(), np.zeros(k)])
    result = scipy.optimize.minimize(
        objective,
        start,
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": 100_000, "maxfun": 200_000, "gtol": 1e-12, "ftol": 1e-15},
    )
    weight, bias = unpack(result.x)
    scores = x * weight + bias if diagonal else x @ weight.T + bias
    return {
        "weight": weight,
        "bias": bias,
        "objective": result.fun,
        "probs": np.exp(log_softmax_np(scores)),
        "gradient": np.abs(result.jac).max(),
        "objective_at": lambda w, b: objective(np.concatenate([np.ravel(w), b]))[0],
    }


def canonical_np(weight: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Softmax ignores a common shift of the scores: centre the bias and, for a matrix, make each
    column's off-diagonal entries sum to zero (adding one vector to every row of W)."""
    bias = bias - bias.mean()
    if weight.ndim == 2:
        k = weight.shape[0]
        weight = weight - (weight.sum(axis=0) - np.diag(weight)) / (k - 1)
    return weight, bias


# ------------------------------------------------------------------ synthetic data
def distorted(
    n: int, k: int, kind: str, seed: int, scale: float = 3.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 logits with labels drawn from a known affine distortion of their softmax."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=generator) * scale
    x = logits.double()
    if kind == "dirichlet":
        x = torch.log_softmax(x, dim=1)
    scales = (torch.rand(k, generator=generator) * 1.2 + 0.4).double()
    bias = torch.randn(k, generator=generator).double() * 0.5
    if kind == "vector":
        truth = x * scales + bias
    else:
        mixing = torch.diag(scales) + 0.1 * torch.randn(k, k, generator=generator).double()
        truth = x @ mixing.T + bias
    labels = torch.multinomial(torch.softmax(truth, dim=1), 1, generator=generator).squeeze(1)
    return logits, labels


def fit(kind: str, logits: torch.Tensor, labels: torch.Tensor, **options):
    return CLASSES[kind](**options).fit(logits, labels, progress=False)


def fit_quietly(kind: str, logits: torch.Tensor, labels: torch.Tensor, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        return fit(kind, logits, labels, **options)


# ------------------------------------------------------------------ exactness against scipy
EXACTNESS_CASES = [
    # kind, K, options
    ("vector", 3, {}),
    ("vector", 10, {}),
    ("matrix", 3, {}),
    ("matrix", 10, {}),
    ("matrix", 10, {"reg_lambda": 0.0, "reg_mu": 0.0}),
    ("matrix", 10, {"reg_lambda": 10.0, "reg_mu": 0.1}),
    ("dirichlet", 3, {}),
    ("dirichlet", 10, {}),
    ("dirichlet", 5, {"reg_lambda": 0.0, "reg_mu": 0.0}),
    ("dirichlet", 10, {"diagonal": True}),
]


@pytest.mark.parametrize(("kind", "k", "options"), EXACTNESS_CASES)
def test_fit_matches_scipy_on_the_same_objective(kind, k, options):
    """Measured: objective within 1.3e-14 relative of scipy's (ours at most 3.4e-15 above it, often
    below), probabilities within 2.7e-7, canonical parameters within 2.1e-6 (the buffers are
    float32); scipy's own final gradient 2e-9 to 4e-8."""
    logits, labels = distorted(3000, k, kind, seed=k + len(options))
    calibrator = fit(kind, logits.double(), labels, tol=1e-10, **options)
    assert calibrator.fit_result.converged
    reference = reference_fit(
        logits.double().numpy(),
        labels.numpy(),
        log_probs=kind == "dirichlet",
        diagonal=kind == "vector" or options.get("diagonal", False),
        reg_lambda=calibrator.reg_lambda_,  # the defaults' values for these data
        reg_mu=calibrator.reg_mu_,
    )
    assert reference["gradient"] < 1e-7  # scipy reached its optimum too
    weight = calibrator.weight.double().numpy()
    bias = calibrator.bias.double().numpy()
    ours = reference["objective_at"](weight, bias)
    assert ours == pytest.approx(reference["objective"], rel=1e-9)
    probs = calibrator.predict_proba(logits.double()).numpy()
    assert np.abs(probs - reference["probs"]).max() <= 1e-5
    expected_weight, expected_bias = canonical_np(reference["weight"], reference["bias"])
    assert np.abs(weight - expected_weight).max() <= 1e-4
    assert np.abs(bias - expected_bias).max() <= 1e-4
    # the fitted values are already the canonical representative
    assert abs(bias.sum()) <= 1e-5
    if weight.ndim == 2:
        assert np.abs(weight.sum(axis=0) - np.diag(weight)).max() <= 1e-5


def random_objective(
    seed: int, n: int, k: int, scale: float, **options
) -> tuple[torch.Generator, torch.Tensor, torch.Tensor, AffineObjective]:
    """Random (n, k) logits times ``scale``, random labels, and their objective (``options``
    passed on); the generator, advanced past them, for further draws."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=generator) * scale
    labels = torch.randint(0, k, (n,), generator=generator)
    return generator, logits, labels, AffineObjective(logits, labels, **options)


@pytest.mark.parametrize("log_probs", [False, True])
@pytest.mark.parametrize("diagonal", [False, True])
def test_analytic_derivatives_match_autograd(log_probs, diagonal):
    """The solver's objective, gradient, Hessian and per-class Hessian blocks (standardised
    parameters, ODIR penalty, several row chunks) against torch.func on a direct formula."""
    generator, logits, labels, objective = random_objective(
        15,
        300,
        4,
        3.0,
        log_probs=log_probs,
        diagonal=diagonal,
        off_diagonal_penalty=0.3,
        bias_penalty=0.7,
        chunk_elements=64,
    )
    theta = torch.randn(4, objective.width, generator=generator, dtype=torch.float64)

    def direct(theta):
        weight, bias = objective.to_original(theta)
        x = logits.double()
        x = torch.log_softmax(x, dim=1) if log_probs else x
        scores = x * weight + bias if diagonal else x @ weight.T + bias
        nll = (torch.logsumexp(scores, 1) - scores.gather(1, labels[:, None]).squeeze(1)).mean()
        # the penalty of the least penalised map with the same probabilities (see below)
        penalty = 0.7 * (bias - bias.mean()).square().sum()
        if not diagonal:
            off = ~torch.eye(4, dtype=torch.bool)
            shift = torch.where(off, weight, 0.0).sum(dim=0) / 3  # column means off the diagonal
            penalty = penalty + 0.3 * torch.where(off, weight - shift, 0.0).square().sum()
        return nll + penalty

    value, grad, hess = objective.evaluate(theta, hessian=True)
    n = theta.numel()
    expected_hess = torch.func.hessian(direct)(theta).reshape(n, n)
    assert value == pytest.approx(float(direct(theta)), rel=1e-13)
    assert torch.allclose(grad, torch.func.grad(direct)(theta), atol=1e-13)
    assert torch.allclose(hess, expected_hess, atol=1e-13)
    width = objective.width
    own = expected_hess.view(4, width, 4, width).diagonal(dim1=0, dim2=2).permute(2, 0, 1)
    assert torch.allclose(objective.hessian_blocks(theta), own, atol=1e-13)
    weight, bias = objective.to_original(theta)
    assert torch.allclose(objective.to_standardised(weight, bias), theta, atol=1e-12)


@pytest.mark.parametrize("diagonal", [False, True])
def test_penalty_is_the_least_over_maps_with_the_same_probabilities(diagonal):
    """The objective's penalty is the ODIR penalty minimised over ``b + c 1`` and ``W + 1 v^T``
    (scipy's least squares on the shifts, float64), and the NLL is unchanged along those
    shifts: the objective is constant along them."""
    optimize = pytest.importorskip("scipy.optimize")
    generator, _, _, objective = random_objective(
        21,
        200,
        5,
        2.0,
        log_probs=True,
        diagonal=diagonal,
        off_diagonal_penalty=0.3,
        bias_penalty=0.7,
    )
    theta = torch.randn(5, objective.width, generator=generator, dtype=torch.float64)
    weight, bias = (t.numpy() for t in objective.to_original(theta))
    off = ~np.eye(5, dtype=bool)

    def residuals(shift):
        parts = [np.sqrt(0.7) * (bias + shift[0])]
        if not diagonal:
            shifted = weight + shift[None, 1:]
            parts.append(np.sqrt(0.3) * shifted[off])
        return np.concatenate(parts)

    least = optimize.least_squares(residuals, np.zeros(1 if diagonal else 6), xtol=1e-15)
    expected = float(np.square(least.fun).sum())
    assert objective._penalty(theta)[0] == pytest.approx(expected, rel=1e-10)
    moved = theta + torch.randn(1, objective.width, generator=generator, dtype=torch.float64)
    if diagonal:  # only the bias shift leaves a diagonal map's probabilities unchanged
        moved = theta.clone()
        moved[:, 1] += 0.8
    assert objective.value(moved) == pytest.approx(objective.value(theta), rel=1e-12)


@pytest.mark.parametrize("blocks", [True, False])
@pytest.mark.parametrize("log_probs", [False, True])
def test_lbfgs_path_agrees_with_newton_path(log_probs, blocks, monkeypatch):
    """The two solvers behind the fit land on the same optimum, Newton-CG preconditioned by the
    exact per-class blocks or (as for large K) by their corrected diagonal. Measured: objectives
    equal to 3e-16 relative, parameters within 6e-9 (Newton 5-6 iterations, L-BFGS 15-17)."""
    import torchcal._objectives.affine as affine

    if not blocks:
        monkeypatch.setattr(affine, "BLOCK_MAX_ELEMENTS", 0)
    logits, labels = distorted(1500, 6, "matrix", seed=5)
    results = {}
    for method in ("newton", "newton-cg"):
        objective = AffineObjective(
            logits,
            labels,
            log_probs=log_probs,
            diagonal=False,
            off_diagonal_penalty=1.0 / 30,
            bias_penalty=1.0 / 6,
        )
        eye = torch.eye(6, dtype=torch.float64)
        start = torch.zeros(6, dtype=torch.float64)
        result = fit_affine(objective, eye, start, tol=1e-9, max_iter=2000, method=method)
        assert result.converged and result.method == method
        results[method] = result
    newton, lbfgs = results["newton"], results["newton-cg"]
    assert lbfgs.objective == pytest.approx(newton.objective, rel=1e-12)
    assert torch.allclose(lbfgs.weight, newton.weight, atol=1e-6)
    assert torch.allclose(lbfgs.bias, newton.bias, atol=1e-6)


@pytest.mark.parametrize("method", ["newton", "newton-cg"])
@pytest.mark.parametrize("diagonal", [False, True])
def test_both_solvers_return_the_canonical_representative(method, diagonal):
    """Without penalties the optimum is a set; either solver's result is its member whose bias
    and columns' off-diagonal entries sum to zero, started from a point that is not."""
    logits, labels = distorted(1500, 5, "vector" if diagonal else "matrix", seed=9)
    objective = AffineObjective(
        logits,
        labels,
        log_probs=False,
        diagonal=diagonal,
        off_diagonal_penalty=0.0,
        bias_penalty=0.0,
    )
    eye = torch.ones(5) if diagonal else torch.eye(5)
    start = torch.arange(5, dtype=torch.float64)
    result = fit_affine(objective, eye.double(), start, tol=1e-9, max_iter=2000, method=method)
    assert result.converged and result.method == method
    assert abs(float(result.bias.sum())) <= 1e-9
    if not diagonal:
        weight = result.weight
        assert (weight.sum(dim=0) - torch.diagonal(weight)).abs().max() <= 1e-9


def test_value_and_gradient_reuses_the_last_evaluation_at_the_same_point(monkeypatch):
    """Asked again at the point of its last call (as the solver's start is, after the fit's
    check of it), the objective answers without a pass; a point changed in place is a new one."""
    generator, _, _, objective = random_objective(
        5, 200, 4, 3.0, log_probs=True, diagonal=False, off_diagonal_penalty=0.1, bias_penalty=0.1
    )
    passes = []
    evaluate = objective.evaluate
    monkeypatch.setattr(objective, "evaluate", lambda theta: passes.append(1) or evaluate(theta))
    theta = torch.randn(4, objective.width, generator=generator, dtype=torch.float64)
    value, grad = objective.value_and_gradient(theta)
    again = objective.value_and_gradient(theta.clone())
    assert len(passes) == 1 and again[0] == value and torch.equal(again[1], grad)
    theta += 0.1
    moved = objective.value_and_gradient(theta)
    assert len(passes) == 2 and moved[0] != value
    assert moved[0] == pytest.approx(objective.value(theta), rel=1e-12)


def test_corrected_diagonal_is_exact_on_its_directions():
    """The large-K preconditioner on log-probabilities is symmetric positive definite and
    inverts each class's block exactly along its correction directions (float32 products:
    about 1e-5 relative)."""
    generator, _, _, objective = random_objective(
        17,
        400,
        6,
        3.0,
        log_probs=True,
        diagonal=False,
        off_diagonal_penalty=0.05,
        bias_penalty=0.1,
    )
    theta = 0.3 * torch.randn(6, objective.width, generator=generator, dtype=torch.float64)
    precondition = objective._corrected_diagonal(theta)
    blocks = objective.hessian_blocks(theta)  # float64, the penalty's blocks included
    directions = objective._correction_directions()
    for d in range(directions.shape[2]):
        along = directions[:, :, d]
        recovered = precondition((blocks @ along[:, :, None]).squeeze(2))
        assert (recovered - along).abs().max() <= 1e-4
    n = theta.numel()
    units = torch.eye(n, dtype=torch.float64).view(n, 6, objective.width)
    matrix = torch.stack([precondition(u).flatten() for u in units])
    assert torch.allclose(matrix, matrix.T, atol=1e-10 * float(matrix.abs().max()))
    assert float(torch.linalg.eigvalsh((matrix + matrix.T) / 2).min()) > 0


def test_corrected_diagonal_conditions_the_hessian_nearly_as_well_as_its_blocks():
    """On log-probabilities of a network-like model, the corrected diagonal (its weights' part
    approximated from each class's total curvature) leaves a condition number near that of the
    exact per-class blocks, far below the plain diagonal's (computed densely in float64, the
    K + 1 directions along which the objective is constant left out). Measured: 1.36 with the
    blocks, 5.47 corrected (5.30 with the exact diagonal), 166 with the plain diagonal."""
    generator = torch.Generator().manual_seed(3)
    n, k = 1000, 20
    labels = torch.randint(0, k, (n,), generator=generator)
    logits = torch.randn(n, k, generator=generator, dtype=torch.float64)
    logits[torch.arange(n), labels] += 4 + 2 * torch.randn(n, generator=generator)
    logits *= 0.7 + 0.6 * torch.rand(k, generator=generator, dtype=torch.float64)
    objective = AffineObjective(
        logits,
        labels,
        log_probs=True,
        diagonal=False,
        off_diagonal_penalty=100 / n,
        bias_penalty=100 / n,
    )
    eye = torch.eye(k, dtype=torch.float64)
    theta = objective.to_standardised(0.6 * eye, torch.zeros(k, dtype=torch.float64))
    hessian = objective.evaluate(theta, hessian=True)[2]
    units = torch.eye(theta.numel(), dtype=torch.float64).view(-1, k, k + 1)

    def condition(precondition) -> float:
        applied = torch.stack([precondition(u).flatten() for u in units], dim=1)
        eigenvalues = torch.linalg.eigvals(applied @ hessian).real.sort().values[k + 1 :]
        return float(eigenvalues[-1] / eigenvalues[0])

    factors = torch.linalg.cholesky(objective.hessian_blocks(theta))
    blocks = condition(lambda q: torch.cholesky_solve(q[:, :, None], factors).squeeze(2))
    corrected = condition(objective._corrected_diagonal(theta))
    diagonal = objective.hessian_diagonal(theta)
    plain = condition(lambda q: q / diagonal)
    assert blocks < corrected <= 6 * blocks
    assert plain >= 10 * corrected


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_vector_scaling_matches_netcal_on_log_probabilities():
    """netcal's LogisticCalibration (multiclass: vector scaling on log(p), scipy's default
    optimiser with numerical gradients) against VectorScaler on log_softmax(z), same float64
    inputs. Measured: probabilities within 1.0e-5 of each other, netcal's NLL 1.5e-10 above
    ours, scales and (centred) biases equal to 4 decimals."""
    scaling = pytest.importorskip("netcal.scaling")
    logits, labels = distorted(3000, 5, "vector", seed=11)
    log_probs = torch.log_softmax(logits.double(), dim=1)
    ours = fit("vector", log_probs, labels, tol=1e-10)
    peer = scaling.LogisticCalibration(method="mle")
    peer.fit(torch.softmax(logits.double(), dim=1).numpy(), labels.numpy())
    peer_probs = peer.transform(torch.softmax(logits.double(), dim=1).numpy())
    probs = ours.predict_proba(log_probs).numpy()
    assert np.abs(probs - peer_probs).max() <= 1e-4

    def nll(p):
        return -np.log(p[np.arange(len(labels)), labels.numpy()]).mean()

    assert nll(probs) <= nll(peer_probs) + 1e-9  # ours is the exact optimum
    assert nll(peer_probs) - nll(probs) <= 1e-6


# ------------------------------------------------------------------ behaviour
@pytest.mark.parametrize("kind", ["vector", "matrix", "dirichlet"])
def test_calibrated_data_stay_near_the_identity(kind):
    """Labels drawn from softmax(z) itself: the fitted map is close to (W, b) = (I, 0)."""
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(20_000, 5, generator=generator) * 2
    labels = torch.multinomial(torch.softmax(logits, dim=1), 1, generator=generator).squeeze(1)
    calibrator = fit(kind, logits, labels)
    eye = torch.ones(5) if kind == "vector" else torch.eye(5)
    assert (calibrator.weight - eye).abs().max() <= 0.1
    assert calibrator.bias.abs().max() <= 0.1
    before = torch.softmax(logits, dim=1)
    assert (calibrator.predict_proba(logits) - before).abs().mean() <= 0.01
    result = calibrator.fit_result
    assert result.nll_before - result.nll_after <= 2e-3  # nothing to correct


@pytest.mark.parametrize("kind", ["vector", "matrix", "dirichlet"])
def test_fit_recovers_a_known_distortion(kind):
    logits, labels = distorted(20_000, 4, kind, seed=3)
    calibrator = fit(kind, logits, labels)
    result = calibrator.fit_result
    assert result.converged and result.calibrator == kind
    assert result.n_samples == 20_000
    assert result.n_parameters == (8 if kind == "vector" else 20)
    assert result.nll_after < result.nll_before - 0.01
    assert result.ece_after < result.ece_before


def test_default_penalties_follow_the_data_and_explicit_ones_are_kept():
    logits, labels = distorted(2000, 5, "matrix", seed=4)
    default = fit("matrix", logits, labels)
    assert default.reg_lambda is None and default.reg_mu is None
    assert default.reg_lambda_ == pytest.approx(100 * 5 * 4 / 2000)
    assert default.reg_mu_ == pytest.approx(100 * 5 / 2000)
    explicit = fit("dirichlet", logits, labels, reg_lambda=0.5, reg_mu=0.0)
    assert (explicit.reg_lambda_, explicit.reg_mu_) == (0.5, 0.0)
    assert explicit.options()["reg_lambda"] == 0.5
    rebuilt = DirichletCalibrator(**explicit.options())
    assert rebuilt.options() == explicit.options()


def test_stronger_penalty_shrinks_the_off_diagonal_weights():
    logits, labels = distorted(2000, 5, "matrix", seed=6)

    def off_diagonal(calibrator):
        weight = calibrator.weight
        return float((weight - torch.diag(torch.diagonal(weight))).abs().sum())

    norms = [off_diagonal(fit("matrix", logits, labels, reg_lambda=lam)) for lam in (0, 1, 100)]
    assert norms[0] > norms[1] > norms[2]


def test_half_precision_logits_are_fitted_and_calibrated_in_float32():
    logits, labels = distorted(3000, 4, "matrix", seed=7)
    reference = fit("matrix", logits.half().float(), labels)
    calibrator = fit("matrix", logits.half(), labels)
    assert torch.equal(calibrator.weight, reference.weight)
    out = calibrator(logits[:5].half())
    assert out.dtype == torch.float32


@pytest.mark.parametrize("kind", ["vector", "matrix", "dirichlet"])
def test_dense_maps_calibrate_along_the_class_dimension(kind):
    logits, labels = distorted(1200, 3, kind, seed=8)
    maps = logits.reshape(12, 10, 10, 3).permute(0, 3, 1, 2)  # (N, K, H, W)
    calibrator = fit(kind, maps, labels.reshape(12, 10, 10))
    rows = fit(kind, logits, labels)
    assert torch.allclose(calibrator.weight, rows.weight, atol=1e-6)
    probs = calibrator.predict_proba(maps)
    expected = rows.predict_proba(logits).reshape(12, 10, 10, 3).permute(0, 3, 1, 2)
    assert torch.allclose(probs, expected, atol=1e-6)


@pytest.mark.parametrize("kind", ["vector", "matrix", "dirichlet"])
def test_head_is_the_calibration_as_a_pure_tensor_module(kind):
    logits, labels = distorted(1000, 4, kind, seed=9)
    calibrator = fit(kind, logits, labels)
    head = calibrator.head()
    assert list(head.parameters()) == []
    assert torch.equal(head(logits), calibrator(logits))
    scripted = torch.jit.script(head)
    assert torch.allclose(scripted(logits), calibrator(logits), atol=1e-6)
    weight = calibrator.weight.clone()
    fit(kind, logits[:500], labels[:500])  # another fit elsewhere leaves the snapshot alone
    calibrator.fit(logits[:500] * 2, labels[:500], progress=False)
    assert torch.equal(head.weight, weight)


def test_affine_calibration_computes_half_inputs_in_float32():
    weight, bias = torch.eye(3) * 2, torch.zeros(3)
    out = affine_calibration(torch.ones(2, 3, dtype=torch.float16), weight, bias, True)
    assert out.dtype == torch.float32
    assert torch.allclose(out, torch.full((2, 3), 2 * -np.log(3.0)))
    double = affine_calibration(torch.ones(2, 3, dtype=torch.float64), weight, bias, False)
    assert double.dtype == torch.float64


# ------------------------------------------------------------------ warnings and errors
@pytest.mark.parametrize("kind", ["vector", "matrix", "dirichlet"])
def test_separable_data_warn_that_the_fit_ran_towards_infinity(kind):
    generator = torch.Generator().manual_seed(10)
    labels = torch.randint(0, 3, (300,), generator=generator)
    logits = torch.randn(300, 3, generator=generator) + 4 * torch.eye(3)[labels]
    with pytest.warns(CalibrationWarning, match="ran towards infinity"):
        calibrator = fit(kind, logits, labels)
    assert torch.isfinite(calibrator.weight).all() and torch.isfinite(calibrator.bias).all()


def test_divergence_is_claimed_only_where_the_optimum_is_at_infinity():
    """One class only: unpenalised vector scaling's bias runs off (warned); the penalised matrix
    map has a finite optimum even though every sample is then classified correctly."""
    logits = torch.randn(300, 3, generator=torch.Generator().manual_seed(14))
    labels = torch.zeros(300, dtype=torch.long)
    with pytest.warns(CalibrationWarning, match="narrows no sample's margin"):
        fit("vector", logits, labels)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CalibrationWarning)
        matrix = fit("matrix", logits, labels)
    # Only the one-class warning every calibrator gives: no claim of divergence.
    messages = [str(w.message) for w in caught if issubclass(w.category, CalibrationWarning)]
    assert len(messages) == 1 and "all 300 labels are class 0" in messages[0]
    assert matrix.fit_result.converged
    assert (matrix.predict_proba(logits).argmax(dim=1) == 0).all()


def test_more_parameters_than_samples_warns():
    logits, labels = distorted(60, 8, "matrix", seed=12)
    with pytest.warns(CalibrationWarning, match="72 parameters but only 60 samples"):
        fit("matrix", logits, labels)


def test_iteration_limit_is_reported():
    logits, labels = distorted(2000, 4, "matrix", seed=13)
    with pytest.warns(CalibrationWarning, match="without converging"):
        calibrator = fit("matrix", logits, labels, max_iter=1)
    assert not calibrator.fit_result.converged
    assert calibrator.fit_result.iterations == 1


def test_too_many_classes_for_a_full_matrix_is_an_error():
    logits = torch.randn(4, MAX_MATRIX_CLASSES + 1)
    labels = torch.arange(4)
    with pytest.raises(ValueError, match="VectorScaler"):
        fit("matrix", logits, labels)
    with pytest.raises(ValueError, match="diagonal=True"):
        fit("dirichlet", logits, labels)


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"reg_lambda": -1.0}, ValueError, "reg_lambda must be finite and >= 0"),
        ({"reg_mu": float("nan")}, ValueError, "reg_mu must be finite and >= 0"),
        ({"reg_lambda": "0.1"}, TypeError, "reg_lambda must be a real number or None"),
        ({"reg_mu": True}, TypeError, "reg_mu must be a real number or None"),
        ({"tol": 0.0}, ValueError, "tol must be finite and > 0"),
        ({"max_iter": 0}, ValueError, "max_iter must be >= 1"),
    ],
)
def test_bad_hyperparameters_are_rejected(options, error, match):
    with pytest.raises(error, match=match):
        DirichletCalibrator(**options)


# ------------------------------------------------------------------ properties
def seeded_logits(seed: int, n: int, k: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=generator, dtype=torch.float64) * scale
    labels = torch.multinomial(torch.softmax(logits / 1.5, dim=1), 1, generator=generator)
    return logits, labels.squeeze(1)


@settings(max_examples=8, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    k=st.integers(2, 5),
    scale=st.floats(0.5, 4.0),
    shift=st.floats(-50.0, 50.0),
)
def test_dirichlet_ignores_a_constant_added_to_each_row(seed, k, scale, shift):
    """softmax(z + c) = softmax(z): the fit and the calibration see only the probabilities."""
    logits, labels = seeded_logits(seed, 400, k, scale)
    offsets = shift * torch.linspace(-1, 1, 400, dtype=torch.float64)[:, None]
    plain = fit_quietly("dirichlet", logits, labels, tol=1e-10)
    shifted = fit_quietly("dirichlet", logits + offsets, labels, tol=1e-10)
    assert torch.allclose(shifted.weight, plain.weight, atol=1e-4)
    assert torch.allclose(
        shifted.predict_proba(logits + offsets), plain.predict_proba(logits), atol=1e-5
    )


@settings(max_examples=8, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    kind=st.sampled_from(["vector", "matrix"]),
    shift=st.floats(-20.0, 20.0),
)
def test_vector_and_matrix_absorb_a_global_shift_into_an_unpenalised_bias(seed, kind, shift):
    """z + c for one constant c: the scores move by c * w (or c * W 1), which an unpenalised
    bias cancels, so the calibrated probabilities are unchanged. (A different constant per row
    is not absorbed: the vector and matrix maps, unlike Dirichlet's, see the logits' offsets.)"""
    logits, labels = seeded_logits(seed, 400, 4, 2.0)
    options = {"tol": 1e-10} if kind == "vector" else {"tol": 1e-10, "reg_mu": 0.0}
    plain = fit_quietly(kind, logits, labels, **options)
    moved = fit_quietly(kind, logits + shift, labels, **options)
    assert torch.allclose(moved.weight, plain.weight, atol=1e-4)
    assert torch.allclose(
        moved.predict_proba(logits + shift), plain.predict_proba(logits), atol=1e-5
    )


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000), kind=st.sampled_from(["vector", "matrix", "dirichlet"]))
def test_relabelling_the_classes_permutes_the_fit(seed, kind):
    """The objective treats classes alike, so permuting them permutes the (unique) fit."""
    logits, labels = seeded_logits(seed, 400, 4, 2.0)
    permutation = torch.randperm(4, generator=torch.Generator().manual_seed(seed))
    inverse = torch.argsort(permutation)
    plain = fit_quietly(kind, logits, labels, tol=1e-10)
    permuted = fit_quietly(kind, logits[:, permutation], inverse[labels], tol=1e-10)
    expected = (
        plain.weight[permutation] if kind == "vector" else plain.weight[permutation][:, permutation]
    )
    assert torch.allclose(permuted.weight, expected, atol=1e-4)
    assert torch.allclose(permuted.bias, plain.bias[permutation], atol=1e-4)
    assert torch.allclose(
        permuted.predict_proba(logits[:, permutation]),
        plain.predict_proba(logits)[:, permutation],
        atol=1e-5,
    )


# ------------------------------------------------------------------ hopeless inputs stop early
def huge_logits() -> tuple[torch.Tensor, torch.Tensor]:
    """600 x 5 logits of +-1e30 (finite in float32) with labels unrelated to them."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(600, 5, generator=generator).sign() * 1e30
    return logits, torch.randint(0, 5, (600,), generator=generator)


def separable_logits() -> tuple[torch.Tensor, torch.Tensor]:
    """3000 x 10: every sample's label is its strict top score by a margin of 5."""
    return torch.eye(10).repeat(300, 1) * 5, torch.arange(10).repeat(300)


@pytest.mark.parametrize("kind", ["vector", "matrix", "dirichlet"])
def test_logits_of_extreme_magnitude_fit_the_exact_optimum_in_few_steps(kind):
    """+-1e30 logits used to take Newton to its iteration cap (matrix 54-128 s, Dirichlet 297 s)
    or end in "the Hessian could not be factorised" (vector). The optimum is finite (the labels
    are random), and equals scipy's on the inputs divided by 1e30, where the ODIR penalty on
    the off-diagonal weights is 1e-60 times smaller (0 to float64). Measured: probabilities
    within 3e-7 of scipy's, 3-4 Newton iterations."""
    logits, labels = huge_logits()
    with warnings.catch_warnings():
        warnings.simplefilter("error", CalibrationWarning)
        calibrator = fit(kind, logits, labels, tol=1e-10)
    result = calibrator.fit_result
    assert result.converged and result.iterations <= 10
    assert torch.isfinite(calibrator.weight).all() and torch.isfinite(calibrator.bias).all()
    x = logits.double().numpy()
    if kind == "dirichlet":
        x = log_softmax_np(x)
    reference = reference_fit(
        x / 1e30,
        labels.numpy(),
        log_probs=False,
        diagonal=kind == "vector",
        reg_lambda=0.0,
        reg_mu=calibrator.reg_mu_,
    )
    probs = calibrator.predict_proba(logits.double()).numpy()
    assert np.abs(probs - reference["probs"]).max() <= 1e-5


@pytest.mark.parametrize("kind", ["vector", "matrix", "dirichlet"])
def test_separable_classes_stop_early_with_a_warning_and_finite_parameters(kind):
    """eye(10) * 5 with each row's own label: the infimum (NLL 0) lies at infinite scales. The
    solver recognises the direction it travels as one that narrows no margin and stops within a
    few iterations (it used to run to max_iter: Dirichlet 317 s), warning with the cause."""
    logits, labels = separable_logits()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CalibrationWarning)
        calibrator = fit(kind, logits, labels)
    messages = [str(w.message) for w in caught if issubclass(w.category, CalibrationWarning)]
    # One warning that names the cause, not a second generic "without converging" one.
    assert len(messages) == 1 and "the classes are separable" in messages[0], messages
    result = calibrator.fit_result
    assert result.iterations <= 10
    assert torch.isfinite(calibrator.weight).all() and torch.isfinite(calibrator.bias).all()
    assert (calibrator.predict_proba(logits).argmax(dim=1) == labels).all()


def _separated_by_brute_force(x: np.ndarray, labels: np.ndarray, bias_penalty: bool) -> list:
    """Classes whose own column puts every one of their samples above every other sample."""
    found = []
    for k in range(x.shape[1]):
        own, other = x[labels == k, k], x[labels != k, k]
        low = own.min() if own.size else np.inf
        high = other.max() if other.size else -np.inf
        if low > high and (not bias_penalty or low >= 0 >= high):
            found.append(k)
    return found


@pytest.mark.parametrize("log_probs", [False, True])
@pytest.mark.parametrize("bias_penalty", [0.0, 0.1])
def test_separated_classes_are_those_their_own_input_separates(log_probs, bias_penalty):
    generator = torch.Generator().manual_seed(40)
    labels = torch.randint(0, 6, (400,), generator=generator)
    labels[labels == 5] = 4  # class 5 has no samples
    logits = torch.randn(400, 6, generator=generator, dtype=torch.float64)
    logits[labels == 0, 0] += 20  # class 0 above everyone else on its own logit
    logits[:, 1] -= 3  # class 1: a shift of its own column alone separates nothing
    logits[labels == 2, 2] += 20  # class 2 too, but for one sample of another class
    logits[labels != 2, 2][0] += 40
    logits[labels.nonzero()[0], 2] = 100.0
    kept = logits.clone()
    objective = AffineObjective(
        logits,
        labels,
        log_probs=log_probs,
        diagonal=True,
        off_diagonal_penalty=0.0,
        bias_penalty=bias_penalty,
        chunk_elements=60,  # several chunks
    )
    x = torch.log_softmax(logits, dim=1) if log_probs else logits
    expected = _separated_by_brute_force(x.numpy(), labels.numpy(), bias_penalty > 0)
    found = objective.separated_classes().nonzero().squeeze(1).tolist()
    assert found == expected
    assert torch.equal(logits, kept)  # the caller's float64 rows are read, never written
    if not bias_penalty:
        assert 0 in found and 5 in found and 1 not in found
        mask = objective.receding_parameters()
        assert mask.shape == (6, 2) and mask[0].all() and not mask[1].any()


def test_one_separated_class_among_others_is_named_and_the_rest_fitted():
    """A rare class above every other sample on its own logit has no finite vector-scaling
    optimum: the fit names it and stops once the other classes' derivatives are within tol."""
    generator = torch.Generator().manual_seed(41)
    labels = torch.randint(0, 8, (3000,), generator=generator)
    logits = torch.randn(3000, 8, generator=generator) + 2 * torch.eye(8)[labels]
    rare = (labels == 3).nonzero().squeeze(1)[:5]
    labels[labels == 3] = 4
    labels[rare] = 3
    logits[rare, 3] = 9.0  # far above every other sample's logit 3
    with pytest.warns(CalibrationWarning, match=r"1 of the 8 \(3\) are each separated"):
        calibrator = fit("vector", logits, labels)
    result = calibrator.fit_result
    assert not result.converged and result.iterations <= 30
    assert torch.isfinite(calibrator.weight).all() and torch.isfinite(calibrator.bias).all()
    # Every other class's parameters are at their optimum: the gradient there is within tol,
    # up to the rounding of the parameters to the calibrator's float32 buffers.
    assert calibrator.weight.dtype == torch.float32
    objective = AffineObjective(
        logits, labels, log_probs=False, diagonal=True, off_diagonal_penalty=0.0, bias_penalty=0.0
    )
    theta = objective.to_standardised(calibrator.weight.double(), calibrator.bias.double())
    _, grad = objective.value_and_gradient(theta)
    others = torch.ones(8, dtype=torch.bool)
    others[3] = False
    assert float(grad[others].abs().max()) <= 1e-6


def test_newton_stops_with_recession_once_all_but_the_receding_parameters_converged():
    from torchcal._optim.newton import Curvature, minimise

    class HalfExponential:  # f = (theta_0 - 3)^2 + exp(-theta_1): theta_1 has no minimiser
        def value_and_gradient(self, theta):
            value = float((theta[0] - 3) ** 2 + torch.exp(-theta[1]))
            return value, torch.stack([2 * (theta[0] - 3), -torch.exp(-theta[1])])

        def curvature(self, theta):
            diagonal = torch.stack([torch.full_like(theta[0], 2.0), torch.exp(-theta[1])])
            return Curvature(matrix=torch.diag(diagonal))

        def recedes(self, direction):
            return False

    result = _minimise_with_the_second_receding(HalfExponential(), tol=1e-10)
    assert result.reason == "recession" and result.iterations <= 3
    assert float(result.theta[0]) == pytest.approx(3.0, abs=1e-10)
    plain = minimise(
        HalfExponential(), torch.zeros(2, dtype=torch.float64), tol=1e-10, max_iter=100
    )
    assert plain.reason == "converged" and plain.iterations > 10


def _minimise_with_the_second_receding(problem, tol: float):
    """Newton from 0 on a two-parameter toy problem whose second parameter runs off."""
    from torchcal._optim.newton import minimise

    start = torch.zeros(2, dtype=torch.float64)
    return minimise(problem, start, tol=tol, max_iter=100, receding=torch.tensor([False, True]))


def test_parameters_coupled_to_receding_ones_converge_at_newtons_rate_once_those_are_held():
    from torchcal._optim.newton import Curvature

    class Coupled:  # f = (a - 3 - e^-b)^2 + e^-b: b runs off, a's optimum moves with e^-b
        def value_and_gradient(self, theta):
            a, fade = theta[0], torch.exp(-theta[1])
            gap = a - 3 - fade
            value = float(gap**2 + fade)
            return value, torch.stack([2 * gap, fade * (2 * gap - 1)])

        def curvature(self, theta):
            a, fade = theta[0], torch.exp(-theta[1])
            gap = a - 3 - fade
            coupling = 2 * fade
            matrix = torch.stack(
                [
                    torch.stack([torch.full_like(a, 2.0), coupling]),
                    torch.stack([coupling, fade * (1 - 2 * gap + 2 * fade)]),
                ]
            )
            return Curvature(matrix=matrix)

        def recedes(self, direction):
            return False

    result = _minimise_with_the_second_receding(Coupled(), tol=1e-12)
    # following b, a's derivative shrinks by 1/e per iteration: 17 iterations reach sqrt(tol)
    # and 28 would reach tol; with b held from there, one Newton step finishes it
    assert result.reason == "recession" and result.iterations <= 19
    assert abs(float(result.gradient[0])) <= 1e-12


# ------------------------------------------------------------------ the Newton routine itself
class _Quadratic:
    """f = |theta - 3|^2 with a Hessian that may be replaced by a broken one."""

    def __init__(self, matrix: torch.Tensor) -> None:
        self.matrix = matrix

    def value_and_gradient(self, theta):
        return float((theta - 3).square().sum()), 2 * (theta - 3)

    def curvature(self, theta):
        from torchcal._optim.newton import Curvature

        return Curvature(matrix=self.matrix)

    def recedes(self, direction):
        return False


@pytest.mark.parametrize(
    "matrix",
    [-torch.eye(3, dtype=torch.float64), torch.full((3, 3), float("nan"), dtype=torch.float64)],
    ids=["indefinite", "nan"],
)
def test_newton_survives_a_hessian_that_cannot_be_factorised(matrix):
    """No linear-algebra error escapes: the step falls back to the gradient, and the line search
    still finds the minimum."""
    from torchcal._optim.newton import minimise

    result = minimise(
        _Quadratic(matrix), torch.zeros(3, dtype=torch.float64), tol=1e-12, max_iter=50
    )
    assert result.reason == "converged"
    assert torch.allclose(result.theta, torch.full((3,), 3.0, dtype=torch.float64), atol=1e-12)


def test_newton_stops_on_recession_and_on_no_progress():
    from torchcal._optim.newton import PATIENCE, Curvature, minimise

    class Exponential:  # f = exp(-theta): infimum 0 at theta -> infinity
        def value_and_gradient(self, theta):
            return float(torch.exp(-theta).sum()), -torch.exp(-theta)

        def curvature(self, theta):
            return Curvature(matrix=torch.diag(torch.exp(-theta)))

        def recedes(self, direction):
            return bool((direction > 0).all())

    start = torch.zeros(1, dtype=torch.float64)
    receding = minimise(Exponential(), start, tol=1e-300, max_iter=1000)
    assert receding.reason == "recession" and receding.iterations <= 3

    class Flat(Exponential):  # a gradient that promises a decrease the values never show
        def value_and_gradient(self, theta):
            return 1.0, torch.ones_like(theta)

        def curvature(self, theta):
            return Curvature(matrix=torch.eye(1, dtype=torch.float64))

    stuck = minimise(Flat(), start, tol=1e-8, max_iter=1000)
    assert stuck.reason == "no progress" and stuck.iterations == PATIENCE


def test_conjugate_gradients_stop_once_no_residual_entry_exceeds_the_floor():
    """The floor stops the solve where the stopping test on the next gradient is met (the
    residual is what the quadratic model leaves of it); the residual returned is -g - H d."""
    from torchcal._optim.newton import _conjugate_gradients

    generator = torch.Generator().manual_seed(4)
    basis = torch.linalg.qr(torch.randn(60, 60, generator=generator, dtype=torch.float64))[0]
    matrix = basis @ torch.diag(torch.logspace(0, 3, 60, dtype=torch.float64)) @ basis.T
    # a gradient near the optimum: the default forcing term sqrt(|g|) asks for 3e-7 of it
    grad = 1e-13 * torch.randn(60, generator=generator, dtype=torch.float64)

    def solve(floor):
        return _conjugate_gradients(lambda v: matrix @ v, None, grad, floor=floor)

    exact, exact_used, _ = solve(0.0)
    assert float((matrix @ exact + grad).norm()) <= 1e-6 * float(grad.norm())
    floor = 1e-2 * float(grad.abs().max())
    direction, used, residual = solve(floor)
    assert float(residual.abs().max()) <= floor
    assert torch.allclose(residual, -grad - matrix @ direction, rtol=0, atol=1e-20)
    assert used < exact_used


def test_the_forcing_term_measures_how_far_the_last_steps_model_missed():
    """Eisenstat and Walker's choice 1, with its safeguards: the model's gradient after a step
    t d is (1 - t) g - t r; a term may not fall below the previous one to the power 1.618 while
    that is above 0.1, and is at most 0.5."""
    from torchcal._optim.newton import _forcing_term

    g = torch.tensor([3.0, 4.0], dtype=torch.float64)  # |g| = 5
    r = torch.tensor([0.0, 0.5], dtype=torch.float64)
    new = torch.tensor([1.0, 0.0], dtype=torch.float64)
    assert _forcing_term(g, r, 1.0, new, None) == pytest.approx(0.1, rel=1e-12)  # |1 - 0.5| / 5
    # half a step: the model's gradient is (1.5, 2) - (0, 0.25), |.| = 2.3049
    half = float(torch.tensor([1.5, 1.75], dtype=torch.float64).norm())
    assert _forcing_term(g, r, 0.5, new, None) == pytest.approx((half - 1) / 5, rel=1e-12)
    assert _forcing_term(g, r, 1.0, new, 0.4) == pytest.approx(0.4**1.6180339887, rel=1e-9)
    assert _forcing_term(g, r, 1.0, new, 0.2) == pytest.approx(0.1, rel=1e-12)  # 0.074 < 0.1
    assert _forcing_term(g, r, 1.0, 10 * new, None) == 0.5


def test_newton_cg_solves_no_more_exactly_than_its_last_step_justified(monkeypatch):
    """The adaptive forcing term against the fixed min(0.5, sqrt|g|) on a Dirichlet fit: no more
    Hessian-vector products (measured: 13 against 16 at 2,000 x 30; 25 against 36 at 20,000 x
    1,000, in as many Newton steps) and the same optimum."""
    import torchcal._optim.newton as newton

    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 30, (2000,), generator=generator)
    logits = torch.randn(2000, 30, generator=generator)
    logits[torch.arange(2000), labels] += 4 + 2 * torch.randn(2000, generator=generator)
    logits *= 0.7 + 0.6 * torch.rand(30, generator=generator)
    solve, forcing_term = newton._conjugate_gradients, newton._forcing_term
    results = {}
    for adaptive in (True, False):
        products = []
        monkeypatch.setattr(newton, "_forcing_term", forcing_term if adaptive else lambda *_: None)

        def counted(*args, products=products, **options):
            out = solve(*args, **options)
            products.append(out[1])
            return out

        monkeypatch.setattr(newton, "_conjugate_gradients", counted)
        objective = AffineObjective(
            logits, labels, log_probs=True, diagonal=False, off_diagonal_penalty=1e-3,
            bias_penalty=1e-3,
        )  # fmt: skip
        eye, zeros = torch.eye(30, dtype=torch.float64), torch.zeros(30, dtype=torch.float64)
        fitted = fit_affine(objective, eye, zeros, tol=1e-8, max_iter=100, method="newton-cg")
        assert fitted.converged
        results[adaptive] = (sum(products), fitted)
    (adaptive_products, adaptive), (fixed_products, fixed) = results[True], results[False]
    assert adaptive_products <= fixed_products
    assert adaptive.objective == pytest.approx(fixed.objective, rel=1e-12)
    assert torch.allclose(adaptive.weight, fixed.weight, atol=1e-6)


@pytest.mark.parametrize("cached", [True, False])
@pytest.mark.parametrize("diagonal", [False, True])
def test_hessian_products_match_the_formed_hessian(cached, diagonal, monkeypatch):
    """Newton-CG's float32 Hessian-vector products (summed in float64) and the diagonal that
    preconditions them, with the rows kept or recomputed per pass, against the float64 Hessian.
    They only shape the steps; float32 products promise about 1e-6 relative."""
    import torchcal._objectives.affine as affine

    if not cached:
        monkeypatch.setattr(affine, "CACHE_ELEMENTS", 0)
    monkeypatch.setattr(affine, "PRODUCT_CHUNK_ELEMENTS", 256)  # several chunks
    generator, _, _, objective = random_objective(
        16,
        300,
        4,
        3.0,
        log_probs=True,
        diagonal=diagonal,
        off_diagonal_penalty=0.3,
        bias_penalty=0.7,
        chunk_elements=64,
    )
    assert (objective._cache is not None) == cached
    theta = torch.randn(4, objective.width, generator=generator, dtype=torch.float64)
    vector = torch.randn(4, objective.width, generator=generator, dtype=torch.float64)
    _, _, hess = objective.evaluate(theta, hessian=True)
    expected = (hess @ vector.flatten()).view_as(vector)
    product = objective._hessian_product(theta)
    scale = float(expected.abs().max())
    assert (product(vector) - expected).abs().max() <= 1e-5 * scale
    assert (product(vector) - expected).abs().max() <= 1e-5 * scale  # reusable
    diagonal_part = objective.hessian_diagonal(theta).flatten()
    assert (diagonal_part - hess.diagonal()).abs().max() <= 1e-5 * float(hess.diagonal().max())
