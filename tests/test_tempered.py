"""Tempered softmax: worked examples, agreement with torch, overflow safety and argument checks."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import requires_cuda
from hypothesis import example, given, settings
from hypothesis import strategies as st

from torchcal.dial import log_softmax, softmax
from torchcal.metrics import top1_margin

WORKED = [
    ([2.0, 1.0, 0.1], 1.0, [0.6590, 0.2424, 0.0986]),
    ([2.0, 1.0, 0.1], 2.0, [0.5017, 0.3043, 0.1940]),
    ([2.0, 1.0, 0.1], 0.5, [0.8638, 0.1169, 0.0193]),
    ([3.2, 2.8, 0.5], 1.0, [0.5755, 0.3858, 0.0387]),
]


@pytest.mark.parametrize(("logits", "temperature", "expected"), WORKED)
def test_worked_examples_to_four_decimals(logits, temperature, expected):
    probs = softmax(torch.tensor(logits), temperature)
    assert [round(p, 4) for p in probs.tolist()] == expected


def test_worked_margin():
    probs = softmax(torch.tensor([3.2, 2.8, 0.5]), 1.0)
    assert round(float(top1_margin(probs)), 4) == 0.1897


@pytest.mark.parametrize("temperature", [0.05, 0.5, 1.0, 3.0, 100.0])
@pytest.mark.parametrize("dim", [0, 1, -1])
def test_equals_torch_where_finite(temperature, dim):
    logits = torch.randn(64, 7, generator=torch.Generator().manual_seed(1)) * 4
    expected = torch.softmax(logits / temperature, dim=dim)
    torch.testing.assert_close(softmax(logits, temperature, dim=dim), expected)
    torch.testing.assert_close(
        log_softmax(logits, temperature, dim=dim), torch.log_softmax(logits / temperature, dim=dim)
    )


def test_per_row_and_per_class_temperatures_equal_torch():
    logits = torch.randn(5, 4, generator=torch.Generator().manual_seed(2)) * 3
    per_row = torch.tensor([[0.5], [1.0], [2.0], [4.0], [0.1]])
    per_class = torch.tensor([0.5, 1.0, 2.0, 4.0], dtype=torch.float64)
    torch.testing.assert_close(softmax(logits, per_row), torch.softmax(logits / per_row, dim=-1))
    torch.testing.assert_close(
        softmax(logits, per_class), torch.softmax(logits / per_class.float(), dim=-1)
    )


@pytest.mark.parametrize("temperature", [1.0, 1e-3, 1e-35])
def test_large_float32_logits_stay_finite(temperature):
    logits = torch.tensor([[1e4, 0.0, -1e4], [1e4, 1e4 - 1, 5.0]])
    probs = softmax(logits, temperature)
    log_probs = log_softmax(logits, temperature)
    assert torch.isfinite(probs).all()
    assert probs.sum(dim=1).tolist() == pytest.approx([1.0, 1.0])
    assert probs[:, 0].tolist() == pytest.approx([1.0, 1 / (1 + math.exp(-1 / temperature))])
    assert not torch.isnan(log_probs).any()
    assert float(log_probs[0, 0]) == 0.0


def test_per_class_temperature_that_overflows_float32_is_computed_in_float64():
    logits = torch.tensor([[3e38, 1.0]])
    probs = softmax(logits, torch.tensor([0.5, 1.0]))  # 3e38 / 0.5 overflows float32
    assert probs.tolist() == [[1.0, 0.0]]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(dtype):
    logits = torch.tensor([[2.0, 1.0, 0.1], [6e4, 0.0, -6e4]]).to(dtype)
    probs = softmax(logits, 0.5)
    assert probs.dtype == dtype
    expected = torch.softmax(logits.float() / 0.5, dim=-1)
    torch.testing.assert_close(probs.float(), expected, atol=1e-2, rtol=1e-2)
    assert log_softmax(logits, 2.0).dtype == dtype


def test_masked_classes_get_zero_probability():
    logits = torch.tensor([[1.0, -math.inf, 0.0]])
    probs = softmax(logits, 0.7)
    assert float(probs[0, 1]) == 0.0
    assert float(probs.sum()) == pytest.approx(1.0)


def test_inputs_are_not_modified_and_gradients_flow():
    logits = torch.randn(3, 4, requires_grad=True)
    before = logits.detach().clone()
    softmax(logits, 2.0)[:, 0].sum().backward()
    torch.testing.assert_close(logits.detach(), before)
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize(
    ("temperature", "error", "match"),
    [
        (0.0, ValueError, "finite and > 0"),
        (-1.0, ValueError, "finite and > 0"),
        (math.inf, ValueError, "finite and > 0"),
        (math.nan, ValueError, "finite and > 0"),
        (True, TypeError, "real number"),
        ("2", TypeError, "real number"),
        (torch.tensor([1.0, 0.0, 1.0]), ValueError, "finite and > 0 everywhere"),
        (torch.tensor([1.0, 2.0]), ValueError, "does not broadcast"),
        (torch.ones(2, 3, 1), ValueError, "does not broadcast"),
    ],
)
def test_bad_temperatures_raise(temperature, error, match):
    with pytest.raises(error, match=match):
        softmax(torch.zeros(4, 3), temperature)


@pytest.mark.parametrize(
    ("logits", "error", "match"),
    [
        ([1, 2], TypeError, "torch.Tensor"),
        (torch.tensor([1, 2]), TypeError, "floating"),
        (torch.tensor(1.0), ValueError, "class dimension"),
        (torch.tensor([1.0, math.nan]), ValueError, "NaN"),
        (torch.tensor([1.0, math.inf]), ValueError, r"\+inf"),
        (torch.tensor([-math.inf, -math.inf]), ValueError, "no finite value"),
    ],
)
def test_bad_logits_raise(logits, error, match):
    with pytest.raises(error, match=match):
        softmax(logits, 1.0)


def test_bad_dim_raises():
    with pytest.raises(ValueError, match="out of range"):
        softmax(torch.zeros(2, 3), dim=2)


rows = st.lists(st.floats(-1e4, 1e4, allow_nan=False, width=32), min_size=2, max_size=12).map(
    lambda values: torch.tensor(values)
)


@settings(max_examples=60, deadline=None)
@given(rows, st.floats(1e-3, 1e3), st.floats(-1e3, 1e3, width=32))
@example(torch.tensor([0.0, 0.001]), 0.001, 16.0)
def test_sums_to_one_and_ignores_a_constant_shift(logits, temperature, shift):
    probs = softmax(logits, temperature)
    assert torch.isfinite(probs).all()
    assert float(probs.sum()) == pytest.approx(1.0, abs=1e-5)
    # float32 rounds logits + shift (by up to half an ulp of the shift, which 1/T can magnify to
    # a visible change: [0, 0.001] + 16 at T = 0.001): the property holds for the rows actually
    # given, which float64 unshifts exactly ...
    shifted = logits + shift
    unshifted = softmax(shifted.double() - shift, temperature)
    torch.testing.assert_close(softmax(shifted, temperature).double(), unshifted, atol=1e-4, rtol=0)
    # ... and, in float64, where the shift itself is exact to 1e-12, for the original rows.
    wide = logits.double()
    torch.testing.assert_close(
        softmax(wide + shift, temperature), softmax(wide, temperature), atol=1e-6, rtol=0
    )


@settings(max_examples=40, deadline=None)
@given(rows, st.floats(1e-2, 1e2))
def test_log_softmax_is_the_log_of_softmax(logits, temperature):
    log_probs = log_softmax(logits.double(), temperature)
    torch.testing.assert_close(log_probs.exp(), softmax(logits.double(), temperature))


@requires_cuda
def test_cuda_matches_cpu():
    logits = torch.randn(8, 5) * 10
    torch.testing.assert_close(
        softmax(logits.cuda(), torch.full((8, 1), 0.3).cuda()).cpu(), softmax(logits, 0.3)
    )
