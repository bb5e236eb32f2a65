"""Calibrate a small network on scikit-learn's bundled digits and report before/after.

Run:  python examples/digits.py
"""

import torch

from torchcal import TemperatureScaler
from torchcal._demo import digits_network, load_digits_splits, train_classifier
from torchcal.metrics import (
    brier_score,
    expected_calibration_error,
    maximum_calibration_error,
    negative_log_likelihood,
)


def report(name: str, probs: torch.Tensor, labels: torch.Tensor) -> None:
    accuracy = (probs.argmax(dim=1) == labels).double().mean()
    print(
        f"{name:<12}{accuracy:>10.4f}{negative_log_likelihood(probs, labels):>10.4f}"
        f"{expected_calibration_error(probs, labels):>10.4f}"
        f"{maximum_calibration_error(probs, labels):>10.4f}{brier_score(probs, labels):>10.4f}"
    )


def main() -> None:
    splits = load_digits_splits(seed=0)
    model = train_classifier(digits_network(seed=0), splits.train)

    # Fit T on the validation split: one call, exact optimum.
    val_loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*splits.val), 128)
    scaler = TemperatureScaler(model).fit(val_loader, progress=False)
    print(scaler.fit_result)

    # Judge on the held-out test split.
    inputs, labels = splits.test
    with torch.no_grad():
        before = torch.softmax(model(inputs), dim=1)
        after = scaler.predict_proba(inputs)
    print(f"\ntest split ({len(labels)} images)")
    print(f"{'':<12}{'accuracy':>10}{'NLL':>10}{'ECE':>10}{'MCE':>10}{'Brier':>10}")
    report("uncalibrated", before, labels)
    report("calibrated", after, labels)


if __name__ == "__main__":
    main()
