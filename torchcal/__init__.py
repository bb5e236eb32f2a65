"""torchcal: honest probabilities for PyTorch classifiers.

Example:
    >>> import torch
    >>> from torchcal import TemperatureScaler
    >>> _ = torch.manual_seed(0)
    >>> logits = torch.randn(2000, 10) * 3
    >>> labels = torch.distributions.Categorical(logits=logits / 2).sample()
    >>> scaler = TemperatureScaler().fit(logits, labels, progress=False)
    >>> round(scaler.temperature, 1)  # the logits were twice as confident as the labels justify
    2.0
"""

from torchcal import metrics
from torchcal._version import __version__
from torchcal.binning import HistogramBinning, IsotonicCalibrator
from torchcal.calibrator import Calibrator, SoftmaxCalibrator
from torchcal.collect import collect_logits
from torchcal.compare import Comparison, compare
from torchcal.distill import distillation_loss
from torchcal.ensemble import EnsembleTemperatureScaler
from torchcal.errors import CalibrationWarning, NotFittedError
from torchcal.export import CalibratedModel, TemperatureHead
from torchcal.io import load, save
from torchcal.mapped import LogitsFile, open_logits
from torchcal.result import CalibratorFitResult, FitResult
from torchcal.sampling import sample
from torchcal.scaling import DirichletCalibrator, MatrixScaler, VectorScaler
from torchcal.selective import (
    EscalationThreshold,
    RiskCoverageCurve,
    aurc,
    escalation_threshold,
    risk_coverage_curve,
)
from torchcal.sweep import TemperatureSweep, plot_temperature_sweep, temperature_sweep
from torchcal.temperature import TemperatureScaler
from torchcal.tempered import log_softmax, softmax

__all__ = [
    "CalibratedModel",
    "CalibrationWarning",
    "Calibrator",
    "CalibratorFitResult",
    "Comparison",
    "DirichletCalibrator",
    "EnsembleTemperatureScaler",
    "EscalationThreshold",
    "FitResult",
    "HistogramBinning",
    "IsotonicCalibrator",
    "LogitsFile",
    "MatrixScaler",
    "NotFittedError",
    "RiskCoverageCurve",
    "SoftmaxCalibrator",
    "TemperatureHead",
    "TemperatureScaler",
    "TemperatureSweep",
    "VectorScaler",
    "__version__",
    "aurc",
    "collect_logits",
    "compare",
    "distillation_loss",
    "escalation_threshold",
    "load",
    "log_softmax",
    "metrics",
    "open_logits",
    "plot_temperature_sweep",
    "risk_coverage_curve",
    "sample",
    "save",
    "softmax",
    "temperature_sweep",
]
