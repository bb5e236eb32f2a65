"""Thresholds, risk-coverage curves and AURC against direct numpy computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torchcal.dial import aurc, escalation_threshold, risk_coverage_curve


def numpy_curve(scores: np.ndarray, correct: np.ndarray):
    """Risk and coverage of ``score >= t`` for every distinct t, written with plain loops."""
    thresholds = np.unique(scores)[::-1]
    coverage, risk = [], []
    for t in thresholds:
        accepted = scores >= t
        coverage.append(accepted.mean())
        risk.append(1.0 - correct[accepted].mean())
    return thresholds, np.array(coverage), np.array(risk)


def numpy_aurc(scores: np.ndarray, correct: np.ndarray) -> float:
    """Mean over samples of the risk once that sample's tie group has been accepted."""
    return float(np.mean([1.0 - correct[scores >= s].mean() for s in scores]))


def random_case(n=500, seed=0, ties=False):
    rng = np.random.default_rng(seed)
    scores = rng.random(n)
    if ties:
        scores = np.round(scores * 10) / 10
    correct = rng.random(n) < 0.3 + 0.7 * scores
    return scores, correct


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_curve_and_aurc_match_numpy(ties, seed):
    scores, correct = random_case(seed=seed, ties=ties)
    curve = risk_coverage_curve(torch.tensor(scores), torch.tensor(correct))
    thresholds, coverage, risk = numpy_curve(scores, correct)
    np.testing.assert_array_equal(curve.thresholds.numpy(), thresholds)
    np.testing.assert_allclose(curve.coverage.numpy(), coverage, rtol=1e-12)
    np.testing.assert_allclose(curve.risk.numpy(), risk, rtol=1e-12, atol=1e-15)
    got = float(aurc(torch.tensor(scores), torch.tensor(correct)))
    assert got == pytest.approx(numpy_aurc(scores, correct), rel=1e-12)


def test_aurc_without_ties_is_the_mean_of_prefix_risks():
    scores, correct = random_case(n=200, seed=3)
    order = np.argsort(-scores)
    prefix_risk = 1.0 - np.cumsum(correct[order]) / np.arange(1, 201)
    assert float(aurc(torch.tensor(scores), torch.tensor(correct))) == pytest.approx(
        prefix_risk.mean(), rel=1e-12
    )


def test_ties_do_not_depend_on_order():
    scores = torch.tensor([0.5, 0.9, 0.5, 0.5, 0.1])
    correct = torch.tensor([True, True, False, True, False])
    permutation = torch.tensor([4, 2, 0, 3, 1])
    assert float(aurc(scores, correct)) == float(aurc(scores[permutation], correct[permutation]))
    result = escalation_threshold(scores, correct, target_coverage=0.5)
    assert result == escalation_threshold(
        scores[permutation], correct[permutation], target_coverage=0.5
    )
    assert (result.threshold, result.coverage) == (0.5, 0.8)  # the tie group goes in whole


@pytest.mark.parametrize("target", [0.8, 0.9, 0.95, 0.99])
def test_accuracy_target_maximises_coverage(target):
    scores, correct = random_case(n=400, seed=4)
    result = escalation_threshold(
        torch.tensor(scores), torch.tensor(correct), target_accuracy=target
    )
    accepted = scores >= result.threshold
    assert correct[accepted].mean() == pytest.approx(result.accuracy) and result.accuracy >= target
    assert accepted.mean() == pytest.approx(result.coverage)
    lower = scores[scores < result.threshold]
    if len(lower):  # the next threshold down breaks the target
        assert correct[scores >= lower.max()].mean() < target
    _, coverage, risk = numpy_curve(scores, correct)
    assert result.coverage == pytest.approx(coverage[(1 - risk) >= target].max())


@pytest.mark.parametrize("target", [0.1, 0.5, 0.77, 1.0])
def test_coverage_target_is_the_smallest_reaching_it(target):
    scores, correct = random_case(n=300, seed=5, ties=True)
    result = escalation_threshold(
        torch.tensor(scores), torch.tensor(correct), target_coverage=target
    )
    assert result.coverage >= target
    higher = scores[scores > result.threshold]
    if len(higher):
        assert (scores >= higher.min()).mean() < target


def test_unreachable_accuracy_escalates_everything():
    result = escalation_threshold(
        torch.tensor([0.9, 0.5]), torch.tensor([False, True]), target_accuracy=0.99
    )
    assert result.threshold == math.inf and result.coverage == 0.0 and math.isnan(result.accuracy)
    assert not (torch.tensor([0.9, 0.5]) >= result.threshold).any()


def test_integer_correct_is_accepted():
    scores = torch.tensor([0.9, 0.5, 0.2])
    assert float(aurc(scores, torch.tensor([1, 0, 1]))) == float(
        aurc(scores, torch.tensor([True, False, True]))
    )


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({}, ValueError, "exactly one"),
        ({"target_accuracy": 0.9, "target_coverage": 0.5}, ValueError, "exactly one"),
        ({"target_accuracy": 1.5}, ValueError, r"\[0, 1\]"),
        ({"target_coverage": 0.0}, ValueError, r"\(0, 1\]"),
        ({"target_coverage": "0.5"}, TypeError, "real number"),
    ],
)
def test_bad_targets_raise(kwargs, error, match):
    with pytest.raises(error, match=match):
        escalation_threshold(torch.tensor([0.5, 0.6]), torch.tensor([True, False]), **kwargs)


@pytest.mark.parametrize(
    ("scores", "correct", "error", "match"),
    [
        (torch.tensor([0.5, math.nan]), torch.tensor([True, False]), ValueError, "NaN"),
        (torch.tensor([0.5, 0.6]), torch.tensor([True]), ValueError, "one to one"),
        (torch.tensor([0.5, 0.6]), torch.tensor([0.0, 1.0]), TypeError, "bool"),
        (torch.tensor([0.5, 0.6]), torch.tensor([0, 2]), ValueError, "only 0 and 1"),
        (torch.zeros(0), torch.zeros(0, dtype=torch.bool), ValueError, "non-empty"),
        (torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.bool), ValueError, "1-D"),
    ],
)
def test_bad_inputs_raise(scores, correct, error, match):
    with pytest.raises(error, match=match):
        aurc(scores, correct)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.booleans()), min_size=1, max_size=40))
def test_curve_is_well_formed(pairs):
    scores = torch.tensor([float(s) for s, _ in pairs])
    correct = torch.tensor([c for _, c in pairs])
    curve = risk_coverage_curve(scores, correct)
    assert float(curve.coverage[-1]) == 1.0
    assert bool((torch.diff(curve.coverage) > 0).all())
    assert bool(((curve.risk >= 0) & (curve.risk <= 1)).all())
    assert float(curve.risk[-1]) == pytest.approx(1.0 - correct.double().mean().item())
