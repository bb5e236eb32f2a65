"""Temperature as a dial: the uses of a temperature beyond calibration.

Every tool here takes logits and a temperature you choose (or sweep): a numerically stable
tempered :func:`softmax`/:func:`log_softmax`, :func:`sample` at a temperature,
:func:`distillation_loss` with soft targets, :func:`temperature_sweep` of accuracy, NLL, entropy
and margin over a range of temperatures, and selective prediction (:func:`risk_coverage_curve`,
:func:`aurc`, :func:`escalation_threshold`) for escalating uncertain cases.

Example:
    >>> import torch
    >>> from torchcal.dial import softmax
    >>> softmax(torch.tensor([[2.0, 0.0]]), temperature=2.0)
    tensor([[0.7311, 0.2689]])
"""

from torchcal.dial.distill import distillation_loss
from torchcal.dial.sampling import sample
from torchcal.dial.selective import (
    EscalationThreshold,
    RiskCoverageCurve,
    aurc,
    escalation_threshold,
    risk_coverage_curve,
)
from torchcal.dial.sweep import TemperatureSweep, plot_temperature_sweep, temperature_sweep
from torchcal.dial.tempered import log_softmax, softmax

__all__ = [
    "EscalationThreshold",
    "RiskCoverageCurve",
    "TemperatureSweep",
    "aurc",
    "distillation_loss",
    "escalation_threshold",
    "log_softmax",
    "plot_temperature_sweep",
    "risk_coverage_curve",
    "sample",
    "softmax",
    "temperature_sweep",
]
