"""Tempered softmax: ``softmax(logits / T)`` that stays finite for any logits and temperature.

T > 1 flattens the distribution towards uniform, T < 1 sharpens it towards the argmax, and T = 1
is the plain softmax. Half-precision logits are computed in float32 and returned in their own
dtype. A temperature is a real number or a tensor that broadcasts to the logits' shape: (N, 1)
for one temperature per row of (N, K) logits, (K,) for one per class.
"""

from __future__ import annotations

import torch
from torch import Tensor

from torchcal._inputs.validation import check_dim, check_floating, check_temperature

__all__ = ["log_softmax", "softmax"]


def softmax(logits: Tensor, temperature: float | Tensor = 1.0, dim: int = -1) -> Tensor:
    """Probabilities ``softmax(logits / temperature)`` over ``dim``, in the logits' dtype.

    Equal to ``torch.softmax(logits / temperature, dim)`` wherever that is finite, and still
    correct where the division overflows (logits of 1e4 at T = 1e-35 in float32). ``-inf`` logits
    get probability 0; NaN or ``+inf`` logits, or a row with no finite logit, raise ``ValueError``.

    Args:
        logits: floating-point logits of any shape with a class dimension.
        temperature: T > 0: a real number, or a tensor that broadcasts to the logits' shape
            ((N, 1) for one per row of (N, K) logits, (K,) for one per class).
        dim: the class dimension.

    Example:
        >>> logits = torch.tensor([2.0, 1.0, 0.1])
        >>> softmax(logits, temperature=2.0)
        tensor([0.5017, 0.3043, 0.1940])
        >>> softmax(torch.tensor([[1e4, 0.0]]), temperature=1e-3)
        tensor([[1., 0.]])
    """
    scaled, dim = _scaled_logits(logits, temperature, dim)
    return torch.softmax(scaled, dim=dim).to(logits.dtype)


def log_softmax(logits: Tensor, temperature: float | Tensor = 1.0, dim: int = -1) -> Tensor:
    """Log-probabilities ``log_softmax(logits / temperature)`` over ``dim``, in the logits' dtype.

    The same checks and the same overflow safety as :func:`softmax`.

    Args:
        logits: floating-point logits of any shape with a class dimension.
        temperature: T > 0: a real number, or a tensor that broadcasts to the logits' shape.
        dim: the class dimension.

    Example:
        >>> log_softmax(torch.tensor([0.0, 0.0]), temperature=0.5)
        tensor([-0.6931, -0.6931])
    """
    scaled, dim = _scaled_logits(logits, temperature, dim)
    return torch.log_softmax(scaled, dim=dim).to(logits.dtype)


def _scaled_logits(logits: Tensor, temperature: float | Tensor, dim: int) -> tuple[Tensor, int]:
    """``logits / T`` up to a constant per slice along ``dim``, finite wherever it matters."""
    logits = check_floating(logits, "logits")
    if logits.ndim == 0:
        raise ValueError("logits must have a class dimension, got a 0-dim tensor")
    dim = check_dim(dim, logits.ndim)
    temperature = check_temperature(temperature, logits.shape).to(logits.device)
    if logits.numel() == 0:
        return logits / temperature, dim
    compute = logits.dtype if logits.dtype in (torch.float32, torch.float64) else torch.float32
    cast = temperature.to(compute)
    if compute != torch.float64 and not bool((torch.isfinite(cast) & (cast > 0)).all()):
        compute, cast = torch.float64, temperature.to(torch.float64)  # T outside float32's range
    z = logits.to(compute)
    top = z.amax(dim=dim, keepdim=True)
    bad = torch.isnan(z).any() | torch.isposinf(z).any() | torch.isneginf(top).any()
    if bool(bad):
        raise ValueError(
            f"logits contain {int(torch.isnan(z).sum())} NaN and {int(torch.isposinf(z).sum())} "
            f"+inf value(s), and {int(torch.isneginf(top).sum())} slice(s) along dim {dim} with no "
            "finite value; only -inf (a masked class) is allowed, and every slice needs a finite "
            "logit"
        )
    per_class = cast.ndim >= -dim and cast.shape[dim] > 1
    if not per_class:
        # One temperature per slice: shifting by the maximum first keeps every value <= 0.
        return (z - top) / cast, dim
    scaled = z / cast
    if not bool(torch.isfinite(scaled)[torch.isfinite(z)].all()) and compute != torch.float64:
        scaled = z.double() / temperature.to(torch.float64)
    return scaled, dim
