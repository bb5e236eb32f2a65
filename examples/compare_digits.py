"""Every calibrator on scikit-learn's bundled digits: fitted on validation, scored on test.

A small network is trained until it is overconfident; each calibrator is fitted on the
validation split's logits and scored on the test split (accuracy, NLL, ECE, MCE and Brier with
95% bootstrap intervals), next to the uncalibrated network.

Run:  python examples/compare_digits.py
"""

import torch

import torchcal
from torchcal._demo import digits_network, load_digits_splits, train_classifier


def main() -> None:
    splits = load_digits_splits(seed=0)
    model = train_classifier(digits_network(seed=0), splits.train)
    (val_inputs, val_labels), (test_inputs, test_labels) = splits.val, splits.test
    with torch.no_grad():
        val_logits, test_logits = model(val_inputs), model(test_inputs)

    comparison = torchcal.compare(val_logits, val_labels, test_logits, test_labels)
    print(
        f"fitted on {len(val_labels)} validation images, scored on {len(test_labels)} test "
        "images (95% bootstrap intervals)"
    )
    print(comparison.to_markdown(fit_times=False))
    print(f"best NLL: {comparison.best('NLL')}, best ECE: {comparison.best('ECE')}")


if __name__ == "__main__":
    main()
