"""Saving and loading: fitted calibrators to and from files, and logits read from files.

:func:`save` and :func:`load` write and read a fitted calibrator (safetensors with a JSON
header, no pickle); :func:`open_logits` opens a ``.npy`` or ``.safetensors`` file of logits that
a fit reads in row chunks.
"""

from torchcal.io.mapped import LogitsFile, open_logits
from torchcal.io.state import load, save

__all__ = ["LogitsFile", "load", "open_logits", "save"]
