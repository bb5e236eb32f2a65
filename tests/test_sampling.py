"""Token sampling: greedy at T = 0, frequencies against the tempered softmax, top-k and top-p."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from torchcal.dial import sample, softmax

LOGITS = torch.tensor([2.0, 1.0, 0.5, 0.0, -0.5, -1.5])
DRAWS = 20_000


def frequencies(temperature, **kwargs):
    generator = torch.Generator().manual_seed(1234)
    draws = sample(LOGITS.expand(DRAWS, -1), temperature, generator=generator, **kwargs)
    assert draws.shape == (DRAWS,) and draws.dtype == torch.long
    return np.bincount(draws.numpy(), minlength=len(LOGITS))


def assert_matches(counts, probs):
    probs = np.asarray(probs, dtype=np.float64)
    kept = probs > 0
    assert counts[~kept].sum() == 0  # excluded tokens are never drawn
    expected = probs[kept] / probs[kept].sum() * counts.sum()
    assert chisquare(counts[kept], expected).pvalue > 1e-3


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_frequencies_follow_the_tempered_softmax(temperature):
    assert_matches(frequencies(temperature), softmax(LOGITS.double(), temperature).numpy())


def test_frequencies_under_top_k():
    probs = softmax(LOGITS.double(), 0.8).numpy()
    probs[3:] = 0.0
    assert_matches(frequencies(0.8, top_k=3), probs)


def test_frequencies_under_top_p():
    probs = softmax(LOGITS.double(), 1.0).numpy()  # 0.519, 0.191, 0.116, 0.070, ...
    assert probs[:2].sum() < 0.8 < probs[:3].sum()
    probs[3:] = 0.0
    assert_matches(frequencies(1.0, top_p=0.8), probs)


def test_top_k_then_top_p():
    probs = softmax(LOGITS.double(), 1.0).numpy()
    probs[4:] = 0.0  # top-k = 4, then the renormalised top two hold < 0.85, three hold more
    renormalised = probs / probs.sum()
    assert renormalised[:2].sum() < 0.85 < renormalised[:3].sum()
    probs[3:] = 0.0
    assert_matches(frequencies(1.0, top_k=4, top_p=0.85), probs)


def test_temperature_zero_is_greedy():
    logits = torch.tensor([[0.1, 3.0, 3.0], [5.0, -1.0, 0.0]])
    assert sample(logits, 0.0).tolist() == [1, 0]
    assert sample(logits, 0).tolist() == [1, 0]


def test_a_tiny_temperature_is_greedy_without_overflow():
    draws = sample(torch.tensor([[1e4, 1e4 - 1.0, 0.0]]).expand(100, -1), 1e-30)
    assert draws.eq(0).all()


def test_same_generator_seed_same_draws_and_leading_shape_is_kept():
    logits = torch.randn(3, 4, 10)
    first = sample(logits, 1.3, generator=torch.Generator().manual_seed(7), top_p=0.9)
    second = sample(logits, 1.3, generator=torch.Generator().manual_seed(7), top_p=0.9)
    assert first.shape == (3, 4) and torch.equal(first, second)


def test_masked_tokens_and_half_logits():
    logits = torch.tensor([0.0, -math.inf, 0.0, -math.inf]).half().expand(500, -1)
    draws = sample(logits, 1.0, generator=torch.Generator().manual_seed(0))
    assert set(draws.tolist()) == {0, 2}


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"temperature": -1.0}, ValueError, ">= 0"),
        ({"temperature": math.nan}, ValueError, ">= 0"),
        ({"temperature": "1"}, TypeError, "real number"),
        ({"temperature": 1.0, "top_k": 0}, ValueError, ">= 1"),
        ({"temperature": 1.0, "top_k": 1.5}, TypeError, "int"),
        ({"temperature": 1.0, "top_p": 0.0}, ValueError, r"\(0, 1\]"),
        ({"temperature": 1.0, "top_p": 1.2}, ValueError, r"\(0, 1\]"),
    ],
)
def test_bad_arguments_raise(kwargs, error, match):
    with pytest.raises(error, match=match):
        sample(torch.zeros(2, 3), **kwargs)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(-20, 20, allow_nan=False), min_size=2, max_size=12),
    st.floats(0.05, 5.0),
    st.integers(1, 12),
    st.floats(0.01, 1.0),
)
def test_filters_never_draw_excluded_tokens(values, temperature, top_k, top_p):
    logits = torch.tensor(values, dtype=torch.float64)
    probs = softmax(logits, temperature)
    order = torch.argsort(probs, descending=True, stable=True)
    top_k_set = set(order[: min(top_k, len(values))].tolist())
    kept = probs[order].cumsum(0) - probs[order] < top_p  # mass before each token < top_p
    top_p_set = set(order[kept].tolist()) | {int(order[0])}
    generator = torch.Generator().manual_seed(0)
    assert set(sample(logits.expand(200, -1), temperature, generator, top_k=top_k).tolist()) <= (
        top_k_set
    )
    assert set(sample(logits.expand(200, -1), temperature, generator, top_p=top_p).tolist()) <= (
        top_p_set
    )
