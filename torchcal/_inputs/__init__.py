"""The input layer: turning what users pass (tensors, arrays, files, loaders) into validated
rows of logits and labels, read in chunks.

Its public API, for the layers above (calibrators, metrics, export, compare): :func:`prepare`
(one validated :class:`Prepared` layout per input), the option choices :data:`ACTIVATIONS` and
:data:`INPUTS`, the probability helpers and the argument checks.
"""

from torchcal._inputs.prepare import LabelledRows, Prepared, prepare
from torchcal._inputs.probabilities import check_probabilities_input, probabilities_to_logits
from torchcal._inputs.shapes import ACTIVATIONS, INPUTS, Activation, Inputs
from torchcal._inputs.sources import RowSource, as_tensor
from torchcal._inputs.validation import (
    check_choice,
    check_labels,
    check_logits_matrix,
    check_positive_finite,
    check_positive_int,
    check_probabilities,
    check_row_sums,
    check_unit_interval,
    row_sum_tolerance,
)

__all__ = [
    "ACTIVATIONS",
    "INPUTS",
    "Activation",
    "Inputs",
    "LabelledRows",
    "Prepared",
    "RowSource",
    "as_tensor",
    "check_choice",
    "check_labels",
    "check_logits_matrix",
    "check_positive_finite",
    "check_positive_int",
    "check_probabilities",
    "check_probabilities_input",
    "check_row_sums",
    "check_unit_interval",
    "prepare",
    "probabilities_to_logits",
    "row_sum_tolerance",
]
