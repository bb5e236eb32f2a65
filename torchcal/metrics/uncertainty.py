"""Per-sample uncertainty signals from probabilities: entropy, top-1 margin, max probability.

Each takes probabilities of any shape with the classes along ``dim`` (the last by default), checks
that they lie in [0, 1] and sum to 1, and returns one value per sample (the shape without ``dim``)
in the probabilities' dtype (a numpy array is read as a tensor). Higher entropy, a lower margin
or a lower max probability means less certain.
"""

from __future__ import annotations

import torch
from torch import Tensor

from torchcal._inputs import check_probabilities
from torchcal.metrics._inputs import as_tensor

__all__ = ["entropy", "max_probability", "top1_margin"]


def entropy(probs: Tensor, dim: int = -1) -> Tensor:
    """Shannon entropy ``-sum_k p_k log p_k`` in nats (``0 log 0 = 0``), from 0 to ``log K``.

    Args:
        probs: probabilities (tensor or numpy array), the classes along ``dim``.
        dim: the class dimension.

    Example:
        >>> entropy(torch.tensor([[0.5, 0.5], [1.0, 0.0]]))
        tensor([0.6931, 0.0000])
    """
    probs, dim = check_probabilities(as_tensor(probs, "probs"), dim)
    wide = probs.to(torch.promote_types(probs.dtype, torch.float32))
    return (torch.special.entr(wide).sum(dim=dim) + 0.0).to(probs.dtype)  # + 0.0: no -0.0


def top1_margin(probs: Tensor, dim: int = -1) -> Tensor:
    """The largest probability minus the second largest, in [0, 1]; needs K >= 2 classes.

    Args:
        probs, dim: as in :func:`entropy`.

    Example:
        >>> top1_margin(torch.tensor([0.5755, 0.3858, 0.0387]))
        tensor(0.1897)
    """
    probs, dim = check_probabilities(as_tensor(probs, "probs"), dim)
    if probs.shape[dim] < 2:
        raise ValueError(
            f"top1_margin needs at least 2 classes along dim {dim}, got {probs.shape[dim]}"
        )
    top2 = probs.topk(2, dim=dim).values
    return top2.select(dim, 0) - top2.select(dim, 1)


def max_probability(probs: Tensor, dim: int = -1) -> Tensor:
    """The largest probability (the top-label confidence), in [1/K, 1].

    Args:
        probs, dim: as in :func:`entropy`.

    Example:
        >>> max_probability(torch.tensor([[0.2, 0.8], [0.6, 0.4]]))
        tensor([0.8000, 0.6000])
    """
    probs, dim = check_probabilities(as_tensor(probs, "probs"), dim)
    return probs.amax(dim=dim)
