"""Smooth ECE (Blasiok and Nakkiran 2023): kernel-smoothed calibration error, no bins.

The residuals ``c_i - correct_i`` of the top-label confidences are smoothed with a Gaussian kernel
reflected at 0 and 1; the smooth ECE is the mean absolute smoothed residual under the smoothed
density of confidences. The bandwidth sigma is the fixed point ``sigma = smECE_sigma``, found by
bisection. The computation follows the reference implementation (``relplot.smECE``) step by step,
grid discretisation included, so the two agree to rounding (tested).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from torchcal._inputs import check_positive_finite
from torchcal.metrics.samples import sample_statistics

__all__ = ["MIN_BANDWIDTH", "smooth_calibration_error"]

_MIN_MESH_POINTS = 200  # evaluation mesh of the smoothed residual (relplot's smECE_mesh_pts)
_DENSITY_EPS = 1e-4  # added to the smoothed density, as the reference does
_BISECTION_STEPS = 10
#: The narrowest kernel taken: the fixed-point search stops there, and the smoothing grid and its
#: convolution grow as 1 / bandwidth and its square.
MIN_BANDWIDTH = 1e-3


def _smooth_on_grid(confidences: Tensor, values: Tensor, sigma: float, mesh: Tensor) -> Tensor:
    """Reflected-Gaussian smoothing of ``values`` (V, N) located at ``confidences`` (N,)."""
    grid_points = max(2000, round(20 / sigma)) // 2 + 1
    position = confidences * (grid_points - 1)
    left = position.long().clamp(0, grid_points - 2)
    fraction = position - left
    grid = torch.zeros(values.shape[0], grid_points, dtype=torch.float64, device=values.device)
    grid.index_add_(1, left, (1 - fraction) * values)
    grid.index_add_(1, left + 1, fraction * values)
    x = torch.linspace(0, 1, grid_points, dtype=torch.float64, device=values.device)
    kernel = torch.exp(-(x - 0.5).square() / (2 * sigma**2)) / (math.sqrt(2 * math.pi) * sigma)
    reflected = torch.cat([grid.flip(1)[:, :-1], grid, grid.flip(1)[:, 1:]], dim=1)
    smoothed = torch.nn.functional.conv1d(reflected[:, None], kernel.flip(0)[None, None])[:, 0]
    smoothed = smoothed[:, grid_points // 2 : grid_points // 2 + grid_points]
    step = 1 / (grid_points - 1)
    index = (mesh * (grid_points - 1)).long().clamp(0, grid_points - 2)
    residual = (mesh - index.to(torch.float64) * step) / step
    return smoothed[:, index] * (1 - residual) + smoothed[:, index + 1] * residual


def _smooth_ece(confidences: Tensor, correct: Tensor, sigma: float) -> Tensor:
    mesh_points = max(round(10 / sigma), _MIN_MESH_POINTS)
    mesh = torch.linspace(0, 1, mesh_points, dtype=torch.float64, device=confidences.device)
    values = torch.stack([confidences - correct, torch.ones_like(confidences)])
    residual, density = _smooth_on_grid(confidences, values, sigma, mesh)
    density = density + _DENSITY_EPS
    return ((residual / density).abs() * density).sum() / density.sum()


def _smooth_bandwidth(confidences: Tensor, correct: Tensor, eps: float = 1e-3) -> float:
    """The fixed-point bandwidth: the smallest sigma (to 2^-10) with ``sigma >= smECE_sigma``."""

    def small_enough(sigma: float) -> bool:
        return sigma < eps or sigma < float(_smooth_ece(confidences, correct, sigma))

    if small_enough(1.0):
        return 1.0
    above, below = 1.0, 0.0
    for _ in range(_BISECTION_STEPS):
        middle = (above + below) / 2
        if small_enough(middle):
            below = middle
        else:
            above = middle
    return above


def smooth_calibration_error(
    probs: Tensor, labels: Tensor, bandwidth: float | None = None
) -> Tensor:
    """Top-label smooth ECE of ``probs`` (N, K) against ``labels`` (N,), as a 0-dim float64 tensor.

    ``bandwidth=None`` picks the kernel width by the authors' fixed-point rule; a number in
    [0.001, inf) fixes it. Tensors or numpy arrays.

    Args:
        probs: (N, K) probabilities.
        labels: (N,) integer labels.
        bandwidth: the Gaussian kernel's width, or ``None`` for the fixed-point rule.

    Example:
        >>> probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])
        >>> round(float(smooth_calibration_error(probs, torch.tensor([0, 1, 1, 1]))), 4)
        0.1316
    """
    statistics = sample_statistics(probs, labels)
    confidences = statistics.confidences.to(torch.float64)
    correct = statistics.correct.to(torch.float64)
    if bandwidth is None:
        bandwidth = _smooth_bandwidth(confidences, correct)
    else:
        bandwidth = check_positive_finite(bandwidth, "bandwidth")
        if bandwidth < MIN_BANDWIDTH:
            raise ValueError(
                f"bandwidth must be >= {MIN_BANDWIDTH} (the smoothing grid and its convolution "
                f"grow as 1 / bandwidth and its square), got {bandwidth}"
            )
    return _smooth_ece(confidences, correct, bandwidth)
