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
from torchcal.collect import collect_logits
from torchcal.errors import CalibrationWarning, NotFittedError
from torchcal.export import CalibratedModel, TemperatureHead
from torchcal.io import load, save
from torchcal.result import FitResult
from torchcal.temperature import TemperatureScaler

__all__ = [
    "CalibratedModel",
    "CalibrationWarning",
    "FitResult",
    "NotFittedError",
    "TemperatureHead",
    "TemperatureScaler",
    "__version__",
    "collect_logits",
    "load",
    "metrics",
    "save",
]
