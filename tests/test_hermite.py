"""The Hermite interpolation behind the temperature warm start's bracketed steps, against
scipy's KroghInterpolator (the same interpolant, computed independently)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.interpolate import KroghInterpolator

from torchcal._optim.hermite import evaluate, hermite_form, root_between


def _derivatives(rate: float, shift: float, x: float, count: int) -> list[float]:
    """f(x) = exp(rate x) - shift and its first count - 1 derivatives."""
    return [rate**k * math.exp(rate * x) - (shift if k == 0 else 0.0) for k in range(count)]


@settings(max_examples=50, deadline=None)
@given(
    low=st.floats(0.0, 1.0),
    width=st.floats(0.05, 2.0),
    counts=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    rate=st.floats(-2.0, 2.0),
    at=st.floats(-0.5, 1.5),
)
def test_the_interpolant_and_its_slope_equal_scipys(low, width, counts, rate, at):
    high = low + width
    nodes = [(low, _derivatives(rate, 0.5, low, counts[0]))]
    nodes.append((high, _derivatives(rate, 0.5, high, counts[1])))
    points, coefficients = hermite_form(nodes)
    reference = KroghInterpolator(points, [d for _, ds in nodes for d in ds])
    x = low + at * width
    value, slope = evaluate(points, coefficients, x)
    scale = max(1.0, abs(float(reference(x))))
    assert value == pytest.approx(float(reference(x)), abs=1e-10 * scale)
    slope_scale = max(1.0, abs(float(reference.derivative(x))))
    assert slope == pytest.approx(float(reference.derivative(x)), abs=1e-9 * slope_scale)


@pytest.mark.parametrize("counts", [(4, 4), (1, 4), (2, 2)])
def test_the_root_of_a_polynomial_the_nodes_determine_is_exact(counts):
    # p(x) = (x - 0.3)(1 + x^2) is increasing, of degree 3: any 4 conditions determine it
    def derivatives(x, count):
        values = [(x - 0.3) * (1 + x * x), 1 - 0.6 * x + 3 * x * x, 6 * x - 0.6, 6.0]
        return values[:count]

    nodes = [(0.0, derivatives(0.0, counts[0])), (1.0, derivatives(1.0, counts[1]))]
    assert root_between(nodes, 0.0, 1.0) == pytest.approx(0.3, abs=1e-14)


def test_no_sign_change_between_the_ends_gives_nan():
    nodes = [(0.0, [1.0, 1.0]), (1.0, [2.0, 1.0])]  # positive at both ends
    assert math.isnan(root_between(nodes, 0.0, 1.0))
