"""Proper scoring rules on probabilities: negative log-likelihood and the Brier score."""

from __future__ import annotations

import torch
from torch import Tensor

from torchcal.metrics.calibration import check_probs_and_labels, top_label


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
    probs, labels = check_probs_and_labels(probs, labels, class_dim, ignore_index)
    label_probs = probs.gather(1, labels[:, None]).squeeze(1).to(torch.float64)
    return -label_probs.log().mean()


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
    probs, labels = check_probs_and_labels(probs, labels, class_dim, ignore_index)
    squared = probs.to(torch.float64).square().sum(dim=1)
    label_probs = probs.gather(1, labels[:, None]).squeeze(1).to(torch.float64)
    return (squared - 2 * label_probs + 1).mean()


def accuracy(probs: Tensor, labels: Tensor) -> Tensor:
    """Fraction of samples whose label has the top probability (a tie counts as correct), float64.

    This is the correctness the reliability bins use, so it equals their count-weighted accuracy.

    Example:
        >>> probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
        >>> round(float(accuracy(probs, torch.tensor([0, 1, 1]))), 4)
        0.6667
    """
    return top_label(probs, labels)[1].to(torch.float64).mean()
