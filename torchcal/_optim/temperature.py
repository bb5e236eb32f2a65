"""Exact one-dimensional solvers for the temperature-scaling objective.

Both work on :class:`~torchcal._objectives.temperature.SoftmaxTemperatureNLL`
(or any object with the same
``evaluate``/``subsample`` interface) and stop when the predicted distance to the optimum, relative
to T, is below ``rtol``:

* ``"lbfgs"`` (default): ``torch.optim.LBFGS`` with a strong-Wolfe line search on ``log T`` (so
  T > 0 by construction), rescaled by the curvature at a warm start so that its first step is a
  Newton step.
* ``"newton"``: safeguarded Newton on ``beta = 1/T``, where the objective is convex, keeping a
  bracket of the optimum and falling back to bisection whenever a step leaves it.

Both start from the same warm start (:func:`warm_start`): the optimum on an evenly strided
subsample of the rows, then one step on all of them that uses the NLL's first four derivatives
(a Taylor step, whose error shrinks like the fourth power of its length). It usually lands so
close to the optimum that the solver's first evaluation, which it needs anyway for the fit's
report, already meets ``rtol``: the solver then only verifies, and LBFGS, which would stop at
that first evaluation too, is never built (building a ``torch.optim`` optimiser imports
``torch._dynamo`` on first use, about 1.5 s once per process).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch

from torchcal._objectives.temperature import Evaluation, SoftmaxTemperatureNLL

#: The warm start runs on every ``step``-th sample, ``step`` at most WARM_START_FRACTION and small
#: enough to leave at least WARM_START_MIN_ROWS samples (no subsample below twice that)...
WARM_START_MIN_ROWS = 2048
WARM_START_FRACTION = 16
#: ... and only for at least this many logits: below it a pass costs less than the fixed cost of
#: an evaluation, and the Taylor steps run on all the rows.
WARM_START_MIN_ELEMENTS = 1 << 20
#: The subsample's Taylor steps stop at a step below this, relative to beta: where that step
#: leads is its optimum to about 1e-5, far better than it estimates the full data's (to about
#: 1/sqrt(rows)).
SUBSAMPLE_RTOL = 5e-2
#: The warm start ends with a Taylor step on all the rows no longer than this, relative to beta:
#: such a step lands within about 1e-8 of the optimum (its error is about the step's fourth
#: power), so that the solver's first evaluation meets the usual tolerances.
FINAL_STEP_RTOL = 2e-2
#: Newton iterations on the Taylor model's root (a cheap scalar polynomial).
TAYLOR_ROOT_ITERATIONS = 20


@dataclass(frozen=True)
class Solution:
    """Where a solver stopped and how it got there."""

    evaluation: Evaluation  # at the returned beta, with reliability-bin sums
    iterations: int
    evaluations: int  # full-data passes spent by the solver, the warm start excluded
    converged: bool
    bound: str | None  # "lower" or "upper" temperature bound if the optimum lies beyond it

    @property
    def temperature(self) -> float:
        return 1.0 / self.evaluation.beta


def newton_on_beta(
    objective: SoftmaxTemperatureNLL,
    *,
    temperature_bounds: tuple[float, float],
    rtol: float,
    max_iter: int,
    start_beta: float = 1.0,
    bins: bool = True,
) -> Solution:
    """Safeguarded Newton's method on ``beta = 1/T`` within ``temperature_bounds``.

    ``bins=False`` skips the reliability-bin sums that the fit's report needs (for warm starts).
    """
    beta_min, beta_max = 1.0 / temperature_bounds[1], 1.0 / temperature_bounds[0]
    low, high = beta_min, beta_max  # bracket of the optimum
    beta = min(max(start_beta, beta_min), beta_max)
    passes_before = objective.passes
    evaluation = objective.evaluate(beta, hessian=True, bins=bins)
    for iteration in range(1, max_iter + 1):
        grad, hess = evaluation.grad, evaluation.hess
        if grad > 0:
            high = beta
        else:
            low = beta
        if beta == beta_min and grad > 0:
            return _solution(evaluation, iteration, objective, passes_before, True, "upper")
        if beta == beta_max and grad < 0:
            return _solution(evaluation, iteration, objective, passes_before, True, "lower")
        step = -grad / hess if hess is not None and hess > 0 else math.nan
        if abs(step) <= rtol * beta:
            return _solution(evaluation, iteration, objective, passes_before, True, None)
        proposal = beta + step
        if proposal <= beta_min or proposal >= beta_max:
            proposal = beta_min if proposal <= beta_min else beta_max
        elif not low < proposal < high:
            proposal = math.sqrt(low * high)  # bisection in log T
        beta = proposal
        evaluation = objective.evaluate(beta, hessian=True, bins=bins)
    return _solution(evaluation, max_iter, objective, passes_before, False, None)


def _solution(
    evaluation: Evaluation,
    iterations: int,
    objective: SoftmaxTemperatureNLL,
    passes_before: int,
    converged: bool,
    bound: str | None,
) -> Solution:
    return Solution(evaluation, iterations, objective.passes - passes_before, converged, bound)


def taylor_step(evaluation: Evaluation) -> float:
    """The step in beta to the root of the cubic Taylor model of dNLL/dbeta at ``evaluation``.

    The model is ``g + h s + t s^2 / 2 + q s^3 / 6`` (the NLL's first four derivatives). Its root
    is found by Newton's method from the Newton step ``-g / h``, and returned only if the model
    increases there, on the Newton step's side and at most twice as far; otherwise the Newton
    step is returned (NaN without a positive curvature).

    Example:
        >>> from torchcal._objectives.temperature import Evaluation
        >>> # NLL = exp(beta) - 2 beta around beta = 0: optimum at log 2 = 0.693147...
        >>> at_zero = Evaluation(0.0, 1.0, -1.0, 1.0, None, third=1.0, fourth=1.0)
        >>> round(taylor_step(at_zero), 6), -at_zero.grad / at_zero.hess
        (0.698885, 1.0)
    """
    grad, hess = evaluation.grad, evaluation.hess
    third, fourth = evaluation.third, evaluation.fourth
    if hess is None or not hess > 0 or not math.isfinite(grad / hess):
        return math.nan
    newton = -grad / hess
    if third is None or fourth is None or not (math.isfinite(third) and math.isfinite(fourth)):
        return newton
    step = newton
    for _ in range(TAYLOR_ROOT_ITERATIONS):
        value = grad + step * (hess + step * (third / 2 + step * fourth / 6))
        slope = hess + step * (third + step * fourth / 2)
        if not slope > 0:
            return newton
        update = value / slope
        step -= update
        if abs(update) <= 1e-12 * abs(step):
            break
    else:
        return newton
    if not (step * newton > 0 and abs(step) <= 2 * abs(newton)):
        return newton
    return step


def _taylor_search(
    objective: SoftmaxTemperatureNLL,
    beta: float,
    *,
    beta_range: tuple[float, float],
    rtol: float,
    max_iter: int,
) -> float:
    """Safeguarded Taylor steps from ``beta`` until one is below ``rtol * beta``; where it leads.

    Keeps a bracket of the optimum and bisects (in log T) whenever a step leaves it; returns a
    bound of ``beta_range`` if the optimum lies beyond it.
    """
    beta_min, beta_max = beta_range
    low, high = beta_min, beta_max
    for _ in range(max_iter):
        evaluation = objective.evaluate(beta, taylor=True)
        grad = evaluation.grad
        if not math.isfinite(grad):
            return beta
        if grad > 0:
            high = beta
        else:
            low = beta
        if (beta == beta_min and grad > 0) or (beta == beta_max and grad < 0):
            return beta
        proposal = beta + taylor_step(evaluation)
        if proposal <= beta_min or proposal >= beta_max:
            proposal = beta_min if proposal <= beta_min else beta_max
        elif not low < proposal < high:  # also a NaN step
            proposal = math.sqrt(low * high)  # bisection in log T
        if abs(proposal - beta) <= rtol * beta:
            return proposal
        beta = proposal
    return beta


def warm_start(
    objective: SoftmaxTemperatureNLL, temperature_bounds: tuple[float, float], max_iter: int
) -> float:
    """A ``beta`` close to the optimum: Taylor steps on a subsample, then one on all the rows.

    Without a subsample (small data) the Taylor steps run on all the rows from ``beta = 1``.
    Every full-data step counts in ``objective.passes``; the subsample's steps are a fraction
    of a pass each and do not.
    """
    beta_range = (1.0 / temperature_bounds[1], 1.0 / temperature_bounds[0])
    beta = min(max(1.0, beta_range[0]), beta_range[1])
    step = max(1, min(WARM_START_FRACTION, objective.n_samples // WARM_START_MIN_ROWS))
    row_width = math.prod(objective.source.shape[1:])
    if step > 1 and objective.n_samples * row_width >= WARM_START_MIN_ELEMENTS:
        sample = objective.subsample(step)
        beta = _taylor_search(
            sample, beta, beta_range=beta_range, rtol=SUBSAMPLE_RTOL, max_iter=max_iter
        )
    return _taylor_search(
        objective, beta, beta_range=beta_range, rtol=FINAL_STEP_RTOL, max_iter=max_iter
    )


def lbfgs_on_log_temperature(
    objective: SoftmaxTemperatureNLL,
    *,
    temperature_bounds: tuple[float, float],
    rtol: float,
    max_iter: int,
    start_beta: float = 1.0,
) -> Solution:
    """``torch.optim.LBFGS`` (strong Wolfe) on ``u = log T``, scaled so its first step is Newton's.

    The parameter is ``x`` with ``u = u0 + scale * x`` and ``scale = 1 / sqrt(d2NLL/du2)`` at the
    start, so the objective has unit curvature in ``x`` and LBFGS's gradient tolerance
    ``rtol / scale`` bounds the Newton distance to the optimum in ``log T`` by ``rtol``.
    """
    beta_min, beta_max = 1.0 / temperature_bounds[1], 1.0 / temperature_bounds[0]
    passes_before = objective.passes
    start = objective.evaluate(start_beta, hessian=True, bins=True)
    bound = _bound_beyond(start, beta_min, beta_max)
    if bound is not None:
        return _solution(start, 0, objective, passes_before, True, bound)

    u0 = -math.log(start_beta)
    curvature = start_beta**2 * start.hess + start_beta * start.grad  # d2NLL/du2
    if not curvature > 0:
        curvature = start_beta**2 * start.hess if start.hess > 0 else 1.0
    scale = 1.0 / math.sqrt(curvature)

    def distance(evaluation: Evaluation) -> float:
        """Newton's estimate of |log T - log T*|, with the curvature taken at the start."""
        return scale**2 * evaluation.beta * abs(evaluation.grad)

    if distance(start) <= rtol:
        # LBFGS would evaluate the start, find it within the tolerance and stop: skip building it
        return _solution(start, 0, objective, passes_before, True, None)
    x = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [x],
        lr=1.0,
        max_iter=max_iter,
        max_eval=2 * max_iter,
        tolerance_grad=rtol / scale,
        tolerance_change=1e-15,
        history_size=10,
        line_search_fn="strong_wolfe",
    )
    cache: dict[float, Evaluation] = {0.0: start}

    def evaluate_at(position: float) -> Evaluation:
        if position not in cache:
            log_t = min(max(u0 + scale * position, -700.0), 700.0)
            evaluation = objective.evaluate(math.exp(-log_t), bins=True)
            best = min(cache.values(), key=distance)
            cache.clear()  # keep the best evaluation and the newest
            cache.update({position: evaluation, best_position(best): best})
        return cache[position]

    def best_position(evaluation: Evaluation) -> float:
        return (-math.log(evaluation.beta) - u0) / scale

    def closure() -> torch.Tensor:
        evaluation = evaluate_at(float(x.detach()))
        if distance(evaluation) <= rtol:
            # Near the optimum NLL differences fall below float32 rounding and the line search
            # cannot resolve them, while the gradient still can: stop on the gradient.
            raise _Converged
        # dNLL/dx = dNLL/dbeta * dbeta/du * du/dx, with dbeta/du = -beta
        x.grad = torch.tensor([-scale * evaluation.beta * evaluation.grad], dtype=torch.float64)
        return torch.tensor(evaluation.nll, dtype=torch.float64)

    with contextlib.suppress(_Converged):
        optimizer.step(closure)
    final = min(cache.values(), key=distance)
    iterations = int(optimizer.state[x].get("n_iter", 0))
    converged = distance(final) <= rtol
    bound = _bound_beyond(final, beta_min, beta_max, clamp_only=True)
    if bound is not None:
        clamped = beta_max if bound == "lower" else beta_min
        final = objective.evaluate(clamped, bins=True)
    elif not converged:
        # LBFGS can stall on an objective that is flat in curvature (linear in beta, as for
        # logits so large that every softmax is one-hot). The NLL is convex in beta, so the
        # slope's sign at the bound it heads for decides exactly whether the optimum lies beyond.
        edge = objective.evaluate(beta_min if final.grad > 0 else beta_max, bins=True)
        bound = _bound_beyond(edge, beta_min, beta_max)
        if bound is not None:
            final, converged = edge, True
    return _solution(final, iterations, objective, passes_before, converged, bound)


class _Converged(Exception):
    """Raised inside the LBFGS closure once an evaluation meets the tolerance."""


def _bound_beyond(
    evaluation: Evaluation, beta_min: float, beta_max: float, clamp_only: bool = False
) -> str | None:
    """Which temperature bound the optimum lies beyond, judged at ``evaluation``."""
    beta = evaluation.beta
    if beta >= beta_max and (clamp_only or evaluation.grad < 0):
        return "lower"
    if beta <= beta_min and (clamp_only or evaluation.grad > 0):
        return "upper"
    return None


def solve_temperature(
    objective: SoftmaxTemperatureNLL,
    *,
    method: str,
    temperature_bounds: tuple[float, float],
    rtol: float,
    max_iter: int,
) -> Solution:
    """Minimise the NLL over T with ``method`` ("lbfgs" or "newton") from a subsample warm start."""
    start_beta = warm_start(objective, temperature_bounds, max_iter)
    solver = lbfgs_on_log_temperature if method == "lbfgs" else newton_on_beta
    return solver(
        objective,
        temperature_bounds=temperature_bounds,
        rtol=rtol,
        max_iter=max_iter,
        start_beta=start_beta,
    )
