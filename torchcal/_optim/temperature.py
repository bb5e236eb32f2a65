"""Exact one-dimensional solvers for the temperature-scaling objective.

Both work on :class:`~torchcal._objectives.temperature.SoftmaxTemperatureNLL`
(or any object with the same ``evaluate``/``subsample`` interface) and stop by the shared rule of
:mod:`torchcal._optim.stopping`, when the predicted distance to the optimum, relative to T, is
below ``rtol``:

* ``"lbfgs"`` (default): the L-BFGS driver of :mod:`torchcal._optim.lbfgs` (``torch.optim.LBFGS``
  with a strong-Wolfe line search) on ``log T`` (so T > 0 by construction), rescaled by the
  curvature at a warm start so that its first step is a Newton step.
* ``"newton"``: :func:`~torchcal._optim.newton.bracketed_newton` on ``beta = 1/T``, where the
  objective is convex: Newton steps kept inside a bracket of the optimum, bisection whenever a
  step leaves it.

:func:`fit_temperature` first decides the degenerate cases from the data's exact facts, then
runs :func:`solve_temperature`.

Both start from the same warm start (:func:`warm_start`): the optimum on an evenly strided
subsample of the rows (for small data: the validating pass's derivatives at T = 1), then steps on
all of them that use the NLL's first four derivatives (Taylor steps, whose error shrinks like the
fourth power of their length; once two points bracket the optimum, steps to the root of the
Hermite interpolant of the derivatives at both) until the step at an evaluated point meets
``rtol``. That last
evaluation carries what the fit's report needs, and the objective hands it to the solver again
without a pass (see ``evaluate``): the solver then only verifies, and LBFGS, which would stop at
that first evaluation too, is never built (building a ``torch.optim`` optimiser imports
``torch._dynamo`` on first use, about 1.5 s once per process).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from torchcal._objectives.temperature import (
    START_MOMENTS_MAX_ELEMENTS,
    Evaluation,
    SigmoidTemperatureNLL,
    SoftmaxTemperatureNLL,
)
from torchcal._optim.hermite import Node, root_between
from torchcal._optim.lbfgs import minimise_lbfgs
from torchcal._optim.newton import bracketed_newton
from torchcal._optim.stopping import CONVERGED, ITERATION_LIMIT, Stopping

_Objective = SoftmaxTemperatureNLL | SigmoidTemperatureNLL

#: The warm start runs on every ``step``-th sample, ``step`` at most WARM_START_FRACTION and small
#: enough to leave at least WARM_START_MIN_ROWS samples (no subsample below twice that)...
WARM_START_MIN_ROWS = 2048
WARM_START_FRACTION = 16
#: ... and only for at least this many logits: below it a pass costs less than the fixed cost of
#: an evaluation, and the Taylor steps run on all the rows, from the validating pass's at T = 1.
WARM_START_MIN_ELEMENTS = START_MOMENTS_MAX_ELEMENTS
#: The subsample's Taylor steps stop at a step below this, relative to beta: where that step
#: leads is its optimum to about 1e-5, far better than it estimates the full data's (to about
#: 1/sqrt(rows)).
SUBSAMPLE_RTOL = 5e-2
#: A Taylor step on all the rows no longer than this, relative to beta, lands within about 1e-8
#: of the optimum (its error is about the step's fourth power): the evaluation there is probably
#: the last, so it computes the reliability bins the report needs instead of the third and fourth
#: derivatives (the Newton step is as good there).
FINAL_STEP_RTOL = 2e-2
#: Where the Hermite step (from a bracket) and the Taylor step lead to points this close,
#: relative to beta, the next evaluation is probably the last and carries the reliability bins.
FINAL_AGREEMENT = 1e-4
#: Newton iterations on the Taylor model's root (a cheap scalar polynomial).
TAYLOR_ROOT_ITERATIONS = 20


@dataclass(frozen=True)
class Solution:
    """Where a solver stopped and how it got there."""

    evaluation: Evaluation  # at the returned beta, with reliability-bin sums
    iterations: int
    #: the solver's evaluations on all the data: the first may be the warm start's last one,
    #: handed over without a second pass
    evaluations: int
    converged: bool
    bound: str | None  # "lower" or "upper" temperature bound if the optimum lies beyond it

    @property
    def temperature(self) -> float:
        return 1.0 / self.evaluation.beta


def newton_on_beta(
    objective: _Objective,
    *,
    temperature_bounds: tuple[float, float],
    rtol: float,
    max_iter: int,
    start_beta: float = 1.0,
    bins: bool = True,
) -> Solution:
    """Newton's method on ``beta = 1/T`` within ``temperature_bounds``, safeguarded by a bracket.

    Args:
        objective: the temperature NLL.
        temperature_bounds: the range T is kept in.
        rtol: the Newton step's length, relative to beta, at which it stops.
        max_iter: Newton iterations at most.
        start_beta: where it starts.
        bins: also compute the reliability-bin sums the fit's report needs (``False`` for warm
            starts).
    """
    evaluated: list[Evaluation] = []

    def slope_and_step(beta: float) -> tuple[float, float]:
        evaluated.append(objective.evaluate(beta, hessian=True, bins=bins))
        grad, hess = evaluated[-1].grad, evaluated[-1].hess
        return grad, -grad / hess if hess is not None and hess > 0 else math.nan

    found = bracketed_newton(
        slope_and_step,
        start_beta,
        bounds=_beta_range(temperature_bounds),
        stopping=Stopping(rtol, max_iter),
    )
    if found.reason == ITERATION_LIMIT:  # where the last step led is not evaluated yet
        evaluated.append(objective.evaluate(found.x, hessian=True, bins=bins))
    bound = _TEMPERATURE_BOUND.get(found.bound or "")
    converged = found.reason in (CONVERGED, "bound")
    return Solution(evaluated[-1], found.iterations, len(evaluated), converged, bound)


#: The temperature bound beyond which the optimum lies, by the end of beta's range it meets.
_TEMPERATURE_BOUND = {"low": "upper", "high": "lower"}


def _beta_range(temperature_bounds: tuple[float, float]) -> tuple[float, float]:
    """The range of ``beta = 1/T`` for ``temperature_bounds``."""
    return 1.0 / temperature_bounds[1], 1.0 / temperature_bounds[0]


def taylor_step(evaluation: Evaluation) -> float:
    """The step in beta to the root of the cubic Taylor model of dNLL/dbeta at ``evaluation``.

    The model is ``g + h s + t s^2 / 2 + q s^3 / 6`` (the NLL's first four derivatives). Its root
    is found by Newton's method from the Newton step ``-g / h``, and returned only if the model
    increases there, on the Newton step's side and at most twice as far; otherwise the Newton
    step is returned (NaN without a positive curvature).

    Args:
        evaluation: the NLL's derivatives at one beta, the third and fourth included.

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


#: Steps in log T at least this long are not taken (exp would overflow).
LOG_STEP_MAX = 700.0


def log_temperature_step(evaluation: Evaluation) -> float:
    """The step in beta to where :func:`taylor_step`'s model, built in ``u = log T = -log beta``
    instead of beta, has its root; NaN if there is none (or it is :data:`LOG_STEP_MAX` or longer).

    With ``beta = exp(-u)`` the NLL's derivatives in ``u`` follow from those in beta (``g, h, t,
    q``): ``-b g``, ``b g + b^2 h``, ``-b g - 3 b^2 h - b^3 t`` and ``b g + 7 b^2 h + 6 b^3 t +
    b^4 q``. A confident model's slope in beta has a knee between T = 1 and its optimum (its
    large-margin rows saturate), which a polynomial in beta fits poorly and one in ``log T`` far
    better: the README's digits model, T* = 1.83, from T = 1: 1.5% off in ``log T``, 17% off from
    the interpolant across ``[0, 1]`` in beta.

    Args:
        evaluation: the NLL's derivatives at one beta, the third and fourth included.

    Example:
        >>> import math
        >>> from torchcal._objectives.temperature import Evaluation
        >>> # NLL = (log T - log 2)^2 / 2 from T = 1: its derivatives in beta there
        >>> log2 = math.log(2)
        >>> at_one = Evaluation(1.0, 0.0, log2, 1 - log2, None, third=2 * log2 - 3,
        ...                     fourth=11 - 6 * log2)
        >>> round(1 + log_temperature_step(at_one), 12)  # beta* = 1/2
        0.5
    """
    b, g, h = evaluation.beta, evaluation.grad, evaluation.hess
    t, q = evaluation.third, evaluation.fourth
    if h is None or t is None or q is None:
        return math.nan
    in_log_temperature = Evaluation(
        b,
        evaluation.nll,
        -b * g,
        b * g + b * b * h,
        None,
        third=-b * g - 3 * b * b * h - b**3 * t,
        fourth=b * g + 7 * b * b * h + 6 * b**3 * t + b**4 * q,
    )
    step = taylor_step(in_log_temperature)
    if not abs(step) < LOG_STEP_MAX:  # NaN too: no step
        return math.nan
    return b * math.expm1(-step)


def _taylor_search(
    objective: _Objective,
    beta: float,
    *,
    beta_range: tuple[float, float],
    rtol: float,
    max_iter: int,
    land: bool,
) -> float:
    """Safeguarded Taylor steps (:func:`taylor_step`) from ``beta`` until one is below
    ``rtol * beta``: where that step leads with ``land`` (a bound of ``beta_range`` if the optimum
    lies beyond it), else where it starts.

    Once two points (the slope at ``beta = 0``, known exactly from the validating pass, counts
    as one) bracket the optimum, a step that is not yet below ``rtol`` goes instead to the root
    of the Hermite interpolant of the slope and its derivatives at the newest point and the
    nearest one across the optimum (:func:`~torchcal._optim.hermite.root_between`): from about
    5% away it lands within about 1e-7, where a Taylor step lands within 1e-6 (one pass fewer
    at the default ``tol``). Where that nearest one is ``beta = 0``, whose slope alone is known,
    the interpolant falls short of a knee in the slope, and the Taylor step in ``log T``
    (:func:`log_temperature_step`) goes further if it stays inside the bracket: the longer of the
    two is taken (a step past the optimum is caught by the next slope's sign, and the Hermite
    step between two evaluated points follows). On eighteen problems this took the README's
    digits model from 6 passes to 3 and two others from 5 to 4, and no problem took more.

    Without ``land`` the search is the solver's first stage: an evaluation that is probably the
    last (after a step shorter than :data:`FINAL_STEP_RTOL`, or where the Hermite and Taylor
    steps agree to :data:`FINAL_AGREEMENT`) carries the reliability bins (and the Newton step,
    as good as Taylor's there, decides) rather than the higher derivatives.
    """
    seen: list[Node] = [(0.0, [objective.grad_at_zero])]
    final_next = [False]

    def slope_and_step(at: float) -> tuple[float, float]:
        final = not land and final_next[0]
        evaluation = objective.evaluate(at, hessian=True, bins=final, taylor=not final)
        step = taylor_step(evaluation)
        known = [evaluation.grad, evaluation.hess, evaluation.third, evaluation.fourth]
        derivatives = list(itertools.takewhile(_is_finite, known))
        across = [node for node in seen if (node[1][0] > 0) != (evaluation.grad > 0)]
        seen.append((at, derivatives))
        final_next[0] = abs(step) <= FINAL_STEP_RTOL * at
        if across and len(derivatives) > 1 and not abs(step) <= rtol * at:
            partner = min(across, key=lambda node: abs(node[0] - at))
            nodes = sorted([partner, (at, derivatives)])
            bracket = (partner[0], at) if evaluation.grad > 0 else (at, partner[0])
            root = root_between(nodes, *bracket, start=at + step)  # from Taylor's guess
            if len(partner[1]) == 1:  # beta = 0, its slope alone known: the longer step
                further = at + log_temperature_step(evaluation)
                if bracket[0] < further < bracket[1] and not abs(further - at) <= abs(root - at):
                    root = further  # also where the interpolant has no root (NaN)
            if abs(root - at) > rtol * at:  # NaN fails: no root, keep Taylor's step
                # NaN step fails the agreement too
                final_next[0] |= abs(root - (at + step)) <= FINAL_AGREEMENT * at
                return evaluation.grad, root - at
        return evaluation.grad, step

    stopping = Stopping(rtol, max_iter)
    return bracketed_newton(slope_and_step, beta, bounds=beta_range, stopping=stopping, land=land).x


def _is_finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def warm_start(
    objective: _Objective, temperature_bounds: tuple[float, float], max_iter: int, rtol: float
) -> float:
    """A ``beta`` at the optimum: Taylor steps on a subsample, then on all the rows until one
    meets ``rtol``.

    Without a subsample (small data) the steps on all the rows start at ``beta = 1``, from the
    validating pass's derivatives. Every full-data evaluation counts in ``objective.passes``;
    the subsample's are a fraction of a pass each and do not. The last one, at the returned
    ``beta``, carries the reliability bins, so the solver that starts there reuses it.

    Args:
        objective: the temperature NLL.
        temperature_bounds: the range T is kept in.
        max_iter: Taylor steps per search at most.
        rtol: the step's length, relative to beta, at which the search on all the rows stops.
    """
    beta_range = _beta_range(temperature_bounds)
    beta = min(max(1.0, beta_range[0]), beta_range[1])
    step = max(1, min(WARM_START_FRACTION, objective.n_samples // WARM_START_MIN_ROWS))
    row_width = math.prod(objective.source.shape[1:])
    if step > 1 and objective.n_samples * row_width >= WARM_START_MIN_ELEMENTS:
        sample = objective.subsample(step)
        beta = _taylor_search(
            sample, beta, beta_range=beta_range, rtol=SUBSAMPLE_RTOL, max_iter=max_iter, land=True
        )
    return _taylor_search(
        objective, beta, beta_range=beta_range, rtol=rtol, max_iter=max_iter, land=False
    )


def lbfgs_on_log_temperature(
    objective: _Objective,
    *,
    temperature_bounds: tuple[float, float],
    rtol: float,
    max_iter: int,
    start_beta: float = 1.0,
) -> Solution:
    """L-BFGS (:func:`~torchcal._optim.lbfgs.minimise_lbfgs`) on ``u = log T``, scaled so its
    first step is Newton's.

    The parameter is ``x`` with ``u = u0 + scale * x`` and ``scale = 1 / sqrt(d2NLL/du2)`` at the
    start, so the objective has unit curvature in ``x``, and the distance checked against
    ``rtol`` is Newton's estimate of ``|log T - log T*|`` with that curvature. The driver stops
    at the first evaluation that meets it, line-search trials included: near the optimum NLL
    differences fall below float32 rounding and the line search cannot resolve them, while the
    gradient still can.

    Args:
        objective: the temperature NLL.
        temperature_bounds: the range T is kept in.
        rtol: the distance to the optimum in ``log T`` at which it stops.
        max_iter: L-BFGS iterations at most (and twice as many evaluations).
        start_beta: where it starts.
    """
    beta_min, beta_max = _beta_range(temperature_bounds)
    start = objective.evaluate(start_beta, hessian=True, bins=True)
    evaluations = [1]
    bound = _bound_beyond(start, beta_min, beta_max)
    if bound is not None:
        return Solution(start, 0, 1, True, bound)

    u0 = -math.log(start_beta)
    curvature = start_beta**2 * start.hess + start_beta * start.grad  # d2NLL/du2
    if not curvature > 0:
        curvature = start_beta**2 * start.hess if start.hess > 0 else 1.0
    scale = 1.0 / math.sqrt(curvature)

    def distance(evaluation: Evaluation) -> float:
        """Newton's estimate of |log T - log T*|, with the curvature taken at the start."""
        return scale**2 * evaluation.beta * abs(evaluation.grad)

    if distance(start) <= rtol:
        # L-BFGS would evaluate the start, find it within the tolerance and stop: skip building it
        return Solution(start, 0, 1, True, None)
    cache: dict[float, Evaluation] = {0.0: start}

    def evaluate_at(position: Tensor) -> tuple[float, Tensor, float]:
        key = float(position)
        if key not in cache:
            log_t = min(max(u0 + scale * key, -700.0), 700.0)
            evaluation = objective.evaluate(math.exp(-log_t), bins=True)
            evaluations[0] += 1
            best = min(cache.values(), key=distance)
            cache.clear()  # keep the best evaluation and the newest
            cache.update({key: evaluation, (-math.log(best.beta) - u0) / scale: best})
        evaluation = cache[key]
        # dNLL/dx = dNLL/dbeta * dbeta/du * du/dx, with dbeta/du = -beta
        slope = torch.tensor([-scale * evaluation.beta * evaluation.grad], dtype=torch.float64)
        return evaluation.nll, slope, distance(evaluation)

    x = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    stopping = Stopping(rtol, max_iter)
    result = minimise_lbfgs(evaluate_at, x, stopping=stopping, max_eval=2 * max_iter)
    final = min(cache.values(), key=distance)
    converged = stopping.converged(distance(final))
    bound = _bound_beyond(final, beta_min, beta_max, clamp_only=True)
    if bound is not None:
        clamped = beta_max if bound == "lower" else beta_min
        final = objective.evaluate(clamped, bins=True)
        evaluations[0] += 1
    elif not converged:
        # L-BFGS can stall on an objective that is flat in curvature (linear in beta, as for
        # logits so large that every softmax is one-hot). The NLL is convex in beta, so the
        # slope's sign at the bound it heads for decides exactly whether the optimum lies beyond.
        edge = objective.evaluate(beta_min if final.grad > 0 else beta_max, bins=True)
        evaluations[0] += 1
        bound = _bound_beyond(edge, beta_min, beta_max)
        if bound is not None:
            final, converged = edge, True
    return Solution(final, result.iterations, evaluations[0], converged, bound)


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
    objective: _Objective,
    *,
    method: str,
    temperature_bounds: tuple[float, float],
    rtol: float,
    max_iter: int,
) -> Solution:
    """Minimise the NLL over T with ``method`` from the :func:`warm_start`.

    Args:
        objective: the temperature NLL.
        method: ``"lbfgs"`` or ``"newton"``.
        temperature_bounds: the range T is kept in.
        rtol: the distance to the optimum, relative to T, at which the solver stops.
        max_iter: iterations of the warm start's searches and of the solver at most.
    """
    start_beta = warm_start(objective, temperature_bounds, max_iter, rtol)
    solver = lbfgs_on_log_temperature if method == "lbfgs" else newton_on_beta
    return solver(
        objective,
        temperature_bounds=temperature_bounds,
        rtol=rtol,
        max_iter=max_iter,
        start_beta=start_beta,
    )


def fit_temperature(
    objective: _Objective,
    *,
    method: str,
    temperature_bounds: tuple[float, float],
    rtol: float,
    max_iter: int,
) -> Solution:
    """The NLL-optimal temperature on ``objective``.

    A degenerate case decided from the data's exact facts
    (:attr:`~torchcal._objectives.temperature.SoftmaxTemperatureNLL.limit`) holds T at its bound
    without running a solver; otherwise :func:`solve_temperature` finds the optimum.

    Args:
        objective: the temperature NLL (softmax or sigmoid).
        method: ``"lbfgs"`` or ``"newton"``.
        temperature_bounds: the range T is kept in.
        rtol: the distance to the optimum, relative to T, at which the solver stops.
        max_iter: iterations of the solver at most.

    Example:
        >>> separable = SoftmaxTemperatureNLL(torch.eye(4) * 5, torch.arange(4))
        >>> solution = fit_temperature(separable, method="lbfgs", temperature_bounds=(1e-3, 1e3),
        ...                            rtol=1e-6, max_iter=100)
        >>> solution.temperature, solution.bound
        (0.001, 'lower')
    """
    limit = objective.limit
    if limit is None:
        return solve_temperature(
            objective,
            method=method,
            temperature_bounds=temperature_bounds,
            rtol=rtol,
            max_iter=max_iter,
        )
    passes = objective.passes
    held = temperature_bounds[0] if limit == "lower" else temperature_bounds[1]
    evaluation = objective.evaluate(1.0 / held, bins=True)
    return Solution(evaluation, 0, objective.passes - passes, True, limit)
