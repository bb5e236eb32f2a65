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


def numpy_nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean NLL of softmax(logits / T) in float64 numpy, written independently of torchcal."""
    z = logits.astype(np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_probs[np.arange(len(labels)), labels].mean())


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
