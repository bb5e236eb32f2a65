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

from torchcal import dial, metrics
from torchcal._inputs.collect import collect_logits
from torchcal._version import __version__
from torchcal.calibrators import (
    Calibrator,
    DirichletCalibrator,
    EnsembleTemperatureScaler,
    FitResult,
    HistogramBinning,
    IsotonicCalibrator,
    MatrixScaler,
    TemperatureScaler,
    VectorScaler,
)
from torchcal.compare import Comparison, compare
from torchcal.errors import CalibrationWarning, NotFittedError
from torchcal.export import CalibratedModel
from torchcal.io import LogitsFile, load, open_logits, save

__all__ = [
    "CalibratedModel",
    "CalibrationWarning",
    "Calibrator",
    "Comparison",
    "DirichletCalibrator",
    "EnsembleTemperatureScaler",
    "FitResult",
    "HistogramBinning",
    "IsotonicCalibrator",
    "LogitsFile",
    "MatrixScaler",
    "NotFittedError",
    "TemperatureScaler",
    "VectorScaler",
    "__version__",
    "collect_logits",
    "compare",
    "dial",
    "load",
    "metrics",
    "open_logits",
    "save",
]
