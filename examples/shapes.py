"""One TemperatureScaler for every classifier shape: binary, multi-label, segmentation, tokens.

Run:  python examples/shapes.py
"""

import torch

from torchcal import TemperatureScaler
from torchcal.metrics import expected_calibration_error

generator = torch.Generator().manual_seed(0)


def overconfident(logits: torch.Tensor, temperature: float = 2.0) -> torch.Tensor:
    """Labels drawn from softmax(logits / 2) over dim 1: the logits are twice too confident."""
    probs = torch.softmax(logits / temperature, dim=1).movedim(1, -1)
    flat = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=generator)
    return flat.reshape(probs.shape[:-1])


# Binary: one logit per sample, sigmoid(z / T), fitted on binary cross-entropy.
binary_logits = torch.randn(5000, generator=generator) * 4
binary_labels = torch.bernoulli(torch.sigmoid(binary_logits / 2), generator=generator).long()
binary = TemperatureScaler().fit(binary_logits, binary_labels, progress=False)
print(f"binary        T = {binary.temperature:.3f}")

# Multi-label: (N, K) independent sigmoids with (N, K) 0/1 targets, one T per label.
multi_logits = torch.randn(5000, 3, generator=generator) * 4
multi_targets = torch.bernoulli(
    torch.sigmoid(multi_logits / torch.tensor([1.0, 2.0, 3.0])), generator=generator
)
multi = TemperatureScaler(activation="sigmoid", per_class=True).fit(
    multi_logits, multi_targets, progress=False
)
print("multi-label   T =", [round(t, 3) for t in multi.temperatures.tolist()])

# Segmentation: (N, K, H, W) logits with (N, H, W) labels; the class dimension is inferred.
seg_logits = torch.randn(8, 4, 32, 32, generator=generator) * 4
seg_labels = overconfident(seg_logits)
segmentation = TemperatureScaler().fit(seg_logits, seg_labels, progress=False)
seg_probs = segmentation.predict_proba(seg_logits)  # softmax over dim 1, shape (8, 4, 32, 32)
print(
    f"segmentation  T = {segmentation.temperature:.3f}, "
    f"ECE {expected_calibration_error(torch.softmax(seg_logits, 1), seg_labels):.4f} -> "
    f"{expected_calibration_error(seg_probs, seg_labels):.4f}"
)

# Token sequences: (B, L, V) logits with (B, L) labels; padding marked -100 is left out.
token_logits = torch.randn(16, 64, 100, generator=generator) * 4
token_labels = overconfident(token_logits.movedim(-1, 1))
token_labels[:, 48:] = -100
tokens = TemperatureScaler().fit(token_logits, token_labels, progress=False)
print(f"tokens        T = {tokens.temperature:.3f} on {tokens.fit_result.n_samples} positions")
