"""Probabilities given where logits are expected (``inputs="probs"``): checks and conversion."""

from __future__ import annotations

import torch
from torch import Tensor

from torchcal._inputs.validation import check_row_sums
from torchcal.errors import warn


def check_probabilities_input(probs: Tensor) -> None:
    """Refuse ``inputs='probs'`` values outside [0, 1]."""
    if not bool(((probs >= 0) & (probs <= 1)).all()):
        raise ValueError(
            f"inputs='probs' needs probabilities in [0, 1], found values in "
            f"[{float(probs.min()):.4g}, {float(probs.max()):.4g}]; "
            "pass logits with inputs='logits'"
        )


def probabilities_to_logits(probs: Tensor, activation: str) -> Tensor:
    """log p for softmax probabilities, log(p / (1 - p)) for sigmoid ones (a new tensor).

    Pure tensor arithmetic (no checks), so it exports. The logs are taken in float32 (float64 for
    float64 probabilities): half-precision probabilities, subnormal ones included, are exact in
    float32, so nothing is rounded away. A zero probability maps to the log of float32's (or
    float64's) smallest normal number rather than -inf.

    Example:
        >>> probabilities_to_logits(torch.tensor([0.5, 0.25, 0.25]), "softmax").exp()
        tensor([0.5000, 0.2500, 0.2500])
        >>> smallest = torch.tensor([2.0**-24], dtype=torch.float16)  # float16's least subnormal
        >>> round(float(probabilities_to_logits(smallest, "softmax")), 4)
        -16.6355
    """
    if probs.dtype != torch.float64:
        probs = probs.float()
    tiny = torch.finfo(probs.dtype).tiny
    if activation == "softmax":
        return probs.clamp_min(tiny).log()
    return probs.clamp_min(tiny).log() - (1 - probs).clamp_min(tiny).log()


def probabilities_as_logits(probs: Tensor, labels: Tensor, activation: str) -> Tensor:
    """Checked probability rows (or sigmoid entries) as logits, for a fit on ``labels``.

    Refuses values outside [0, 1] and softmax rows that do not sum to 1; warns when a true
    label has probability 0.

    Args:
        probs: (M, K) softmax rows, or sigmoid probabilities of any shape.
        labels: (M,) class indices, or 0/1 targets of the probabilities' shape.
        activation: ``"softmax"`` or ``"sigmoid"``.
    """
    check_probabilities_input(probs)
    if activation == "softmax" and probs.numel():
        check_row_sums(probs)
    _warn_about_impossible_labels(probs, labels, activation)
    return probabilities_to_logits(probs, activation)


def _warn_about_impossible_labels(probs: Tensor, labels: Tensor, activation: str) -> None:
    """Warn when the probability of a true label is exactly 0: its NLL is infinite."""
    if activation == "softmax":  # labels out of range are refused later, by the fit
        valid = (labels >= 0) & (labels < probs.shape[1])
        at_label = probs.gather(1, labels.where(valid, 0)[:, None]).squeeze(1)
        impossible = (at_label == 0) & valid
    else:
        impossible = torch.where(labels == 1, probs == 0, probs == 1)
    count = int(impossible.sum())
    if count:
        tiny = torch.finfo(torch.float64 if probs.dtype == torch.float64 else torch.float32).tiny
        warn(
            f"{count} of {impossible.numel()} true labels have probability exactly 0, so their "
            f"NLL is infinite; they are fitted as probability {tiny:.3g}. Rounded probabilities "
            "(float16, a clamp) lose the small values that calibration needs: pass the logits "
            "with inputs='logits' if you can",
        )
