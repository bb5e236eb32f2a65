"""Newton's method on the probability simplex ``{w >= 0, sum(w) = 1}`` of three weights.

The shared damped Newton routine (:func:`torchcal._optim.newton.minimise`) runs with
:data:`SIMPLEX` as its constraint: each step goes to the exact minimiser of the local quadratic
model over the triangle (:func:`minimise_quadratic_on_simplex`), the distance to the optimum is
the Frank-Wolfe gap (:func:`frank_wolfe_gap`), the line search's trials are projected back onto
the simplex against rounding, and its slopes use the gradient less its mean (the same along any
direction in the simplex's plane, but near the optimum, where the gradient's components are all
about equal, without the rounding of their common part). Only those are particular to the
simplex.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from torchcal._optim.newton import Curvature


def minimise_quadratic_on_simplex(hessian: np.ndarray, linear: np.ndarray) -> np.ndarray:
    """The exact minimiser of ``w.H.w / 2 + c.w`` over ``{w >= 0, w1 + w2 + w3 = 1}``.

    ``H`` (3, 3) must be positive semi-definite. A convex quadratic attains its minimum over the
    triangle at the unconstrained minimiser of one of its faces (three vertices, three edges,
    the interior), so the answer is among the feasible face minimisers: the one that meets the
    KKT conditions, that is with the smallest :func:`frank_wolfe_gap`. (Comparing the
    candidates' values instead cannot tell apart two whose values differ by less than their
    rounding, while their gaps still can.) Faces on which the quadratic is flat or singular are
    skipped: their minimum is also attained on their boundary.

    Args:
        hessian: ``H``, (3, 3), positive semi-definite.
        linear: ``c``, (3,).

    Example:
        >>> minimise_quadratic_on_simplex(np.eye(3), np.array([0.0, 0.0, -1.0])).round(6)
        array([0., 0., 1.])
        >>> minimise_quadratic_on_simplex(np.eye(3), np.zeros(3)).round(6)
        array([0.333333, 0.333333, 0.333333])
    """

    candidates = [np.eye(3)[i] for i in range(3)]
    for i, j in ((0, 1), (0, 2), (1, 2)):  # edges e_i + t (e_j - e_i), 0 < t < 1
        start, direction = np.eye(3)[i], np.eye(3)[j] - np.eye(3)[i]
        curvature = float(direction @ hessian @ direction)
        slope = float(direction @ (hessian @ start + linear))
        if curvature > 0 and 0 < -slope / curvature < 1:
            candidates.append(start - slope / curvature * direction)
    # interior: w = e3 + B u with B = [e1 - e3, e2 - e3], u = (w1, w2)
    basis = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    reduced = basis.T @ hessian @ basis
    gradient = basis.T @ (hessian @ np.eye(3)[2] + linear)
    if np.linalg.det(reduced) > 1e-14 * max(1.0, float(np.abs(reduced).max())) ** 2:
        inner = np.eye(3)[2] + basis @ np.linalg.solve(reduced, -gradient)
        if bool((inner > 0).all()):
            candidates.append(inner)
    return min(candidates, key=lambda w: frank_wolfe_gap(hessian @ w + linear, w))


def frank_wolfe_gap(gradient: np.ndarray, weights: np.ndarray) -> float:
    """``g.w - min_j g_j`` >= 0: zero exactly when ``w`` satisfies the simplex KKT conditions.

    It bounds the objective's distance to its minimum over the simplex for a convex objective.

    Args:
        gradient: the objective's gradient at ``weights``.
        weights: a point of the simplex.
    """
    return float(gradient @ weights - gradient.min())


class _Simplex:
    """The simplex as a :class:`~torchcal._optim.newton.Constraint` on float64 (3,) tensors."""

    def direction(self, theta: Tensor, grad: Tensor, curvature: Curvature) -> Tensor:
        assert curvature.matrix is not None
        hessian = curvature.matrix.cpu().numpy()
        weights, gradient = theta.cpu().numpy(), grad.cpu().numpy()
        target = minimise_quadratic_on_simplex(hessian, gradient - hessian @ weights)
        return torch.from_numpy(target).to(theta) - theta

    def distance(self, theta: Tensor, grad: Tensor) -> float:
        return frank_wolfe_gap(grad.cpu().numpy(), theta.cpu().numpy())

    def project(self, point: Tensor) -> Tensor:
        point = point.clamp_min(0.0)
        return point / point.sum()

    def tangent(self, grad: Tensor) -> Tensor:
        return grad - grad.mean()


#: The simplex constraint for :func:`~torchcal._optim.newton.minimise`.
SIMPLEX = _Simplex()
