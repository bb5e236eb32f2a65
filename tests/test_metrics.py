"""Calibration metrics against torchmetrics, netcal, scikit-learn and plain numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import requires_cuda, tempered_logits
from hypothesis import given, settings
from hypothesis import strategies as st
from netcal.metrics import ECE
from sklearn.metrics import log_loss
from torchmetrics.functional.classification import multiclass_calibration_error

from torchcal.metrics import (
    brier_score,
    classwise_calibration_error,
    expected_calibration_error,
    maximum_calibration_error,
    negative_log_likelihood,
    reliability_bins,
)


def probabilities(n=5_000, k=10, seed=0, dtype=torch.float64):
    logits, labels = tempered_logits(n, k, 2.0, seed=seed)
    return torch.softmax(logits.to(dtype), dim=1), labels


@pytest.mark.parametrize("norm", ["l1", "l2", "max"])
@pytest.mark.parametrize(("n_bins", "k", "seed"), [(15, 10, 0), (10, 3, 1), (20, 100, 2)])
def test_ece_equals_torchmetrics(norm, n_bins, k, seed):
    probs, labels = probabilities(k=k, seed=seed)
    ours = expected_calibration_error(probs, labels, n_bins=n_bins, norm=norm)
    theirs = multiclass_calibration_error(probs, labels, num_classes=k, n_bins=n_bins, norm=norm)
    assert float(ours) == pytest.approx(float(theirs), abs=1e-6)


@pytest.mark.parametrize(("n_bins", "k", "seed"), [(15, 10, 3), (10, 2, 4), (5, 50, 5)])
def test_ece_equals_netcal(n_bins, k, seed):
    probs, labels = probabilities(k=k, seed=seed)
    theirs = ECE(bins=n_bins).measure(probs.numpy(), labels.numpy())
    ours = expected_calibration_error(probs, labels, n_bins=n_bins)
    assert float(ours) == pytest.approx(float(theirs), abs=1e-6)


def test_float32_probabilities_agree_with_torchmetrics():
    probs, labels = probabilities(dtype=torch.float32, seed=6)
    theirs = multiclass_calibration_error(probs, labels, num_classes=10, n_bins=15)
    assert float(expected_calibration_error(probs, labels)) == pytest.approx(
        float(theirs), abs=1e-6
    )


def test_mce_is_the_max_norm():
    probs, labels = probabilities(seed=7)
    assert torch.equal(
        maximum_calibration_error(probs, labels),
        expected_calibration_error(probs, labels, norm="max"),
    )


def _numpy_bins(confidences, correct, edges):
    index = np.clip(np.searchsorted(edges, confidences, side="right") - 1, 0, len(edges) - 2)
    counts = np.bincount(index, minlength=len(edges) - 1)
    conf = np.bincount(index, confidences, minlength=len(edges) - 1) / np.maximum(counts, 1)
    acc = np.bincount(index, correct, minlength=len(edges) - 1) / np.maximum(counts, 1)
    return counts, conf, acc


def test_reliability_bins_match_a_numpy_binning_and_give_the_ece():
    probs, labels = probabilities(seed=8)
    bins = reliability_bins(probs, labels, n_bins=15)
    p = probs.numpy()
    confidences, correct = p.max(1), (p.argmax(1) == labels.numpy()).astype(float)
    counts, conf, acc = _numpy_bins(confidences, correct, np.linspace(0, 1, 16))
    np.testing.assert_array_equal(bins.counts.numpy(), counts)
    np.testing.assert_allclose(bins.confidence.numpy(), conf, atol=1e-12)
    np.testing.assert_allclose(bins.accuracy.numpy(), acc, atol=1e-12)
    ece = np.sum(np.abs(acc - conf) * counts) / counts.sum()
    assert float(bins.calibration_error()) == pytest.approx(ece, abs=1e-12)
    assert bins.n_samples == len(labels)


def test_quantile_bins_hold_equal_numbers_of_samples():
    probs, labels = probabilities(n=3_000, seed=9)
    bins = reliability_bins(probs, labels, n_bins=10, strategy="quantile")
    assert bins.counts.tolist() == [300] * 10
    confidences = probs.max(1).values.numpy()
    correct = (probs.argmax(1) == labels).double().numpy()
    edges = np.quantile(confidences, np.linspace(0, 1, 11))
    edges[0], edges[-1] = 0.0, 1.0
    counts, conf, acc = _numpy_bins(confidences, correct, edges)
    ece = np.sum(np.abs(acc - conf) * counts) / counts.sum()
    adaptive = expected_calibration_error(probs, labels, n_bins=10, strategy="quantile")
    assert float(adaptive) == pytest.approx(ece, abs=1e-12)


def test_classwise_error_matches_a_numpy_one_vs_rest_computation():
    probs, labels = probabilities(k=5, seed=10)
    p, y = probs.numpy(), labels.numpy()
    edges = np.linspace(0, 1, 16)
    errors = []
    for k in range(5):
        counts, conf, acc = _numpy_bins(p[:, k], (y == k).astype(float), edges)
        errors.append(np.sum(np.abs(acc - conf) * counts) / counts.sum())
    assert float(classwise_calibration_error(probs, labels)) == pytest.approx(
        np.mean(errors), abs=1e-12
    )


def test_nll_and_brier_match_scikit_learn_and_numpy():
    probs, labels = probabilities(k=7, seed=11)
    p, y = probs.numpy(), labels.numpy()
    assert float(negative_log_likelihood(probs, labels)) == pytest.approx(
        log_loss(y, p, labels=list(range(7))), rel=1e-10
    )
    brier = np.mean(np.sum((p - np.eye(7)[y]) ** 2, axis=1))
    assert float(brier_score(probs, labels)) == pytest.approx(brier, rel=1e-10)


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 8), st.integers(1, 200), st.integers(0, 1000), st.integers(1, 30))
def test_ece_lies_in_the_unit_interval_and_mce_bounds_it(k, n, seed, n_bins):
    probs, labels = probabilities(n=n, k=k, seed=seed)
    ece = float(expected_calibration_error(probs, labels, n_bins=n_bins))
    rms = float(expected_calibration_error(probs, labels, n_bins=n_bins, norm="l2"))
    mce = float(maximum_calibration_error(probs, labels, n_bins=n_bins))
    assert 0.0 <= ece <= rms + 1e-12 <= mce + 2e-12 <= 1.0 + 2e-12


def test_metrics_keep_the_device_and_return_float64():
    probs, labels = probabilities(n=100, dtype=torch.float32)
    for value in (
        expected_calibration_error(probs, labels),
        negative_log_likelihood(probs, labels),
        brier_score(probs, labels),
    ):
        assert value.dtype == torch.float64 and value.ndim == 0


@requires_cuda
def test_metrics_on_cuda_equal_cpu():
    probs, labels = probabilities(seed=12)
    for norm in ("l1", "l2", "max"):
        gpu = expected_calibration_error(probs.cuda(), labels.cuda(), norm=norm)
        assert gpu.device.type == "cuda"
        assert float(gpu) == pytest.approx(
            float(expected_calibration_error(probs, labels, norm=norm))
        )


@pytest.mark.parametrize(
    ("probs", "labels", "message"),
    [
        (torch.tensor([[2.0, -1.0]]), torch.tensor([0]), "apply torch.softmax"),
        (torch.tensor([[0.5, 0.2]]), torch.tensor([0]), "rows must sum to 1"),
        (torch.tensor([[0.5, float("nan")]]), torch.tensor([0]), "NaN"),
        (torch.tensor([[0.5, 0.5]]), torch.tensor([2]), r"\[0, 2\)"),
        (torch.tensor([[0.5, 0.5]]), torch.tensor([0, 1]), "do not match"),
        (torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), "empty"),
    ],
)
def test_bad_metric_input_is_named(probs, labels, message):
    with pytest.raises(ValueError, match=message):
        expected_calibration_error(probs, labels)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"n_bins": 0}, "n_bins must be >= 1"),
        ({"norm": "l3"}, "norm must be one of"),
        ({"strategy": "log"}, "strategy must be one of"),
    ],
)
def test_bad_metric_options_are_named(options, message):
    probs, labels = probabilities(n=10)
    with pytest.raises(ValueError, match=message):
        expected_calibration_error(probs, labels, **options)
