"""Accept confident predictions, escalate the rest: a calibrated margin threshold on digits.

The threshold on the calibrated top-1 margin is chosen on the validation split so that the
accepted predictions are at least 99.5% accurate there, then applied unchanged to the test split.

Run:  python examples/escalation_digits.py
"""

import torch

from torchcal import TemperatureScaler
from torchcal._demo import digits_network, load_digits_splits, train_classifier
from torchcal.dial import escalation_threshold
from torchcal.metrics import top1_margin

TARGET_ACCURACY = 0.995


def margins_and_correct(probs: torch.Tensor, labels: torch.Tensor):
    return top1_margin(probs), probs.argmax(dim=1) == labels


def main() -> None:
    splits = load_digits_splits(seed=0)
    model = train_classifier(digits_network(seed=0), splits.train)
    (val_inputs, val_labels), (test_inputs, test_labels) = splits.val, splits.test
    with torch.no_grad():
        val_logits, test_logits = model(val_inputs), model(test_inputs)

    scaler = TemperatureScaler().fit(val_logits, val_labels, progress=False)
    print(f"T = {scaler.temperature:.5f} fitted on {len(val_labels)} validation images")

    val_scores, val_correct = margins_and_correct(torch.softmax(scaler(val_logits), 1), val_labels)
    rule = escalation_threshold(val_scores, val_correct, target_accuracy=TARGET_ACCURACY)
    print(
        f"validation: margin >= {rule.threshold:.4f} keeps accuracy {rule.accuracy:.4f} "
        f"(target {TARGET_ACCURACY}) at coverage {rule.coverage:.4f}"
    )

    scores, correct = margins_and_correct(torch.softmax(scaler(test_logits), 1), test_labels)
    accepted = scores >= rule.threshold
    print(
        f"test: accepted {int(accepted.sum())} of {len(test_labels)} images "
        f"(coverage {accepted.double().mean():.4f}) at accuracy "
        f"{correct[accepted].double().mean():.4f}; all images: accuracy "
        f"{correct.double().mean():.4f}"
    )

    # The same rule on uncalibrated probabilities, for comparison.
    raw_val, _ = margins_and_correct(torch.softmax(val_logits, 1), val_labels)
    raw_rule = escalation_threshold(raw_val, val_correct, target_accuracy=TARGET_ACCURACY)
    raw_scores, _ = margins_and_correct(torch.softmax(test_logits, 1), test_labels)
    raw_accepted = raw_scores >= raw_rule.threshold
    print(
        f"uncalibrated: margin >= {raw_rule.threshold:.4f}, test coverage "
        f"{raw_accepted.double().mean():.4f} at accuracy "
        f"{correct[raw_accepted].double().mean():.4f}"
    )


if __name__ == "__main__":
    main()
