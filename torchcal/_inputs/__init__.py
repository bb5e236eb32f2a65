"""The input layer: turning what users pass (tensors, arrays, files, loaders) into validated
rows of logits and labels, read in chunks."""

from torchcal._inputs.shapes import to_rows
from torchcal._inputs.validation import (
    check_choice,
    check_labels,
    check_logits_matrix,
    check_positive_finite,
    check_positive_int,
    check_probabilities,
    check_row_sums,
    check_unit_interval,
)

__all__ = [
    "check_choice",
    "check_labels",
    "check_logits_matrix",
    "check_positive_finite",
    "check_positive_int",
    "check_probabilities",
    "check_row_sums",
    "check_unit_interval",
    "to_rows",
]
