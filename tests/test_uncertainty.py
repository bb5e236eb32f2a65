"""Entropy, top-1 margin and max probability: values, shapes, properties and input checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import entropy as scipy_entropy

from torchcal.dial import softmax
from torchcal.metrics import entropy, max_probability, top1_margin


def test_values_against_scipy_and_numpy():
    probs = softmax(torch.randn(4, 3, 6, generator=torch.Generator().manual_seed(0)) * 2)
    flat = probs.reshape(-1, 6).double().numpy()
    expected_entropy = scipy_entropy(flat, axis=1)
    ordered = np.sort(flat, axis=1)
    assert entropy(probs).shape == (4, 3)
    np.testing.assert_allclose(entropy(probs).reshape(-1).numpy(), expected_entropy, rtol=1e-5)
    np.testing.assert_allclose(
        top1_margin(probs).reshape(-1).numpy(), ordered[:, -1] - ordered[:, -2], atol=1e-7
    )
    np.testing.assert_allclose(max_probability(probs).reshape(-1).numpy(), ordered[:, -1])


def test_extremes():
    uniform = torch.full((2, 5), 0.2)
    one_hot = torch.eye(5)[:2]
    assert entropy(uniform).tolist() == pytest.approx([math.log(5)] * 2)
    assert entropy(one_hot).tolist() == [0.0, 0.0]
    assert top1_margin(uniform).tolist() == pytest.approx([0.0, 0.0], abs=1e-7)
    assert top1_margin(one_hot).tolist() == [1.0, 1.0]
    assert max_probability(one_hot).tolist() == [1.0, 1.0]


def test_class_dim_can_be_chosen():
    probs = softmax(torch.randn(3, 4), dim=0)
    torch.testing.assert_close(entropy(probs, dim=0), entropy(probs.T))
    torch.testing.assert_close(top1_margin(probs, dim=0), top1_margin(probs.T))
    torch.testing.assert_close(max_probability(probs, dim=0), max_probability(probs.T))


def test_half_precision_keeps_its_dtype():
    probs = torch.tensor([[0.25, 0.75]], dtype=torch.float16)
    assert entropy(probs).dtype == torch.float16
    assert float(entropy(probs)) == pytest.approx(0.5623, abs=1e-3)


@pytest.mark.parametrize("function", [entropy, top1_margin, max_probability])
@pytest.mark.parametrize(
    ("probs", "error", "match"),
    [
        (torch.tensor([[0.5, 0.7]]), ValueError, "sum to 1"),
        (torch.tensor([[1.5, -0.5]]), ValueError, r"in \[0, 1\]"),
        (torch.tensor([[math.nan, 1.0]]), ValueError, "NaN"),
        (torch.tensor([[1, 0]]), TypeError, "floating"),
        (torch.tensor(1.0), ValueError, "class dimension"),
        ([[0.5, 0.5]], TypeError, "torch.Tensor or a numpy array, got list"),
        (np.array([[0.5, 0.7]]), ValueError, "sum to 1"),
    ],
)
def test_bad_probabilities_raise(function, probs, error, match):
    with pytest.raises(error, match=match):
        function(probs)


@pytest.mark.parametrize("function", [entropy, top1_margin, max_probability])
def test_numpy_probabilities_give_the_tensor_values(function):
    probs = torch.softmax(torch.randn(20, 4, generator=torch.Generator().manual_seed(0)), 1)
    assert torch.equal(function(probs.numpy()), function(probs))


def test_margin_needs_two_classes():
    with pytest.raises(ValueError, match="at least 2 classes"):
        top1_margin(torch.ones(3, 1))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(-30, 30, allow_nan=False), min_size=2, max_size=10),
    st.floats(0.05, 20),
)
def test_signals_stay_in_their_ranges(values, temperature):
    probs = softmax(torch.tensor(values, dtype=torch.float64), temperature)
    margin, top, h = float(top1_margin(probs)), float(max_probability(probs)), float(entropy(probs))
    assert 0.0 <= margin <= 1.0
    assert 1 / len(values) - 1e-12 <= top <= 1.0
    assert 0.0 <= h <= math.log(len(values)) + 1e-12
