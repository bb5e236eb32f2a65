"""Token sampling from tempered logits, with greedy decoding at T = 0 and top-k / top-p filters."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from torchcal._inputs.validation import check_floating, check_positive_int
from torchcal.dial.tempered import softmax

__all__ = ["sample"]


def sample(
    logits: Tensor,
    temperature: float,
    generator: torch.Generator | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
) -> Tensor:
    """Draw one index per row of (..., V) logits from ``softmax(logits / T)``; shape (...).

    ``temperature=0`` is greedy decoding: the argmax (the first one under ties), without
    dividing by zero. ``top_k`` keeps only the k most probable tokens (exactly k, ties broken
    towards the lower index); ``top_p`` (nucleus sampling) keeps the smallest set of most
    probable tokens whose tempered probability reaches ``top_p`` (always at least the top one).
    Both filter after tempering, top-k first, and the kept tokens are renormalised. ``-inf``
    logits are never drawn.

    Args:
        logits: (..., V) logits, tokens (classes) last.
        temperature: T >= 0; 0 is greedy decoding.
        generator: the random number generator to draw with, for reproducible draws.
        top_k: keep only the k most probable tokens (``None``: all).
        top_p: keep the smallest set of most probable tokens reaching this probability, in
            (0, 1] (``None``: all).

    Returns:
        The drawn token indices, int64, of shape (...).

    Example:
        >>> logits = torch.tensor([[2.0, 1.0, 0.1], [0.0, 3.0, 0.0]])
        >>> sample(logits, temperature=0.0)
        tensor([0, 1])
        >>> generator = torch.Generator().manual_seed(0)
        >>> sample(logits, temperature=1.0, top_k=1, generator=generator)
        tensor([0, 1])
    """
    logits = check_floating(logits, "logits")
    if logits.ndim == 0 or logits.shape[-1] == 0:
        raise ValueError(
            f"logits must have shape (..., V) with V >= 1 tokens last, got {tuple(logits.shape)}"
        )
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"temperature must be a real number, got {type(temperature).__name__}")
    if not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be finite and >= 0 (0 is greedy), got {temperature}")
    n_tokens = logits.shape[-1]
    if top_k is not None:
        top_k = min(check_positive_int(top_k, "top_k"), n_tokens)
    if top_p is not None:
        if isinstance(top_p, bool) or not isinstance(top_p, (int, float)):
            raise TypeError(f"top_p must be a real number, got {type(top_p).__name__}")
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must lie in (0, 1], got {top_p}")

    flat = logits.reshape(-1, n_tokens)
    if temperature == 0:
        if bool(torch.isnan(flat).any()):
            raise ValueError("logits contain NaN; greedy decoding needs comparable values")
        return flat.argmax(dim=-1).reshape(logits.shape[:-1])
    if flat.shape[0] == 0:
        return torch.empty(logits.shape[:-1], dtype=torch.long, device=logits.device)
    probs = softmax(flat.to(torch.promote_types(flat.dtype, torch.float32)), temperature)
    filter_k = top_k is not None and top_k < n_tokens
    filter_p = top_p is not None and top_p < 1
    if filter_k or filter_p:
        # Most probable first; a stable sort breaks ties towards the lower index.
        ordered, order = probs.sort(dim=-1, descending=True, stable=True)
        keep = torch.ones_like(ordered, dtype=torch.bool)
        if filter_k:
            keep[:, top_k:] = False
            ordered = ordered.masked_fill(~keep, 0.0)
        if filter_p:
            total = ordered.sum(dim=-1, keepdim=True)
            before = (ordered.cumsum(dim=-1) - ordered) / total  # mass of the more probable ones
            before[:, 0] = 0.0
            keep &= before < top_p
        probs = probs.masked_fill(~torch.zeros_like(keep).scatter_(-1, order, keep), 0.0)
    draws = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    return draws.reshape(logits.shape[:-1])
