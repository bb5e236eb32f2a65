"""Selective prediction: accept a prediction when its score is high enough, escalate the rest.

A score is any per-sample confidence where higher means more trustworthy (the calibrated top-1
margin or max probability, or minus the entropy); ``correct`` says whether each prediction was
right. Accepting the samples with ``score >= threshold`` gives a *coverage* (the fraction
accepted) and a selective *risk* (the error rate among them). Samples with equal scores are
always accepted or escalated together, so every result is deterministic under ties.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from torchcal._inputs.validation import check_floating, check_tensor

__all__ = [
    "EscalationThreshold",
    "RiskCoverageCurve",
    "aurc",
    "escalation_threshold",
    "risk_coverage_curve",
]


@dataclass(frozen=True)
class EscalationThreshold:
    """A threshold on the score and what it achieved on the data it was chosen on.

    Attributes:
        threshold: accept a sample when ``score >= threshold``; ``inf`` accepts none.
        accuracy: the fraction correct among the accepted samples (NaN when none are).
        coverage: the fraction of samples accepted.
    """

    threshold: float
    accuracy: float
    coverage: float


@dataclass(frozen=True)
class RiskCoverageCurve:
    """Risk against coverage, one point per distinct score, from the highest score down.

    Attributes:
        thresholds: (M,) the distinct scores, descending; point i accepts
            ``score >= thresholds[i]``.
        coverage: (M,) the fraction accepted at each threshold, increasing to 1.
        risk: (M,) the error rate among the accepted samples at each threshold.
    """

    thresholds: Tensor
    coverage: Tensor
    risk: Tensor


def risk_coverage_curve(scores: Tensor, correct: Tensor) -> RiskCoverageCurve:
    """Selective risk at every threshold that changes the accepted set, in float64.

    Args:
        scores: (N,) finite per-sample confidences, higher meaning more trustworthy.
        correct: (N,) whether each prediction was right (bool, or 0/1 integers).

    Example:
        >>> scores = torch.tensor([0.9, 0.8, 0.8, 0.3])
        >>> curve = risk_coverage_curve(scores, torch.tensor([True, True, False, False]))
        >>> curve.coverage.tolist(), [round(r, 4) for r in curve.risk.tolist()]
        ([0.25, 0.75, 1.0], [0.0, 0.3333, 0.5])
    """
    scores, correct = _check_scores_and_correct(scores, correct)
    order = torch.argsort(scores, descending=True, stable=True)
    thresholds, counts = torch.unique_consecutive(scores[order], return_counts=True)
    ends = counts.cumsum(0) - 1
    accepted = (ends + 1).to(torch.float64)
    right = correct[order].to(torch.float64).cumsum(0)[ends]
    return RiskCoverageCurve(
        thresholds=thresholds.to(torch.float64),
        coverage=accepted / len(scores),
        risk=1.0 - right / accepted,
    )


def aurc(scores: Tensor, correct: Tensor) -> Tensor:
    """Area under the risk-coverage curve (lower is better), a 0-dim float64 tensor.

    The mean over samples, taken from the highest score down, of the selective risk once that
    sample is accepted; tied samples share the risk after their whole group is accepted. Without
    ties this is ``(1/N) sum_i risk(first i samples)``.

    Args:
        scores: (N,) finite per-sample confidences, higher meaning more trustworthy.
        correct: (N,) whether each prediction was right (bool, or 0/1 integers).

    Example:
        >>> scores = torch.tensor([0.9, 0.8, 0.7, 0.3])
        >>> aurc(scores, torch.tensor([True, True, False, False]))
        tensor(0.2083, dtype=torch.float64)
    """
    curve = risk_coverage_curve(scores, correct)
    widths = torch.diff(curve.coverage, prepend=curve.coverage.new_zeros(1))
    return (widths * curve.risk).sum()


def escalation_threshold(
    scores: Tensor,
    correct: Tensor,
    target_accuracy: float | None = None,
    target_coverage: float | None = None,
) -> EscalationThreshold:
    """Choose the score threshold for a target accepted accuracy or a target coverage.

    Give exactly one target. Choose the threshold on validation data, then apply
    ``scores >= result.threshold`` to new data.

    Args:
        scores: (N,) finite per-sample confidences, higher meaning more trustworthy.
        correct: (N,) whether each prediction was right (bool, or 0/1 integers).
        target_accuracy: in [0, 1]: accept as many samples as possible while the accepted
            accuracy stays ``>= target_accuracy``; when no threshold reaches it, the threshold
            is ``inf`` (escalate everything).
        target_coverage: in (0, 1]: the highest threshold accepting at least this fraction of
            the samples.

    Example:
        >>> scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.2])
        >>> correct = torch.tensor([True, True, True, False, True])
        >>> escalation_threshold(scores, correct, target_accuracy=0.9)
        EscalationThreshold(threshold=0.699999988079071, accuracy=1.0, coverage=0.6)
        >>> escalation_threshold(scores, correct, target_coverage=0.8).accuracy
        0.75
    """
    if (target_accuracy is None) == (target_coverage is None):
        raise ValueError(
            "give exactly one of target_accuracy and target_coverage, got "
            f"target_accuracy={target_accuracy!r} and target_coverage={target_coverage!r}"
        )
    curve = risk_coverage_curve(scores, correct)
    accuracy = 1.0 - curve.risk
    if target_accuracy is not None:
        target = _check_fraction(target_accuracy, "target_accuracy", allow_zero=True)
        feasible = torch.nonzero(accuracy >= target).flatten()
        if len(feasible) == 0:
            return EscalationThreshold(threshold=math.inf, accuracy=math.nan, coverage=0.0)
        index = int(feasible[-1])
    else:
        target = _check_fraction(target_coverage, "target_coverage", allow_zero=False)
        index = int(torch.nonzero(curve.coverage >= target).flatten()[0])
    return EscalationThreshold(
        threshold=float(curve.thresholds[index]),
        accuracy=float(accuracy[index]),
        coverage=float(curve.coverage[index]),
    )


def _check_fraction(value: object, name: str, allow_zero: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    low_ok = value >= 0.0 if allow_zero else value > 0.0
    if not (low_ok and value <= 1.0):
        interval = "[0, 1]" if allow_zero else "(0, 1]"
        raise ValueError(f"{name} must lie in {interval}, got {value}")
    return value


def _check_scores_and_correct(scores: object, correct: object) -> tuple[Tensor, Tensor]:
    scores = check_floating(scores, "scores")
    correct = check_tensor(correct, "correct")
    if scores.ndim != 1 or len(scores) == 0:
        raise ValueError(
            f"scores must be a non-empty 1-D tensor (one score per sample), got shape "
            f"{tuple(scores.shape)}"
        )
    finite = torch.isfinite(scores)
    if not bool(finite.all()):
        raise ValueError(f"scores contain {int((~finite).sum())} NaN or infinite value(s)")
    if correct.dtype.is_floating_point or correct.dtype.is_complex:
        raise TypeError(
            f"correct must be a bool (or 0/1 integer) tensor, got dtype {correct.dtype}; "
            "compute it as predictions == labels"
        )
    if correct.shape != scores.shape:
        raise ValueError(
            f"correct has shape {tuple(correct.shape)} but scores have shape "
            f"{tuple(scores.shape)}; they must match one to one"
        )
    if correct.dtype != torch.bool:
        if bool(((correct != 0) & (correct != 1)).any()):
            raise ValueError("correct must hold only 0 and 1 (or True and False)")
        correct = correct.bool()
    return scores, correct
