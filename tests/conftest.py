"""Shared fixtures: synthetic logits with a known temperature and an independent scipy reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.optimize
import torch


def tempered_logits(
    n: int, k: int, temperature: float = 2.0, scale: float = 3.0, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 logits ``scale * randn`` with labels drawn from ``softmax(logits / temperature)``."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=generator) * scale
    probs = torch.softmax(logits.double() / temperature, dim=1)
    labels = torch.multinomial(probs, 1, generator=generator).squeeze(1)
    return logits, labels


def scipy_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The float64 optimum of the mean NLL over T, by bounded Brent on log T (scipy)."""
    z = logits.double()
    z_label = z.gather(1, labels[:, None]).squeeze(1)

    def nll(log_t: float) -> float:
        beta = math.exp(-log_t)
        return float((torch.logsumexp(z * beta, dim=1) - beta * z_label).mean())

    result = scipy.optimize.minimize_scalar(
        nll, bounds=(math.log(1e-3), math.log(1e3)), method="bounded", options={"xatol": 1e-10}
    )
    assert result.success
    return math.exp(result.x)


def numpy_nll(
    logits: np.ndarray, labels: np.ndarray, temperature: float, rows: int = 4096
) -> float:
    """Mean NLL of softmax(logits / T) in float64 numpy, written independently of torchcal
    (``rows`` at a time, so that its float64 temporaries stay small)."""
    total = 0.0
    for start in range(0, len(labels), rows):
        z = logits[start : start + rows].astype(np.float64) / temperature
        z -= z.max(axis=1, keepdims=True)
        log_norm = np.log(np.exp(z).sum(axis=1))
        chunk_labels = labels[start : start + rows]
        total += float((log_norm - z[np.arange(len(chunk_labels)), chunk_labels]).sum())
    return total / len(labels)


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Print the hostile-input harness's counts (see ``tests/hostile.py``) when any case ran."""
    from hostile import COUNTS

    if sum(COUNTS.values()):
        tried = sum(COUNTS.values())
        terminalreporter.write_line(
            f"hostile inputs: {tried} tried, {COUNTS['refused']} refused clearly, "
            f"{COUNTS['warned']} warned, {COUNTS['exact']} exact, "
            f"{COUNTS['mishandled']} mishandled"
        )


def newton_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The float64 optimum of the mean NLL over T by safeguarded Newton on beta = 1/T (numpy).

    The NLL is convex in beta, with derivatives mean(E_p[z] - z_y) and mean(Var_p[z]), exact
    in one pass over the rows; Newton solves for a zero first derivative, so it is accurate to
    about 1e-12, where a scalar search comparing NLL values (:func:`scipy_temperature`) resolves
    the flat minimum only to about 1e-8. Started from the optimum of every 16th row, it needs a
    few passes over all of them where a scalar search needs thirty. Written independently of
    torchcal and checked against scipy in ``tests/test_temperature.py``.
    """
    values, targets = logits.numpy(), labels.numpy()
    start = _newton_beta(values[::16], targets[::16], beta=1.0)
    return 1.0 / _newton_beta(values, targets, beta=start)


def _newton_beta(values: np.ndarray, targets: np.ndarray, beta: float, rows: int = 2048) -> float:
    """The NLL's minimiser over beta in [1e-3, 1e3] (scipy_temperature's bounds), from ``beta``."""

    def derivatives(beta: float) -> tuple[float, float]:
        first = second = 0.0
        for start in range(0, len(targets), rows):
            z = values[start : start + rows].astype(np.float64)
            scaled = beta * z
            weights = np.exp(scaled - scaled.max(axis=1, keepdims=True))
            total = weights.sum(axis=1)
            mean = (weights * z).sum(axis=1) / total
            square = (weights * z * z).sum(axis=1) / total
            label = z[np.arange(len(z)), targets[start : start + rows]]
            first += float((mean - label).sum())
            second += float((square - mean**2).sum())
        return first / len(targets), second / len(targets)

    low, high = 1e-3, 1e3
    for _ in range(100):
        slope, curvature = derivatives(beta)
        if slope > 0:  # the optimum lies below beta
            high = beta
        else:
            low = beta
        candidate = beta - slope / curvature if curvature > 0 else math.inf
        if not low < candidate < high:  # outside the bracket: bisect it instead (in log)
            candidate = math.sqrt(low * high)
        if abs(candidate - beta) <= 1e-13 * beta:
            return candidate
        beta = candidate
    raise AssertionError("the Newton reference did not converge")
