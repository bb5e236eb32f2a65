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
from torchcal.result import FitResult
from torchcal.selective import (
    EscalationThreshold,
    RiskCoverageCurve,
    aurc,
    escalation_threshold,
    risk_coverage_curve,
)
from torchcal.temperature import TemperatureScaler
from torchcal.tempered import log_softmax, softmax

__all__ = [
    "CalibrationWarning",
    "EscalationThreshold",
    "FitResult",
    "NotFittedError",
    "RiskCoverageCurve",
    "TemperatureScaler",
    "__version__",
    "aurc",
    "collect_logits",
    "escalation_threshold",
    "log_softmax",
    "metrics",
    "risk_coverage_curve",
    "softmax",
]
