"""Newton's method for the calibrators' smooth convex objectives, written once.

:func:`minimise` minimises a convex function of a parameter tensor, given its value and gradient
and its curvature, either as a dense Hessian (small problems: the Newton system is solved by
Cholesky) or as Hessian-vector products with a preconditioner (large problems: the system is
solved inexactly by preconditioned conjugate gradients, "Newton-CG", Nocedal & Wright 2006,
Algorithm 7.1, each system only as exactly as the last step's quadratic model proved worth:
Eisenstat and Walker's forcing term, see :func:`_forcing_term`). The step is then shortened, if
need be, until the objective decreases.

Constrained problems (the ensemble's weights on the simplex, :mod:`torchcal._optim.simplex`) pass
a :class:`Constraint`: it supplies the step's direction (the local quadratic model's minimiser
over the feasible set), the distance to the optimum (there: the Frank-Wolfe gap) and the
projection that keeps rounding from leaving the set; the line search and the stopping rule are
the same.

Stopping (the result's ``reason``) follows :mod:`torchcal._optim.stopping`, the distance being
the largest partial derivative (or the constraint's measure), plus one rule of its own:

* ``"recession"``: the parameters have travelled at least as far as their own size since the
  last check, and the problem reports that the direction travelled, restricted to its
  unpenalised part, narrows no margin and widens some (``recedes``): the objective then keeps
  falling along it forever, so no minimiser exists and further iterations only inflate the
  parameters. Also where the caller names ``receding`` parameters, along which alone the
  objective falls forever (known from the data beforehand), once every other partial derivative
  is within ``tol``: what is left is their slow run towards infinity. Once the others' partial
  derivatives are within ``sqrt(tol)`` the receding parameters are held where they are (each
  Newton system restricted to the others): otherwise the others converge only as fast as the
  receding ones run off, a constant factor per iteration.

:func:`bracketed_newton` is the one-parameter case used on ``beta = 1/T``: Newton steps kept
inside a bracket of the optimum (bisection when a step leaves it), stopping by the same rule
with the step's length, relative to the parameter, as the distance.

Robustness. A dense Hessian that Cholesky cannot factorise even with a jitter (it is indefinite
through rounding, or has a NaN) falls back to conjugate gradients on it; conjugate gradients stop
at the first direction of non-positive curvature and, if that is the first one, step along the
preconditioned gradient. No linear-algebra error escapes: the worst case is a gradient step.

Example:
    >>> import torch
    >>> class Quadratic:
    ...     def value_and_gradient(self, theta):
    ...         return float((theta - 3).square().sum()), 2 * (theta - 3)
    ...     def curvature(self, theta):
    ...         return Curvature(matrix=2 * torch.eye(theta.numel(), dtype=theta.dtype))
    ...     def recedes(self, direction):
    ...         return False
    >>> result = minimise(Quadratic(), torch.zeros(2, dtype=torch.float64), tol=1e-12, max_iter=10)
    >>> result.theta.round(decimals=9).tolist(), result.reason, result.iterations
    ([3.0, 3.0], 'converged', 1)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from torchcal._objectives.curvature import CHOLESKY_RCOND, Curvature
from torchcal._optim.stopping import (
    CONVERGED,
    ITERATION_LIMIT,
    NO_PROGRESS,
    PATIENCE,
    Stopping,
)

__all__ = [
    "PATIENCE",
    "RECESSION",
    "Constraint",
    "Curvature",
    "NewtonResult",
    "bracketed_newton",
    "minimise",
]

#: Cholesky adds CHOLESKY_RCOND times the largest diagonal entry to the Hessian's diagonal,
#: growing 100-fold per failed attempt, for at most CHOLESKY_ATTEMPTS attempts.
CHOLESKY_ATTEMPTS = 6
#: Conjugate-gradient iterations per Newton step at most.
MAX_CG_ITERATIONS = 250
#: The forcing term (the residual conjugate gradients stop at, relative to the gradient) at most.
MAX_FORCING = 0.5
#: A forcing term may not fall below the previous one to this power (while that is above 0.1).
GOLDEN = (1 + math.sqrt(5)) / 2
#: Conjugate gradients also stop once every entry of the residual is at most this fraction of
#: ``tol``: the next gradient is the residual plus what the quadratic model misses, so solving
#: further would not bring the stopping test nearer.
RESIDUAL_FLOOR = 0.1
#: A step is accepted when the objective decreases by at least this fraction of the decrease
#: its slope predicts (Armijo), or when the slope at the new point is still <= 0 (see below).
ARMIJO = 1e-4
#: Line-search trials per Newton step at most.
MAX_LINE_SEARCH = 40
EPSILON = torch.finfo(torch.float64).eps
#: The stopping reason where no minimiser exists (see the module docstring).
RECESSION = "recession"


class NewtonProblem(Protocol):
    """A smooth convex objective: value and gradient, curvature, and whether it recedes."""

    def value_and_gradient(self, theta: Tensor) -> tuple[float, Tensor]: ...

    def curvature(self, theta: Tensor) -> Curvature: ...

    def recedes(self, direction: Tensor) -> bool: ...


class Constraint(Protocol):
    """A convex feasible set the iterates stay in (see :mod:`torchcal._optim.simplex`)."""

    def direction(self, theta: Tensor, grad: Tensor, curvature: Curvature) -> Tensor:
        """The step to the minimiser of the local quadratic model over the set."""
        ...

    def distance(self, theta: Tensor, grad: Tensor) -> float:
        """A measure of the distance to the optimum, zero exactly at it."""
        ...

    def project(self, point: Tensor) -> Tensor:
        """``point`` (feasible but for rounding) moved into the set."""
        ...

    def tangent(self, grad: Tensor) -> Tensor:
        """The part of ``grad`` along the set (a slope along any feasible direction is the
        same with it, without the rounding of the part across)."""
        ...


@dataclass(frozen=True)
class NewtonResult:
    """Where :func:`minimise` stopped, and why (see the module docstring)."""

    theta: Tensor
    value: float
    gradient: Tensor
    iterations: int
    reason: str  # "converged", "recession", "no progress" or "iteration limit"
    evaluations: int  # value-and-gradient evaluations
    products: int  # Hessian-vector products (conjugate-gradient iterations)

    @property
    def converged(self) -> bool:
        return self.reason == "converged"


def minimise(
    problem: NewtonProblem,
    theta: Tensor,
    *,
    tol: float,
    max_iter: int,
    constraint: Constraint | None = None,
    receding: Tensor | None = None,
) -> NewtonResult:
    """Minimise ``problem`` from ``theta`` by a line-search Newton method (see the module
    docstring for the stopping rules).

    Args:
        problem: the objective (value and gradient, curvature, recession test).
        theta: the start, a float64 tensor of any shape (feasible if ``constraint`` is given).
        tol: the distance to the optimum at which it stops: the largest partial derivative,
            or the constraint's measure.
        max_iter: Newton iterations at most.
        constraint: a feasible set to stay in; ``None`` for an unconstrained problem.
        receding: a bool mask shaped like ``theta`` of parameters along which alone the
            objective falls forever (unconstrained problems); their partial derivatives do not
            count towards ``tol``, and reaching it then stops with ``"recession"``.
    """
    stopping = Stopping(tol, max_iter)
    value, grad = problem.value_and_gradient(theta)
    stopping.start(value)
    evaluations, products = 1, 0
    forcing: float | None = None  # from the last step's model (see _forcing_term)
    reference = theta
    reason = ITERATION_LIMIT
    iteration = 0
    receding = None if receding is None or not bool(receding.any()) else receding
    while True:
        if constraint is not None:
            distance = constraint.distance(theta, grad)
        elif receding is not None:
            distance = float(grad.masked_fill(receding, 0.0).abs().max())
        else:
            distance = float(grad.abs().max())
        if stopping.converged(distance):
            reason = CONVERGED if receding is None else RECESSION
            break
        if iteration >= max_iter:
            break
        curvature, moving = problem.curvature(theta), grad
        if receding is not None and distance <= math.sqrt(tol):
            # what is left of the others' gradient comes from their coupling with the receding
            # parameters' slow run: hold those, and the others converge at Newton's rate
            curvature, moving = curvature.restricted(receding), grad.masked_fill(receding, 0.0)
        residual = None
        if constraint is None:
            direction, used, residual = _newton_direction(
                curvature, moving, forcing, floor=RESIDUAL_FLOOR * tol
            )
            products += used
        else:
            direction = constraint.direction(theta, grad, curvature)
        step = _line_search(problem, theta, value, grad, direction, constraint)
        evaluations += step.evaluations
        if step.theta is None:
            reason = NO_PROGRESS
            break
        if residual is None:
            forcing = None
        else:
            new_moving = step.grad if moving is grad else step.grad.masked_fill(receding, 0.0)
            forcing = _forcing_term(moving, residual, step.length, new_moving, forcing)
        iteration += 1
        theta, value, grad = step.theta, step.value, step.grad
        if not stopping.progressed(value):
            reason = NO_PROGRESS
            break
        travelled = theta - reference
        if float(travelled.norm()) >= max(1.0, float(reference.norm())):
            if problem.recedes(travelled):
                reason = RECESSION
                break
            reference = theta
    return NewtonResult(theta, value, grad, iteration, reason, evaluations, products)


def _newton_direction(
    curvature: Curvature, grad: Tensor, forcing: float | None, *, floor: float
) -> tuple[Tensor, int, Tensor | None]:
    """A descent direction from ``H d = -g``: (direction, Hessian-vector products used, the
    residual ``-g - H d`` where conjugate gradients stopped short of solving it, else None).
    ``forcing`` and ``floor``: see :func:`_conjugate_gradients`."""
    if curvature.matrix is not None:
        solved = _cholesky_solve(curvature.matrix, grad.flatten())
        if solved is not None:
            direction = -solved.view_as(grad)
            if float((direction * grad).sum()) < 0:
                return direction, 0, None
        matrix = curvature.matrix
        return _conjugate_gradients(
            lambda v: (matrix @ v.flatten()).view_as(v), curvature.precondition, grad
        )
    assert curvature.product is not None
    return _conjugate_gradients(
        curvature.product, curvature.precondition, grad, forcing, floor=floor
    )


def _forcing_term(
    grad: Tensor, residual: Tensor, length: float, new_grad: Tensor, previous: float | None
) -> float:
    """The next Newton-CG solve's forcing term from how well the last step's linear model
    predicted the new gradient (Eisenstat and Walker 1996, choice 1):
    ``| |g_new| - |g + t H d| | / |g|`` for the step ``t d``, where ``g + t H d = (1 - t) g -
    t r`` (``r`` the residual). Where the objective's curvature changed over the step, solving
    the next system more exactly than the model held would buy nothing. At least the previous
    term to the power :data:`GOLDEN` while that is above 0.1, and at most :data:`MAX_FORCING`.

    Example:
        >>> g = torch.tensor([1.0, 0.0], dtype=torch.float64)
        >>> r = torch.tensor([0.0, 0.1], dtype=torch.float64)  # the solve left 0.1 of |g|
        >>> round(_forcing_term(g, r, 1.0, torch.tensor([0.0, 0.3]), None), 6)  # 0.3 came
        0.2
    """
    model = (1 - length) * grad - length * residual
    forcing = abs(float(new_grad.norm()) - float(model.norm())) / float(grad.norm())
    if previous is not None and previous**GOLDEN > 0.1:
        forcing = max(forcing, previous**GOLDEN)
    return min(forcing, MAX_FORCING)


def _cholesky_solve(matrix: Tensor, vector: Tensor) -> Tensor | None:
    """``matrix^-1 vector`` for a positive semi-definite matrix, by Cholesky with a growing
    jitter (it only matters along near-flat directions, along which the gradient has almost no
    component); None if the matrix cannot be factorised (indefinite, or not finite)."""
    if not bool(torch.isfinite(matrix).all()):
        return None
    eye = torch.eye(matrix.shape[0], dtype=matrix.dtype, device=matrix.device)
    jitter = CHOLESKY_RCOND * max(float(matrix.diagonal().abs().max()), 1e-300)
    for _ in range(CHOLESKY_ATTEMPTS):
        factor, info = torch.linalg.cholesky_ex(matrix + jitter * eye)
        if int(info) == 0:
            return torch.cholesky_solve(vector[:, None], factor).squeeze(1)
        jitter *= 100.0
    return None


def _conjugate_gradients(
    product: Callable[[Tensor], Tensor],
    precondition: Callable[[Tensor], Tensor] | None,
    grad: Tensor,
    forcing: float | None = None,
    *,
    floor: float = 0.0,
) -> tuple[Tensor, int, Tensor | None]:
    """Preconditioned CG on ``H d = -g`` from ``d = 0``: (direction, products used, residual
    ``-g - H d``, None where the preconditioned gradient is returned instead).

    Stops when ``|r| <= eta |g|`` for the forcing term ``eta``, the larger of ``forcing`` (see
    :func:`_forcing_term`) and ``min(0.5, sqrt(|g|))`` (inexact early, exact enough near the
    optimum for superlinear convergence), when no entry of ``r`` exceeds ``floor``, at the first
    direction of non-positive curvature, or after :data:`MAX_CG_ITERATIONS`. Every iterate is a
    descent direction; if the first direction already has no positive curvature (or is not
    finite), the preconditioned gradient is returned.
    """
    grad_norm = float(grad.norm())
    forcing = max(forcing or 0.0, min(MAX_FORCING, math.sqrt(grad_norm)))
    target = forcing * grad_norm
    x = torch.zeros_like(grad)
    r = -grad
    z = r.clone() if precondition is None else precondition(r)
    rz = float((r * z).sum())
    if not (rz > 0 and math.isfinite(rz)):  # an unusable preconditioner: do without it
        precondition, z, rz = None, r.clone(), float(r.square().sum())
    fallback = z.clone()
    p = z.clone()
    used = 0
    for _ in range(MAX_CG_ITERATIONS):
        hp = product(p)
        used += 1
        curvature = float((p * hp).sum())
        if not (curvature > 0 and math.isfinite(curvature)):
            break
        alpha = rz / curvature
        x += alpha * p
        r -= alpha * hp
        if float(r.norm()) <= target or float(r.abs().max()) <= floor:
            break
        z = r.clone() if precondition is None else precondition(r)
        rz_next = float((r * z).sum())
        if not (rz_next > 0 and math.isfinite(rz_next)):
            break
        p = z + (rz_next / rz) * p
        rz = rz_next
    if not bool(torch.isfinite(x).all()) or not float((x * grad).sum()) < 0:
        return fallback, used, None
    return x, used, r


@dataclass(frozen=True)
class _Step:
    theta: Tensor | None  # None: no decrease found
    value: float
    grad: Tensor
    evaluations: int
    length: float = 0.0  # the accepted step's multiple of the direction


def _line_search(
    problem: NewtonProblem,
    theta: Tensor,
    value: float,
    grad: Tensor,
    direction: Tensor,
    constraint: Constraint | None = None,
) -> _Step:
    """Backtracking from the full Newton step.

    A trial ``theta + t d`` is accepted when its objective satisfies the Armijo condition or
    when the slope along ``d`` there, ``g(t) . d``, is still <= 0: the objective is convex, so
    its slope increases along the line and a non-positive slope at ``t`` means it decreased on
    all of ``[0, t]``. The second test holds near the optimum, where decreases are below float64
    resolution but gradients are not. A trial that is not finite shrinks ``t`` tenfold, one that
    fails the tests shrinks it to the minimiser of the quadratic through ``f(0)``, ``f'(0)`` and
    ``f(t)``, kept within ``[t/10, t/2]``. A direction that promises no descent (a
    constraint's model stationary to rounding) finds none. With a ``constraint`` each trial is
    projected into its set and slopes are taken with its tangent part of the gradient.
    """
    tangent = (lambda g: g) if constraint is None else constraint.tangent
    slope = float((tangent(grad) * direction).sum())
    if not slope < 0:
        return _Step(None, value, grad, 0)
    t = 1.0
    for trial in range(1, MAX_LINE_SEARCH + 1):
        point = theta + t * direction
        if constraint is not None:
            point = constraint.project(point)
        trial_value, trial_grad = problem.value_and_gradient(point)
        if math.isfinite(trial_value) and bool(torch.isfinite(trial_grad).all()):
            rounding = 4 * EPSILON * max(1.0, abs(value))
            if trial_value <= value + ARMIJO * t * slope or (
                trial_value <= value + rounding
                and float((tangent(trial_grad) * direction).sum()) <= 0
            ):
                return _Step(point, trial_value, trial_grad, trial, t)
            rise = trial_value - value - slope * t  # > 0 for a convex function
            shrink = -slope * t / (2 * rise) if rise > 0 else 0.5
            t *= min(max(shrink, 0.1), 0.5)
        else:
            t *= 0.1
    return _Step(None, value, grad, MAX_LINE_SEARCH)


@dataclass(frozen=True)
class BracketedResult:
    """Where :func:`bracketed_newton` stopped, and why."""

    x: float
    iterations: int
    reason: str  # "converged", "iteration limit", "no progress" (a non-finite slope), or a bound
    bound: str | None  # "low" or "high" if the minimum lies beyond that end of the range


def bracketed_newton(
    slope_and_step: Callable[[float], tuple[float, float]],
    x: float,
    *,
    bounds: tuple[float, float],
    stopping: Stopping,
    land: bool = False,
) -> BracketedResult:
    """Newton's method on a convex function of one positive parameter ``x`` within ``bounds``.

    Keeps a bracket of the minimiser (the slope's sign at every evaluated point); a step that
    leaves the bracket is replaced by bisection (in ``log x``), one that leaves ``bounds`` by the
    bound. It stops when the slope at a bound points beyond it (``bound``), when the proposed
    step's length relative to ``x`` meets ``stopping`` (at ``x``, or with ``land`` at where the
    step leads), on a non-finite slope, or after ``stopping.max_iter`` evaluations.

    Args:
        slope_and_step: evaluates at ``x`` and returns the slope and the proposed step (the
            Newton step ``-f'/f''``, or a better model's; NaN if there is none).
        x: the start.
        bounds: ``(low, high)``, ``0 < low < high``.
        stopping: the stopping rule (``tol`` relative to ``x``).
        land: return where the converged step leads rather than where it starts.

    Example:
        >>> import math
        >>> rule = Stopping(1e-12, 50)
        >>> # f(x) = x - log(x) + ..., minimum at x = 1: slope 1 - 1/x, curvature 1/x^2
        >>> found = bracketed_newton(lambda x: (1 - 1 / x, -(1 - 1 / x) * x * x), 5.0,
        ...                          bounds=(1e-3, 1e3), stopping=rule)
        >>> round(found.x, 12), found.reason
        (1.0, 'converged')
    """
    low_end, high_end = bounds
    low, high = bounds  # bracket of the minimiser
    x = min(max(x, low_end), high_end)
    for iteration in range(1, stopping.max_iter + 1):
        slope, step = slope_and_step(x)
        if not math.isfinite(slope):
            return BracketedResult(x, iteration, NO_PROGRESS, None)
        if slope > 0:
            high = x
        else:
            low = x
        if x == low_end and slope > 0:
            return BracketedResult(x, iteration, "bound", "low")
        if x == high_end and slope < 0:
            return BracketedResult(x, iteration, "bound", "high")
        proposal = x + step
        if proposal <= low_end or proposal >= high_end:
            proposal = low_end if proposal <= low_end else high_end
        elif not low < proposal < high:  # also a NaN step
            proposal = math.sqrt(low * high)  # bisection in log x
        if stopping.converged(abs(step) / x):
            return BracketedResult(proposal if land else x, iteration, CONVERGED, None)
        x = proposal
    return BracketedResult(x, stopping.max_iter, ITERATION_LIMIT, None)
