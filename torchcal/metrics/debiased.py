"""The debiased L2 calibration error of Kumar, Liang and Ma (NeurIPS 2019).

The plug-in binned estimate ``sum_b (n_b / N) (acc_b - conf_b)^2`` is biased upwards: even a
perfectly calibrated model shows a gap in every bin from sampling noise alone. Kumar et al. subtract
the binomial variance of each bin's accuracy, ``acc_b (1 - acc_b) / (n_b - 1)``, before taking the
square root (their ``unbiased_l2_ce``; bins with fewer than 2 samples contribute 0).
"""

from __future__ import annotations

import torch
from torch import Tensor

from torchcal.metrics.calibration import ReliabilityBins, Strategy, reliability_bins

__all__ = ["debiased_calibration_error"]


def _debiased_bins_error(bins: ReliabilityBins) -> Tensor:
    """The debiased L2 calibration error of already computed reliability bins.

    Example:
        >>> probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6]])
        >>> bins = reliability_bins(probs, torch.tensor([0, 1, 1, 1]), n_bins=2)
        >>> round(float(_debiased_bins_error(bins)), 4)
        0.0
    """
    counts = bins.counts.to(torch.float64)
    squared_gaps = (bins.accuracy - bins.confidence).square()
    variance = bins.accuracy * (1 - bins.accuracy) / (counts - 1).clamp(min=1)
    per_bin = torch.where(counts >= 2, squared_gaps - variance, torch.zeros_like(squared_gaps))
    weights = counts / counts.sum(dim=-1, keepdim=True)
    return (per_bin * weights).sum(dim=-1).clamp(min=0).sqrt()


def debiased_calibration_error(
    probs: Tensor, labels: Tensor, n_bins: int = 15, strategy: Strategy = "uniform"
) -> Tensor:
    """Top-label L2 calibration error with the per-bin sampling bias removed (Kumar et al. 2019).

    Equals ``calibration.get_calibration_error(probs, labels, p=2, debias=True,
    mode="top-label")`` of the ``uncertainty-calibration`` package given the same bins (tested).
    It is never above the plug-in RMS error ``expected_calibration_error(..., norm="l2")``.

    Args:
        probs, labels, n_bins, strategy: as in :func:`~torchcal.metrics.reliability_bins`.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> probs = torch.softmax(torch.randn(5000, 4), dim=1)
        >>> labels = torch.multinomial(probs, 1).squeeze(1)  # calibrated by construction
        >>> from torchcal.metrics import expected_calibration_error
        >>> plug_in = float(expected_calibration_error(probs, labels, norm="l2"))
        >>> debiased = float(debiased_calibration_error(probs, labels))
        >>> debiased < 0.5 * plug_in
        True
    """
    return _debiased_bins_error(reliability_bins(probs, labels, n_bins, strategy))
