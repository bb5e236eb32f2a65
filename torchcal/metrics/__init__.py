"""Calibration metrics: functional, torch in and torch out, on any device.

Example:
    >>> import torch
    >>> from torchcal.metrics import expected_calibration_error
    >>> probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    >>> round(float(expected_calibration_error(probs, torch.tensor([0, 1, 1]))), 4)
    0.3333
"""

from torchcal.metrics.bootstrap import (
    Bootstrap,
    MetricInterval,
    bootstrap_interval,
    bootstrap_intervals,
)
from torchcal.metrics.calibration import (
    ReliabilityBins,
    classwise_calibration_error,
    expected_calibration_error,
    maximum_calibration_error,
    reliability_bins,
)
from torchcal.metrics.debiased import debiased_calibration_error
from torchcal.metrics.scores import accuracy, brier_score, negative_log_likelihood
from torchcal.metrics.smooth import smooth_calibration_error
from torchcal.metrics.streaming import CalibrationErrorMeter
from torchcal.metrics.uncertainty import entropy, max_probability, top1_margin

__all__ = [
    "Bootstrap",
    "CalibrationErrorMeter",
    "MetricInterval",
    "ReliabilityBins",
    "accuracy",
    "bootstrap_interval",
    "bootstrap_intervals",
    "brier_score",
    "classwise_calibration_error",
    "debiased_calibration_error",
    "entropy",
    "expected_calibration_error",
    "max_probability",
    "maximum_calibration_error",
    "negative_log_likelihood",
    "reliability_bins",
    "smooth_calibration_error",
    "top1_margin",
]
