"""Fitting an affine calibration map: Newton on
:class:`~torchcal._objectives.affine.AffineObjective` from a start, mapped back to the
canonical representative of its optimum."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from torchcal._objectives.affine import AffineObjective, canonical
from torchcal._optim.newton import RECESSION, minimise

__all__ = ["AffineFit", "canonical", "fit_affine"]

#: The exact Hessian is formed up to this many parameters ...
NEWTON_MAX_PARAMETERS = 1200
#: ... and while one Hessian costs at most this many multiply-adds (rows x parameters^2).
NEWTON_MAX_WORK = 4e9


@dataclass(frozen=True)
class AffineFit:
    """Where the solver stopped, in the original (unstandardised) parameters, float64: the
    :func:`canonical` representative."""

    weight: Tensor  # (K, K) or (K,)
    bias: Tensor  # (K,)
    objective: float
    iterations: int
    converged: bool  # every partial derivative in the standardised parameters is <= tol
    method: str  # "newton" (exact Hessian) or "newton-cg" (Hessian-vector products)
    unbounded: bool  # the objective decreases without bound along the unpenalised parameters
    reason: str  # why the solver stopped (see torchcal._optim.newton)
    separated_classes: list[int]  # classes their own input separates (no finite optimum)


def fit_affine(
    objective: AffineObjective,
    start_weight: Tensor,
    start_bias: Tensor,
    *,
    tol: float,
    max_iter: int,
    method: str = "auto",
) -> AffineFit:
    """Minimise ``objective`` from ``(start_weight, start_bias)``, or from the uniform map
    (``theta = 0``, objective ``log K``) if that is lower or the start's objective is not finite.
    The start's evaluation is the solver's first (the objective keeps it).

    ``method="auto"`` forms the exact Hessian when it is cheap (see
    :data:`NEWTON_MAX_PARAMETERS`, :data:`NEWTON_MAX_WORK`), else uses Newton-CG.
    """
    if method == "auto":
        n = objective.n_parameters
        cheap = n <= NEWTON_MAX_PARAMETERS and objective.n_samples * n * n <= NEWTON_MAX_WORK
        method = "newton" if cheap else "newton-cg"
    objective.method = method  # before the first evaluation: Newton-CG keeps its probabilities
    theta = objective.to_standardised(start_weight, start_bias)
    if not objective.value_and_gradient(theta)[0] < math.log(objective.n_classes):
        theta = torch.zeros_like(theta)
    receding = objective.receding_parameters()
    result = minimise(objective, theta, tol=tol, max_iter=max_iter, receding=receding)
    weight, bias = canonical(*objective.to_original(result.theta), diagonal=objective.diagonal)
    return AffineFit(
        weight=weight,
        bias=bias,
        objective=result.value,
        iterations=result.iterations,
        converged=result.converged,
        method=method,
        unbounded=result.reason == RECESSION or objective.recedes(result.theta),
        reason=result.reason,
        separated_classes=receding[:, 0].nonzero().squeeze(1).tolist(),
    )
