"""Exact one-dimensional solvers for the temperature-scaling objective.

Both work on :class:`~torchcal._objective.SoftmaxTemperatureNLL` (or any object with the same
``evaluate``/``subsample`` interface) and stop when the predicted distance to the optimum, relative
to T, is below ``rtol``:

* ``"lbfgs"`` (default): ``torch.optim.LBFGS`` with a strong-Wolfe line search on ``log T`` (so
  T > 0 by construction), rescaled by the curvature at a warm start so that its first step is a
  Newton step. The warm start is the exact optimum on an evenly strided subsample.
* ``"newton"``: safeguarded Newton on ``beta = 1/T``, where the objective is convex, keeping a
  bracket of the optimum and falling back to bisection whenever a step leaves it.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch

from torchcal._objective import Evaluation, SoftmaxTemperatureNLL

#: The warm start runs on every ``step``-th sample, ``step`` at most WARM_START_FRACTION and small
#: enough to leave at least WARM_START_MIN_ROWS samples (no subsample below twice that).
WARM_START_MIN_ROWS = 2048
WARM_START_FRACTION = 16
#: Relative accuracy of the warm start in T; the full-data solver polishes it to ``rtol``.
WARM_START_RTOL = 1e-4


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


def warm_start(
    objective: SoftmaxTemperatureNLL, temperature_bounds: tuple[float, float], max_iter: int
) -> float:
    """Exact ``beta`` (to ``WARM_START_RTOL``) on an evenly strided subsample of the rows."""
    step = max(1, min(WARM_START_FRACTION, objective.n_samples // WARM_START_MIN_ROWS))
    sample = objective.subsample(step)
    solution = newton_on_beta(
        sample,
        temperature_bounds=temperature_bounds,
        rtol=WARM_START_RTOL,
        max_iter=max_iter,
        bins=False,
    )
    return solution.evaluation.beta  # without a subsample its passes were over the full data


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

    def distance(evaluation: Evaluation) -> float:
        """Newton's estimate of |log T - log T*|, with the curvature taken at the start."""
        return scale**2 * evaluation.beta * abs(evaluation.grad)

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
