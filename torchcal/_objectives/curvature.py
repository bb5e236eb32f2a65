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

    def restricted(self, frozen: Tensor) -> Curvature:
        """The Hessian of the parameters not ``frozen`` (a bool mask shaped like them), the
        frozen ones' rows and columns replaced by the identity's: Newton steps from it leave
        them where they are.

        Example:
            >>> import torch
            >>> full = Curvature(matrix=torch.tensor([[2.0, 1.0], [1.0, 3.0]]))
            >>> full.restricted(torch.tensor([False, True])).matrix.tolist()
            [[2.0, 0.0], [0.0, 1.0]]
        """
        if self.matrix is not None:
            index = frozen.flatten().nonzero().squeeze(1)
            matrix = self.matrix.clone()
            matrix[index] = 0.0
            matrix[:, index] = 0.0
            matrix[index, index] = 1.0
            return Curvature(matrix=matrix)
        assert self.product is not None
        product, precondition = self.product, self.precondition

        def restricted_product(v: Tensor) -> Tensor:
            return product(v.masked_fill(frozen, 0.0)).masked_fill_(frozen, 0.0)

        def restricted_precondition(q: Tensor) -> Tensor:
            inner = q.masked_fill(frozen, 0.0)
            return (inner if precondition is None else precondition(inner)).masked_fill_(
                frozen, 0.0
            )

        return Curvature(product=restricted_product, precondition=restricted_precondition)
