"""Proper scoring rules on probabilities: negative log-likelihood and the Brier score, and accuracy.

Each is the mean of a per-sample term (:mod:`torchcal._terms`) over the statistics of
:mod:`torchcal.metrics.samples`, in float64.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from torchcal.metrics.samples import SampleStatistics, sample_statistics

__all__ = ["accuracy", "brier_score", "negative_log_likelihood"]


def _mean_term(
    term: Callable[[SampleStatistics], Tensor],
    probs: Tensor,
    labels: Tensor,
    class_dim: int | None,
    ignore_index: int | None,
) -> Tensor:
    """The mean over the samples of a per-sample ``term`` of their statistics."""
    squares = term is SampleStatistics.brier_terms
    return term(sample_statistics(probs, labels, class_dim, ignore_index, squares=squares)).mean()


def negative_log_likelihood(
    probs: Tensor,
    labels: Tensor,
    *,
    class_dim: int | None = None,
    ignore_index: int | None = -100,
) -> Tensor:
    """Mean ``-log p_y`` in float64; a zero probability on the label gives ``inf``.

    Args:
        probs, labels, class_dim, ignore_index: as in
            :func:`~torchcal.metrics.reliability_bins`.

    Example:
        >>> probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
        >>> round(float(negative_log_likelihood(probs, torch.tensor([0, 1, 1]))), 4)
        0.4594
    """
    return _mean_term(SampleStatistics.nll_terms, probs, labels, class_dim, ignore_index)


def brier_score(
    probs: Tensor,
    labels: Tensor,
    *,
    class_dim: int | None = None,
    ignore_index: int | None = -100,
) -> Tensor:
    """Mean over samples of ``sum_k (p_k - 1[y = k])^2`` (multi-class Brier score), in float64.

    Args:
        probs, labels, class_dim, ignore_index: as in
            :func:`~torchcal.metrics.reliability_bins`.

    Example:
        >>> probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
        >>> round(float(brier_score(probs, torch.tensor([0, 1, 1]))), 4)
        0.3067
    """
    return _mean_term(SampleStatistics.brier_terms, probs, labels, class_dim, ignore_index)


def accuracy(probs: Tensor, labels: Tensor) -> Tensor:
    """Fraction of samples whose label has the top probability (a tie counts as correct), float64.

    This is the correctness the reliability bins use, so it equals their count-weighted accuracy.

    Args:
        probs: (N, K) probabilities (or any shape :func:`~torchcal.metrics.reliability_bins`
            takes, with the default ``class_dim`` and ``ignore_index``).
        labels: the matching labels.

    Example:
        >>> probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
        >>> round(float(accuracy(probs, torch.tensor([0, 1, 1]))), 4)
        0.6667
    """
    return sample_statistics(probs, labels).correct.to(torch.float64).mean()
