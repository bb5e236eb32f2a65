"""torchcal.compare: each method fitted on the validation split and scored on the test split."""

from __future__ import annotations

import pytest
import torch
from conftest import tempered_logits
from sklearn.metrics import log_loss
from torch import nn
from torchmetrics.functional.classification import multiclass_calibration_error

from torchcal import HistogramBinning, TemperatureScaler, compare
from torchcal._report import calibration_summary


@pytest.fixture(scope="module")
def splits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    logits, labels = tempered_logits(3_000, 5, 2.0, seed=31)
    return logits[:1_500], labels[:1_500], logits[1_500:], labels[1_500:]


@pytest.mark.filterwarnings("ignore:The y_prob values do not sum to one")  # float32 rounding
def test_each_row_scores_the_calibrator_fitted_on_the_validation_split(splits):
    val_logits, val_labels, test_logits, test_labels = splits
    comparison = compare(*splits, ["temperature", "histogram"], n_resamples=20)
    assert list(comparison.summaries) == ["uncalibrated", "temperature", "histogram"]
    scaler = TemperatureScaler().fit(val_logits, val_labels, progress=False)
    assert comparison.calibrators["temperature"].temperature == scaler.temperature
    for name, probs in {
        "uncalibrated": torch.softmax(test_logits.double(), dim=1),
        "temperature": scaler.predict_proba(test_logits).double(),
    }.items():
        summary = comparison.summaries[name]
        nll = log_loss(test_labels.numpy(), probs.numpy(), labels=range(5))
        ece = multiclass_calibration_error(probs, test_labels, num_classes=5, n_bins=15)
        assert summary["NLL"].value == pytest.approx(nll, rel=1e-9)
        assert summary["ECE"].value == pytest.approx(float(ece), abs=1e-6)
        assert summary["accuracy"].value == float((probs.argmax(1) == test_labels).double().mean())
        assert summary["NLL"].low <= summary["NLL"].value <= summary["NLL"].high
    assert comparison.best("NLL") == min(
        comparison.summaries, key=lambda name: comparison.summaries[name]["NLL"].value
    )
    assert set(comparison.fit_seconds) == {"temperature", "histogram"}


def test_calibrator_instances_keep_their_options(splits):
    comparison = compare(*splits, {"coarse": HistogramBinning(bins=4)}, n_resamples=10)
    assert tuple(comparison.calibrators["coarse"].bin_values_.shape) == (5, 4)


def test_probabilities_and_dense_shapes_give_the_flattened_logits_table(splits):
    val_logits, val_labels, test_logits, test_labels = splits
    expected = compare(*splits, ["temperature"], n_resamples=10).summaries["temperature"]
    as_probs = compare(
        torch.softmax(val_logits, 1), val_labels, torch.softmax(test_logits, 1), test_labels,
        ["temperature"], inputs="probs", n_resamples=10,
    ).summaries["temperature"]  # fmt: skip
    dense = compare(
        val_logits.reshape(300, 5, 5, 1).transpose(1, 2), val_labels.reshape(300, 5, 1),
        test_logits.reshape(300, 5, 5, 1).transpose(1, 2), test_labels.reshape(300, 5, 1),
        ["temperature"], class_dim=1, n_resamples=10,
    ).summaries["temperature"]  # fmt: skip
    for found in (as_probs, dense):
        assert found["NLL"].value == pytest.approx(expected["NLL"].value, rel=1e-5)
        assert found["accuracy"].value == expected["accuracy"].value


@pytest.mark.parametrize(
    ("methods", "error", "match"),
    [
        (["bogus"], ValueError, "unknown calibration method 'bogus'"),
        ([3], TypeError, "calibrator kinds or Calibrator instances, got int"),
        (["temperature", TemperatureScaler()], ValueError, "'temperature' is given twice"),
        ({"uncalibrated": "temperature"}, ValueError, "'uncalibrated' is given twice"),
        ([TemperatureScaler(nn.Linear(5, 5))], ValueError, "without a wrapped model"),
        ([TemperatureScaler(inputs="probs")], ValueError, "inputs='probs', class_dim=None"),
        ([HistogramBinning(class_dim=2)], ValueError, "pass inputs= and class_dim= to compare"),
    ],
)
def test_bad_methods_are_named(splits, methods, error, match):
    with pytest.raises(error, match=match):
        compare(*splits, methods, n_resamples=10)


def test_splits_with_different_classes_are_refused(splits):
    val_logits, val_labels, test_logits, test_labels = splits
    with pytest.raises(ValueError, match="validation split has 5 classes but the test split has 4"):
        compare(val_logits, val_labels, test_logits[:, :4], test_labels.clamp(max=3))
    with pytest.raises(ValueError, match="metric must be one of"):
        compare(*splits, ["temperature"], n_resamples=10).best("AUROC")


def test_rows_equal_the_report_summary_of_each_methods_probabilities(splits, capfd):
    _, _, test_logits, test_labels = splits
    quiet = compare(*splits, ["temperature", "histogram"], n_resamples=40, seed=3)
    assert capfd.readouterr().err == ""
    shown = compare(*splits, ["temperature", "histogram"], n_resamples=40, seed=3, progress=True)
    bars = capfd.readouterr().err
    assert "fitting" in bars and "bootstrap" in bars and "40/40" in bars
    for name, calibrator in quiet.calibrators.items():
        probs = calibrator.predict_proba(test_logits).double()
        expected = calibration_summary(probs, test_labels, n_resamples=40, seed=3)
        for metric, interval in expected.items():
            for found in (quiet.summaries[name][metric], shown.summaries[name][metric]):
                assert found.value == interval.value
                assert found.low == pytest.approx(interval.low, abs=1e-12)
                assert found.high == pytest.approx(interval.high, abs=1e-12)
