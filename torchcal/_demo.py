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
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from torchcal._report import calibration_summary, format_table, write_json
from torchcal.calibrators.temperature import TemperatureScaler
from torchcal.io.files import save_scaler
from torchcal.metrics import reliability_bins
from torchcal.metrics.bootstrap import MetricInterval

__all__ = [
    "DemoReport",
    "DigitsSplits",
    "digits_network",
    "load_digits_splits",
    "run_digits_demo",
    "train_classifier",
]

#: Features and labels of one split.
Split = tuple[Tensor, Tensor]


@dataclass(frozen=True)
class DigitsSplits:
    """Train (60%), validation (20%) and test (20%) splits of the 8x8 digits, features in [0, 1].

    Attributes:
        train: (features (N, 64), labels (N,)) to train the network on.
        val: the split the calibrator is fitted on.
        test: the split the calibration is judged on.
    """

    train: Split
    val: Split
    test: Split


def load_digits_splits(seed: int = 0) -> DigitsSplits:
    """Load scikit-learn's digits (1,797 images, 10 classes) and split them 60/20/20.

    Args:
        seed: the seed of the random split.
    """
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
    """A two-layer perceptron for 64 pixels and 10 classes.

    Args:
        seed: the seed of its initial weights.

    Example:
        >>> digits_network()(torch.zeros(3, 64)).shape
        torch.Size([3, 10])
    """
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


def train_classifier(
    model: nn.Module,
    train: Split,
    *,
    epochs: int = 1000,
    lr: float = 1e-2,
    seed: int = 0,
    progress: bool = False,
) -> nn.Module:
    """Full-batch Adam on cross-entropy, long enough to overfit; returns the model in eval mode.

    Args:
        model: the network to train, in place.
        train: the training split (features, labels).
        epochs: the number of full-batch steps.
        lr: Adam's learning rate.
        seed: the seed set before training.
        progress: show a progress bar.
    """
    torch.manual_seed(seed)
    inputs, labels = train
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    # Overfitting drives Adam's state into subnormal floats, which are ~50x slower on CPUs.
    flushed = torch.set_flush_denormal(True)
    try:
        for _ in tqdm(range(epochs), desc="training", disable=not progress, leave=False):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(inputs), labels)
            loss.backward()
            optimizer.step()
    finally:
        if flushed:
            torch.set_flush_denormal(False)
    return model.eval()


@dataclass(frozen=True)
class DemoReport:
    """What :func:`run_digits_demo` computed and where it wrote it.

    Attributes:
        scaler: the temperature scaler fitted on the validation split.
        summaries: ``"uncalibrated"`` and ``"calibrated"`` -> metric name -> test-split value
            with a bootstrap interval.
        table: the summaries as a printable table.
        files: ``"diagram"``, ``"report"`` and ``"scaler"`` -> the file written.
    """

    scaler: TemperatureScaler
    summaries: dict[str, dict[str, MetricInterval]]
    table: str
    files: dict[str, Path]


def run_digits_demo(
    output_dir: str | Path = "torchcal-demo",
    *,
    seed: int = 0,
    n_resamples: int = 1000,
    progress: bool = False,
) -> DemoReport:
    """Train on the digits, fit T on the validation split, judge on the test split, save all.

    Writes ``reliability.png`` (before/after), ``report.json`` and ``scaler.pt`` to
    ``output_dir``.

    Args:
        output_dir: the folder to write to (made if missing).
        seed: the seed of the split, the network and the bootstrap.
        n_resamples: the number of bootstrap resamples of the test split.
        progress: show a progress bar while training.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    splits = load_digits_splits(seed=seed)
    model = train_classifier(digits_network(seed=seed), splits.train, seed=seed, progress=progress)
    val_loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*splits.val), 128)
    scaler = TemperatureScaler(model).fit(val_loader, progress=False)
    inputs, labels = splits.test
    with torch.no_grad():
        probs = {"uncalibrated": torch.softmax(model(inputs), dim=1)}
        probs["calibrated"] = scaler.predict_proba(inputs)
    summaries = {
        name: calibration_summary(p, labels, n_resamples=n_resamples, seed=seed)
        for name, p in probs.items()
    }
    table = format_table(summaries)
    from torchcal.plots import reliability_diagram

    files = {"diagram": output_dir / "reliability.png", "report": output_dir / "report.json"}
    bins = {name: reliability_bins(p, labels) for name, p in probs.items()}
    reliability_diagram(bins, title=f"Digits test split, T = {scaler.temperature:.3f}",
                        path=files["diagram"])  # fmt: skip
    write_json(files["report"], summaries, fit=scaler.fit_result.to_dict(), split="test")
    files["scaler"] = save_scaler(scaler, output_dir / "scaler.pt")
    return DemoReport(scaler=scaler, summaries=summaries, table=table, files=files)
