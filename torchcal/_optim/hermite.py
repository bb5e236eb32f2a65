"""Hermite interpolation of a scalar function from its derivatives at a few points, and the
interpolant's root inside a bracket.

The temperature warm start (:mod:`torchcal._optim.temperature`) steps to the root of the
NLL's slope in ``beta``: once two evaluated points bracket it, the polynomial that matches the
slope and its derivatives at both (up to eight conditions) places the root far better than the
Taylor model at one point. It is what ``scipy.interpolate.KroghInterpolator`` computes (the
tests compare the two); written out here because it runs on a handful of floats inside every
fit, where importing scipy would cost more than the fit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

#: Bisection-safeguarded Newton iterations on the interpolant at most, and the step, relative
#: to the root, at which they stop.
ROOT_ITERATIONS = 100
ROOT_RTOL = 1e-14

#: A node: a point and the function's value and derivatives there, ``[f, f', f'', ...]``.
Node = tuple[float, Sequence[float]]


def hermite_form(nodes: Sequence[Node]) -> tuple[list[float], list[float]]:
    """The interpolant of ``nodes`` in Newton form: its points (each repeated once per known
    derivative) and coefficients, from divided differences with ``f^(k) / k!`` on repeats.

    Args:
        nodes: distinct points, each with the value and as many derivatives as are known.

    Example:
        >>> # f = x^2 from f(0) = 0, f'(0) = 0 and f(2) = 4
        >>> points, coefficients = hermite_form([(0.0, [0.0, 0.0]), (2.0, [4.0])])
        >>> points, coefficients
        ([0.0, 0.0, 2.0], [0.0, 0.0, 1.0])
    """
    points = [x for x, derivatives in nodes for _ in derivatives]
    known = [derivatives for _, derivatives in nodes for _ in derivatives]
    table = [derivatives[0] for derivatives in known]  # divided differences ending at each point
    coefficients = [table[0]]
    for order in range(1, len(points)):
        for i in range(len(points) - 1, order - 1, -1):  # downwards: table[i - 1] is still older
            if points[i] == points[i - order]:
                table[i] = known[i][order] / math.factorial(order)
            else:
                table[i] = (table[i] - table[i - 1]) / (points[i] - points[i - order])
        coefficients.append(table[order])
    return points, coefficients


def evaluate(
    points: Sequence[float], coefficients: Sequence[float], x: float
) -> tuple[float, float]:
    """The Newton-form polynomial and its derivative at ``x`` (Horner's scheme).

    Example:
        >>> evaluate([0.0, 0.0, 2.0], [0.0, 0.0, 1.0], 3.0)
        (9.0, 6.0)
    """
    value, slope = coefficients[-1], 0.0
    for point, coefficient in zip(points[-2::-1], coefficients[-2::-1], strict=True):
        slope = slope * (x - point) + value
        value = value * (x - point) + coefficient
    return value, slope


def root_between(nodes: Sequence[Node], low: float, high: float, start: float = math.nan) -> float:
    """A root of the Hermite interpolant of ``nodes`` in ``(low, high)``, where it rises from
    negative to positive, by Newton steps from ``start`` kept inside a shrinking bracket; NaN
    if the interpolant does not change sign that way there.

    Args:
        nodes: the points, values and derivatives (see :func:`hermite_form`).
        low: where the interpolant is negative.
        high: where it is positive.
        start: a guess of the root (the bracket's middle if it lies outside).

    Example:
        >>> # the slope of (x - 1)^2 / 2 + (x - 1)^4 / 4 from its derivatives at 0 and 3
        >>> slope = lambda x: [(x - 1) + (x - 1) ** 3, 1 + 3 * (x - 1) ** 2, 6 * (x - 1), 6.0]
        >>> round(root_between([(0.0, slope(0.0)), (3.0, slope(3.0))], 0.0, 3.0), 12)
        1.0
    """
    points, coefficients = hermite_form(nodes)
    if not (evaluate(points, coefficients, low)[0] < 0 < evaluate(points, coefficients, high)[0]):
        return math.nan
    x = start if low < start < high else 0.5 * (low + high)
    for _ in range(ROOT_ITERATIONS):
        value, slope = evaluate(points, coefficients, x)
        if value < 0:
            low = x
        elif value > 0:
            high = x
        else:
            return x
        step = -value / slope if slope > 0 else math.nan
        if abs(step) <= ROOT_RTOL * abs(x):  # a NaN step is not
            return x + step
        x = x + step
        if not low < x < high:  # also a NaN step
            x = 0.5 * (low + high)
    return x
