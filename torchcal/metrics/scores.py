"""Proper scoring rules on probabilities: negative log-likelihood and the Brier score.

Each is the mean of a per-sample term from :mod:`torchcal.metrics.samples`, in float64.
"""

from __future__ import annotations

import torch
from torch import Tensor

from torchcal.metrics.samples import sample_statistics


def negative_log_likelihood(
    probs: Tensor,
    labels: Tensor,
    *,
    class_dim: int | None = None,
    ignore_index: int | None = -100,
) -> Tensor:
    """Mean ``-log p_y`` in float64; a zero probability on the label gives ``inf``.

    Example:
        >>> probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
        >>> round(float(negative_log_likelihood(probs, torch.tensor([0, 1, 1]))), 4)
        0.4594
    """
    return sample_statistics(probs, labels, class_dim, ignore_index).nll_terms().mean()


def brier_score(
    probs: Tensor,
    labels: Tensor,
    *,
    class_dim: int | None = None,
    ignore_index: int | None = -100,
) -> Tensor:
    """Mean over samples of ``sum_k (p_k - 1[y = k])^2`` (multi-class Brier score), in float64.

    Example:
        >>> probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
        >>> round(float(brier_score(probs, torch.tensor([0, 1, 1]))), 4)
        0.3067
    """
    statistics = sample_statistics(probs, labels, class_dim, ignore_index, squares=True)
    return statistics.brier_terms().mean()


def accuracy(probs: Tensor, labels: Tensor) -> Tensor:
    """Fraction of samples whose label has the top probability (a tie counts as correct), float64.

    This is the correctness the reliability bins use, so it equals their count-weighted accuracy.

    Example:
        >>> probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
        >>> round(float(accuracy(probs, torch.tensor([0, 1, 1]))), 4)
        0.6667
    """
    return sample_statistics(probs, labels).correct.to(torch.float64).mean()
