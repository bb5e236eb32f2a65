"""The one stopping rule of every torchcal solver, and its one no-progress detection.

Every solver measures, after each iteration, how far it still is from the optimum and stops:

* ``"converged"``: that distance is at most ``tol``. Where the solver has the curvature it is
  the predicted distance, the length of the Newton step (relative to ``T`` for the
  temperature); where the curvature only shapes the step (the affine fits, in standardised
  parameters) it is the largest partial derivative; on the simplex it is the Frank-Wolfe gap.
* ``"no progress"``: the objective fell below its best value by at most ``FTOL * max(1, |f|)``
  (a few units of float64 rounding) in ``patience`` consecutive iterations, or no step along the
  search direction lowered it at all: what is left lies below the objective's rounding.
* ``"iteration limit"``: ``max_iter`` iterations.

Solvers add their own reasons where the problem has them: ``"recession"`` (the affine fits,
:mod:`torchcal._optim.newton`) and a temperature bound (:mod:`torchcal._optim.temperature`).

Example:
    >>> rule = Stopping(tol=1e-6, max_iter=10)
    >>> rule.start(1.0)
    >>> [rule.progressed(1.0) for _ in range(PATIENCE)]
    [True, True, False]
    >>> rule.converged(1e-7), rule.converged(1e-5)
    (True, False)
"""

from __future__ import annotations

import math

CONVERGED = "converged"
NO_PROGRESS = "no progress"
ITERATION_LIMIT = "iteration limit"
#: No progress: a decrease of at most FTOL * max(1, |f|) in PATIENCE consecutive iterations.
FTOL = 1e-15
PATIENCE = 3


class Stopping:
    """When an iterative solver stops (see the module docstring).

    Args:
        tol: the distance to the optimum at which the solver has converged.
        max_iter: iterations at most.
        patience: consecutive iterations without progress before the solver gives up.
    """

    def __init__(self, tol: float, max_iter: int, *, patience: int = PATIENCE) -> None:
        self.tol = tol
        self.max_iter = max_iter
        self.patience = patience
        self._best = math.inf
        self._stalled = 0

    def converged(self, distance: float) -> bool:
        """Whether ``distance``, the solver's measure of its distance to the optimum, meets
        ``tol`` (a NaN distance never does).

        Args:
            distance: the predicted distance, largest partial derivative or Frank-Wolfe gap.
        """
        return distance <= self.tol

    def start(self, value: float) -> None:
        """Record the objective at the start.

        Args:
            value: the objective where the solver starts.
        """
        self._best, self._stalled = value, 0

    def progressed(self, value: float) -> bool:
        """Record one iteration's objective; False once ``patience`` iterations in a row have
        lowered the best value by at most rounding.

        Args:
            value: the objective after the iteration.
        """
        if value < self._best - FTOL * max(1.0, abs(value)):
            self._stalled = 0
        else:
            self._stalled += 1
        self._best = min(self._best, value)
        return self._stalled < self.patience
