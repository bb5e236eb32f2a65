"""Debiased ECE, smooth ECE and bootstrap intervals against independent implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from torchcal.metrics import (
    Bootstrap,
    MetricInterval,
    accuracy,
    bootstrap_interval,
    bootstrap_intervals,
    brier_score,
    debiased_calibration_error,
    expected_calibration_error,
    maximum_calibration_error,
    negative_log_likelihood,
    reliability_bins,
    smooth_calibration_error,
)
from torchcal.metrics.samples import sample_statistics

kumar = pytest.importorskip("calibration")  # uncertainty-calibration (Kumar et al.)
relplot = pytest.importorskip("relplot")

CASES = [
    (0, 5000, 10, 2.0),
    (1, 300, 4, 4.0),
    (2, 20000, 100, 1.0),
    (3, 65, 3, 0.5),
]  # N - 1 coprime with 15: no quantile edge on a sample


def overconfident(seed: int, n: int, k: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=generator, dtype=torch.float64) * scale
    labels = torch.multinomial(torch.softmax(logits / 1.5, dim=1), 1, generator=generator)
    return torch.softmax(logits, dim=1), labels.squeeze(1)


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
@pytest.mark.parametrize(("seed", "n", "k", "scale"), CASES)
def test_debiased_ece_matches_uncertainty_calibration(seed, n, k, scale, strategy):
    probs, labels = overconfident(seed, n, k, scale)
    edges = reliability_bins(probs, labels, 15, strategy).edges[1:].tolist()
    reference = kumar.lower_bound_scaling_ce(
        probs.numpy(),
        labels.numpy(),
        p=2,
        debias=True,
        num_bins=15,
        binning_scheme=lambda probs, num_bins: edges,  # identical bins
        mode="top-label",
    )
    ours = float(debiased_calibration_error(probs, labels, 15, strategy))
    assert ours == pytest.approx(reference, abs=1e-12)  # measured: <= 1e-16
    assert ours <= float(expected_calibration_error(probs, labels, 15, strategy, norm="l2"))


def test_uniform_ece_matches_uncertainty_calibration_plug_in():
    probs, labels = overconfident(0, 5000, 10, 2.0)
    reference = kumar.get_ece(probs.numpy(), labels.numpy(), num_bins=15)
    assert float(expected_calibration_error(probs, labels)) == pytest.approx(reference, abs=1e-12)


def test_debiased_ece_is_near_zero_for_calibrated_probabilities():
    generator = torch.Generator().manual_seed(5)
    probs = torch.softmax(torch.randn(20000, 5, generator=generator, dtype=torch.float64), dim=1)
    labels = torch.multinomial(probs, 1, generator=generator).squeeze(1)
    plug_in = float(expected_calibration_error(probs, labels, norm="l2"))
    assert float(debiased_calibration_error(probs, labels)) < 0.5 * plug_in


@pytest.mark.parametrize(("seed", "n", "k", "scale"), CASES)
def test_smooth_ece_matches_relplot(seed, n, k, scale):
    probs, labels = overconfident(seed, n, k, scale)
    statistics = sample_statistics(probs, labels)
    confidences, correct = statistics.confidences, statistics.correct
    f, y = confidences.numpy(), correct.double().numpy()
    reference = relplot.smECE(f, y)
    assert float(smooth_calibration_error(probs, labels)) == pytest.approx(reference, abs=1e-12)
    fixed = relplot.smECE_sigma(f, y, 0.05)
    ours = float(smooth_calibration_error(probs, labels, bandwidth=0.05))
    assert ours == pytest.approx(fixed, abs=1e-12)  # measured: <= 1e-16 on these cases


def test_smooth_ece_rejects_a_bad_bandwidth():
    probs, labels = overconfident(0, 100, 3, 1.0)
    with pytest.raises(ValueError, match="bandwidth"):
        smooth_calibration_error(probs, labels, bandwidth=0.0)


VECTORISED = [
    (accuracy, {}),
    (negative_log_likelihood, {}),
    (brier_score, {}),
    (expected_calibration_error, {}),
    (expected_calibration_error, {"n_bins": 10, "norm": "l2"}),
    (maximum_calibration_error, {"n_bins": 5}),
]


@pytest.mark.parametrize(("metric", "kwargs"), VECTORISED)
def test_vectorised_bootstrap_equals_one_resample_at_a_time(metric, kwargs):
    probs, labels = overconfident(1, 400, 4, 3.0)
    fast = bootstrap_interval(metric, probs, labels, n_resamples=200, seed=7, **kwargs)
    slow = bootstrap_interval(
        lambda p, y, **kw: metric(p, y, **kw), probs, labels, n_resamples=200, seed=7, **kwargs
    )
    assert fast.value == slow.value
    assert fast.low == pytest.approx(slow.low, abs=1e-12)
    assert fast.high == pytest.approx(slow.high, abs=1e-12)


def test_bootstrap_interval_is_the_numpy_percentile_interval_of_the_same_draws():
    probs, labels = overconfident(2, 300, 5, 2.0)
    interval = bootstrap_interval(
        debiased_calibration_error, probs, labels, n_resamples=100, confidence=0.9, seed=3
    )
    indices = torch.randint(300, (100, 300), generator=torch.Generator().manual_seed(3))
    values = [float(debiased_calibration_error(probs[i], labels[i])) for i in indices]
    assert isinstance(interval, MetricInterval)
    assert interval.value == float(debiased_calibration_error(probs, labels))
    assert interval.low == pytest.approx(np.percentile(values, 5), abs=1e-12)
    assert interval.high == pytest.approx(np.percentile(values, 95), abs=1e-12)


def test_bootstrap_accuracy_interval_matches_the_normal_approximation():
    probs, labels = overconfident(4, 4000, 10, 2.0)
    interval = bootstrap_interval(accuracy, probs, labels, n_resamples=2000, seed=0)
    p = interval.value
    half_width = 1.959964 * (p * (1 - p) / 4000) ** 0.5
    assert interval.high - interval.low == pytest.approx(2 * half_width, rel=0.1)
    assert interval.low < p < interval.high


def test_bootstrap_is_reproducible_and_validates_arguments():
    probs, labels = overconfident(0, 200, 3, 1.0)
    first = bootstrap_interval(expected_calibration_error, probs, labels, n_resamples=50, seed=1)
    again = bootstrap_interval(expected_calibration_error, probs, labels, n_resamples=50, seed=1)
    assert first == again
    generator = torch.Generator().manual_seed(1)
    same = bootstrap_interval(
        expected_calibration_error, probs, labels, n_resamples=50, seed=generator
    )
    assert same == first
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_interval(accuracy, probs, labels, confidence=1.5)
    with pytest.raises(ValueError, match="n_resamples"):
        bootstrap_interval(accuracy, probs, labels, n_resamples=0)


def test_bootstrap_of_an_infinite_nll_gives_an_open_interval_not_nan():
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]]).repeat(20, 1)
    probs[0] = torch.tensor([0.0, 1.0])  # one sample gives its label probability 0
    labels = torch.tensor([0, 0, 1]).repeat(20)
    interval = bootstrap_interval(negative_log_likelihood, probs, labels, n_resamples=200)
    # The resamples that leave sample 0 out are finite; the others are infinite, as the value.
    one_by_one = bootstrap_interval(
        lambda p, y: negative_log_likelihood(p, y), probs, labels, n_resamples=200
    )
    assert interval.value == math.inf and interval.high == math.inf
    assert math.isfinite(interval.low) and interval == one_by_one


def test_bootstrap_intervals_share_draws_and_equal_one_metric_at_a_time():
    probs, labels = overconfident(5, 700, 6, 2.5)
    metrics = {
        "accuracy": accuracy,
        "NLL": negative_log_likelihood,
        "ECE": expected_calibration_error,
        "MCE": maximum_calibration_error,
        "Brier": brier_score,
        "debiased": debiased_calibration_error,  # no batched form: called per resample
    }
    together = bootstrap_intervals(metrics, probs, labels, n_resamples=150, seed=4)
    for name, metric in metrics.items():
        alone = bootstrap_interval(metric, probs, labels, n_resamples=150, seed=4)
        assert together[name].value == alone.value
        assert together[name].low == pytest.approx(alone.low, abs=1e-12)
        assert together[name].high == pytest.approx(alone.high, abs=1e-12)


def test_bootstrap_of_many_bins_and_of_metrics_with_options_equals_the_naive_recompute():
    probs, labels = overconfident(6, 500, 4, 3.0)
    cases = [
        (expected_calibration_error, {"n_bins": 300, "norm": "l2"}),  # many non-empty bins
        (expected_calibration_error, {"strategy": "quantile"}),
        (negative_log_likelihood, {"ignore_index": None}),
    ]
    for metric, kwargs in cases:
        fast = bootstrap_interval(metric, probs, labels, n_resamples=60, seed=2, **kwargs)
        naive = bootstrap_interval(
            lambda p, y, metric=metric, **kw: metric(p, y, **kw),
            probs,
            labels,
            n_resamples=60,
            seed=2,
            **kwargs,
        )
        assert fast.value == naive.value
        assert fast.low == pytest.approx(naive.low, abs=1e-12)
        assert fast.high == pytest.approx(naive.high, abs=1e-12)


def test_bootstrap_scores_several_probability_sets_on_the_same_draws():
    probs, labels = overconfident(7, 400, 3, 2.0)
    sharper = torch.softmax(probs.log() * 1.5, dim=1)
    bootstrap = Bootstrap(n_resamples=80, seed=9)
    bootstrap.add("a", {"ECE": expected_calibration_error}, probs, labels)
    bootstrap.add("b", {"ECE": expected_calibration_error}, sharper.numpy(), labels.numpy())
    found = bootstrap.intervals()
    for name, p in (("a", probs), ("b", sharper)):
        alone = bootstrap_interval(expected_calibration_error, p, labels, n_resamples=80, seed=9)
        assert found[name]["ECE"].low == pytest.approx(alone.low, abs=1e-12)
        assert found[name]["ECE"].high == pytest.approx(alone.high, abs=1e-12)
    with pytest.raises(ValueError, match="399 samples but the earlier ones have 400"):
        bootstrap.add("c", {"ECE": expected_calibration_error}, probs[1:], labels[1:])
    with pytest.raises(TypeError, match=r"seed must be an int or a torch\.Generator"):
        Bootstrap(seed=0.5)
    with pytest.raises(RuntimeError, match="nothing to resample"):
        Bootstrap().intervals()
