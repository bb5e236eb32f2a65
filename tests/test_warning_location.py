"""A CalibrationWarning names the user's own call, whichever calibrator and code path raised it."""

from __future__ import annotations

import warnings

import pytest
import torch

import torchcal
from torchcal import CalibrationWarning
from torchcal.errors import warn

SEPARABLE = torch.eye(10).repeat(30, 1) * 5, torch.arange(10).repeat(30)
WARNING_KINDS = ["dirichlet", "ensemble_temperature", "matrix", "temperature", "vector"]


@pytest.mark.parametrize("kind", WARNING_KINDS)
def test_a_fit_warning_points_at_the_line_that_called_fit(kind):
    calibrator = torchcal.Calibrator.registry[kind]()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        calibrator.fit(*SEPARABLE, progress=False); line = _line()  # fmt: skip  # noqa: E702
    ours = [w for w in caught if issubclass(w.category, CalibrationWarning)]
    assert ours, f"{kind} gave no CalibrationWarning on separable data"
    assert {(w.filename, w.lineno) for w in ours} == {(__file__, line)}


def test_a_fit_warning_is_an_error_under_an_error_filter_for_the_callers_module():
    with warnings.catch_warnings():
        warnings.filterwarnings("error", category=CalibrationWarning, module=__name__)
        with pytest.raises(CalibrationWarning):
            torchcal.TemperatureScaler().fit(*SEPARABLE, progress=False)


def test_warn_outside_torchcal_points_at_its_caller():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn("held at the bound"); line = _line()  # fmt: skip  # noqa: E702
    assert [(w.filename, w.lineno) for w in caught] == [(__file__, line)]


def _line() -> int:
    import sys

    return sys._getframe(1).f_lineno
