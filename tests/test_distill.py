"""Distillation loss against manual float64 sums, its gradient and its argument checks."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torchcal.dial import distillation_loss


def manual_loss(student, teacher, temperature, alpha, labels):
    """The Hinton et al. loss with explicit loops over rows and classes, in float64."""
    student, teacher = student.double().tolist(), teacher.double().tolist()
    soft = hard = 0.0
    for i, (s_row, t_row) in enumerate(zip(student, teacher, strict=True)):
        s_norm = math.log(sum(math.exp(v / temperature) for v in s_row))
        t_norm = math.log(sum(math.exp(v / temperature) for v in t_row))
        for s, t in zip(s_row, t_row, strict=True):
            log_p_t, log_p_s = t / temperature - t_norm, s / temperature - s_norm
            soft += math.exp(log_p_t) * (log_p_t - log_p_s)
        if labels is not None:
            hard -= s_row[labels[i]] - math.log(sum(math.exp(v) for v in s_row))
    n = len(student)
    soft = soft / n * temperature**2
    return soft if labels is None else alpha * soft + (1 - alpha) * hard / n


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0, 4.0])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_matches_manual_sums(temperature, alpha):
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(16, 5, generator=generator, dtype=torch.float64) * 2
    teacher = torch.randn(16, 5, generator=generator, dtype=torch.float64) * 3
    labels = torch.randint(0, 5, (16,), generator=generator)
    loss = distillation_loss(student, teacher, temperature, alpha=alpha, labels=labels)
    expected = manual_loss(student, teacher, temperature, alpha, labels.tolist())
    assert float(loss) == pytest.approx(expected, rel=1e-12)


def test_soft_only_equals_torch_batchmean_kl():
    student, teacher = torch.randn(8, 6), torch.randn(8, 6) * 2
    t = 3.0
    reference = torch.nn.functional.kl_div(
        torch.log_softmax(student / t, dim=1),
        torch.log_softmax(teacher / t, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    torch.testing.assert_close(distillation_loss(student, teacher, t, alpha=1.0), reference * t**2)


def test_gradient_flows_to_the_student_only_and_is_t_times_the_gap():
    student = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    t = 2.5
    distillation_loss(student, teacher, t, alpha=1.0).backward()
    assert teacher.grad is None
    gap = torch.softmax(student.detach() / t, dim=1) - torch.softmax(teacher.detach() / t, dim=1)
    torch.testing.assert_close(student.grad, t * gap / 4)  # d/dz T^2 KL = T (p_s - p_t)


def test_sequence_logits_average_over_every_row():
    student, teacher = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    labels = torch.randint(0, 5, (2, 3))
    loss = distillation_loss(student, teacher, 2.0, alpha=0.4, labels=labels)
    flat = distillation_loss(
        student.reshape(6, 5), teacher.reshape(6, 5), 2.0, alpha=0.4, labels=labels.reshape(6)
    )
    torch.testing.assert_close(loss, flat)


def test_half_precision_is_computed_in_float32():
    student, teacher = torch.randn(4, 3), torch.randn(4, 3)
    loss = distillation_loss(student.half(), teacher.half(), 2.0, alpha=1.0)
    assert loss.dtype == torch.float32
    reference = distillation_loss(student.half().float(), teacher.half().float(), 2.0, alpha=1.0)
    torch.testing.assert_close(loss, reference)


def test_identical_logits_give_zero_soft_loss():
    logits = torch.randn(5, 4)
    assert float(distillation_loss(logits, logits.clone(), 3.0, alpha=1.0)) == pytest.approx(
        0.0, abs=1e-6
    )


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"alpha": 0.5}, ValueError, "labels is None"),
        ({"alpha": 1.5}, ValueError, r"\[0, 1\]"),
        ({"alpha": 1.0, "temperature": 0.0}, ValueError, "finite and > 0"),
        ({"alpha": 0.5, "labels": torch.tensor([0, 1])}, ValueError, "shape"),
        ({"alpha": 0.5, "labels": torch.tensor([0, 1, 9])}, ValueError, r"\[0, 4\)"),
        ({"alpha": 0.5, "labels": torch.tensor([0.0, 1.0, 2.0])}, TypeError, "integer"),
    ],
)
def test_bad_arguments_raise(kwargs, error, match):
    kwargs = {"temperature": 2.0, **kwargs}
    with pytest.raises(error, match=match):
        distillation_loss(torch.zeros(3, 4), torch.zeros(3, 4), **kwargs)


def test_mismatched_shapes_raise():
    with pytest.raises(ValueError, match="same shape"):
        distillation_loss(torch.zeros(3, 4), torch.zeros(3, 5), 2.0, alpha=1.0)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.2, 10.0))
def test_soft_loss_is_non_negative(seed, temperature):
    generator = torch.Generator().manual_seed(seed)
    student, teacher = torch.randn(2, 2, 4, generator=generator) * 5, torch.randn(2, 2, 4) * 5
    assert float(distillation_loss(student, teacher, temperature, alpha=1.0)) >= -1e-6
