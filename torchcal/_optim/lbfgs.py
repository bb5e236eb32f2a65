"""One L-BFGS driver: ``torch.optim.LBFGS`` with a strong-Wolfe line search, one iteration at a
time, stopped by the shared rule of :mod:`torchcal._optim.stopping`.

``torch.optim.LBFGS`` stops on its own gradient and change tolerances only; torchcal's solvers
stop on a distance to the optimum that the caller measures, and where the objective's values
stop falling. The driver therefore runs the optimiser for one iteration per ``step`` call and
checks the rule after each: converged as soon as any evaluation so far (line-search trials
included) meets the tolerance, no progress once the lowest objective value has stopped falling,
or out of iterations or evaluations.

An evaluation that meets the tolerance ends the evaluations: for the rest of that iteration's
line search (whose outcome is discarded) the closure hands back that evaluation again instead
of computing new ones, so that no data pass is spent after the answer is found.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from torchcal._optim.stopping import CONVERGED, ITERATION_LIMIT, NO_PROGRESS, Stopping

#: Directions remembered by L-BFGS.
HISTORY_SIZE = 10


@dataclass(frozen=True)
class LBFGSResult:
    """Why :func:`minimise_lbfgs` stopped, after how many iterations."""

    iterations: int
    reason: str  # "converged", "no progress" or "iteration limit"


def minimise_lbfgs(
    evaluate: Callable[[Tensor], tuple[float, Tensor, float]],
    x: Tensor,
    *,
    stopping: Stopping,
    max_eval: int,
) -> LBFGSResult:
    """Minimise from ``x`` (updated in place) by L-BFGS until ``stopping`` says so.

    Args:
        evaluate: ``x -> (value, gradient, distance)``, the distance being the caller's measure
            of how far ``x`` is from the optimum (checked against ``stopping.tol``).
        x: the start, a float64 leaf tensor with ``requires_grad=True``.
        stopping: the stopping rule; ``stopping.max_iter`` bounds the L-BFGS iterations.
        max_eval: calls of ``evaluate`` at most, over all iterations.

    Example:
        >>> x = torch.zeros(1, dtype=torch.float64, requires_grad=True)
        >>> def parabola(p):
        ...     return float((p - 2).square().sum()), 2 * (p.detach() - 2), float((p - 2).abs())
        >>> result = minimise_lbfgs(parabola, x, stopping=Stopping(1e-9, 20), max_eval=40)
        >>> round(float(x), 6), result.reason
        (2.0, 'converged')
    """
    optimizer = torch.optim.LBFGS(
        [x],
        lr=1.0,
        max_iter=1,
        tolerance_grad=0.0,  # the shared rule decides, on the caller's distance
        tolerance_change=1e-15,
        history_size=HISTORY_SIZE,
        line_search_fn="strong_wolfe",
    )
    seen = {"lowest": float("inf"), "nearest": float("inf"), "calls": 0}
    answer: list[tuple[float, Tensor]] = []  # the evaluation that met the tolerance

    def closure() -> Tensor:
        if answer:
            value, gradient = answer[0]
        else:
            value, gradient, distance = evaluate(x.detach())
            seen["lowest"] = min(seen["lowest"], value)
            seen["nearest"] = min(seen["nearest"], distance)
            if stopping.converged(distance):
                answer.append((value, gradient))
        seen["calls"] += 1
        x.grad = gradient.reshape(x.shape).to(x.dtype)
        return torch.tensor(value, dtype=torch.float64)

    stopping.start(float("inf"))
    for iteration in range(1, stopping.max_iter + 1):
        optimizer.param_groups[0]["max_eval"] = max_eval - seen["calls"]
        optimizer.step(closure)
        if stopping.converged(seen["nearest"]):
            return LBFGSResult(iteration, CONVERGED)
        if seen["calls"] >= max_eval:
            return LBFGSResult(iteration, ITERATION_LIMIT)
        if not stopping.progressed(seen["lowest"]):
            return LBFGSResult(iteration, NO_PROGRESS)
    return LBFGSResult(stopping.max_iter, ITERATION_LIMIT)
