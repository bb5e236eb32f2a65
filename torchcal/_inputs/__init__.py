"""The input layer: turning what users pass (tensors, arrays, files, loaders) into validated
rows of logits and labels, read in chunks.

Its public API, for the layers above (calibrators, metrics, export, compare):
:func:`prepare` (one validated :class:`Prepared` layout per input), the option choices
:data:`ACTIVATIONS` and :data:`INPUTS`, and the probability helpers.
"""

from torchcal._inputs.prepare import LabelledRows, Prepared, prepare
from torchcal._inputs.probabilities import check_probabilities_input, probabilities_to_logits
from torchcal._inputs.shapes import ACTIVATIONS, INPUTS
from torchcal._inputs.sources import RowSource, as_tensor

__all__ = [
    "ACTIVATIONS",
    "INPUTS",
    "LabelledRows",
    "Prepared",
    "RowSource",
    "as_tensor",
    "check_probabilities_input",
    "prepare",
    "probabilities_to_logits",
]
