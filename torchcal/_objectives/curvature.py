"""How an objective describes its Hessian to the Newton solver.

Example:
    >>> import torch
    >>> Curvature(matrix=torch.eye(2)).product is None
    True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

__all__ = ["CHOLESKY_RCOND", "Curvature"]

#: The relative diagonal jitter that makes a positive semi-definite matrix safe to factorise:
#: this fraction of its largest diagonal entry.
CHOLESKY_RCOND = 1e-13


@dataclass(frozen=True)
class Curvature:
    """The Hessian at a point: ``matrix`` (n, n) over the flattened parameters, or ``product``
    (Hessian-vector products on parameter-shaped tensors) with a ``precondition`` (an
    approximation of the inverse Hessian; the identity if absent)."""

    matrix: Tensor | None = None
    product: Callable[[Tensor], Tensor] | None = None
    precondition: Callable[[Tensor], Tensor] | None = None
