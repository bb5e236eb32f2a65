"""The calibrators: one base class, seven methods.

:class:`TemperatureScaler` fits one temperature (the default choice); :class:`VectorScaler`,
:class:`MatrixScaler` and :class:`DirichletCalibrator` fit affine maps of the logits or
log-probabilities; :class:`EnsembleTemperatureScaler` mixes temperatures; :class:`HistogramBinning`
and :class:`IsotonicCalibrator` are non-parametric. Each is a :class:`Calibrator`: fitted with
``fit(logits, labels)`` or ``fit(loader)``, and returning a :class:`FitResult`.
"""

from torchcal.calibrators.base import Calibrator, SoftmaxCalibrator
from torchcal.calibrators.binning import HistogramBinning, IsotonicCalibrator
from torchcal.calibrators.ensemble import EnsembleTemperatureScaler
from torchcal.calibrators.result import FitResult
from torchcal.calibrators.scaling import DirichletCalibrator, MatrixScaler, VectorScaler
from torchcal.calibrators.temperature import TemperatureScaler

__all__ = [
    "Calibrator",
    "DirichletCalibrator",
    "EnsembleTemperatureScaler",
    "FitResult",
    "HistogramBinning",
    "IsotonicCalibrator",
    "MatrixScaler",
    "SoftmaxCalibrator",
    "TemperatureScaler",
    "VectorScaler",
]
