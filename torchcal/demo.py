"""A real-data demonstration: a small network on scikit-learn's bundled digits, calibrated.

The data ships with scikit-learn (no download). The network is trained long enough to become
overconfident, the way large networks are, so temperature scaling has something to fix.

Example:
    >>> splits = load_digits_splits(seed=0)
    >>> tuple(splits.train[0].shape), tuple(splits.val[0].shape), tuple(splits.test[0].shape)
    ((1078, 64), (359, 64), (360, 64))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

Split = tuple[Tensor, Tensor]


@dataclass(frozen=True)
class DigitsSplits:
    """Train (60%), validation (20%) and test (20%) splits of the 8x8 digits, features in [0, 1]."""

    train: Split
    val: Split
    test: Split


def load_digits_splits(seed: int = 0) -> DigitsSplits:
    """Load scikit-learn's digits (1,797 images, 10 classes) and split them 60/20/20."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "the digits demo needs scikit-learn: pip install 'torchcal[demo]'"
        ) from error
    digits = load_digits()
    features = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    labels = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    n_train, n_val = int(0.6 * len(order)), int(0.2 * len(order))
    parts = order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :]
    train, val, test = ((features[index], labels[index]) for index in parts)
    return DigitsSplits(train=train, val=val, test=test)


def digits_network(seed: int = 0) -> nn.Module:
    """A two-layer perceptron for 64 pixels and 10 classes."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


def train_classifier(
    model: nn.Module, train: Split, *, epochs: int = 1000, lr: float = 1e-2, seed: int = 0
) -> nn.Module:
    """Full-batch Adam on cross-entropy, long enough to overfit; returns the model in eval mode."""
    torch.manual_seed(seed)
    inputs, labels = train
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(inputs), labels)
        loss.backward()
        optimizer.step()
    return model.eval()
