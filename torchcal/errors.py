"""Exceptions and warnings raised by torchcal.

Example:
    >>> import torchcal
    >>> try:
    ...     torchcal.TemperatureScaler().temperature
    ... except torchcal.NotFittedError as error:
    ...     print(type(error).__name__)
    NotFittedError
"""

from __future__ import annotations

import os
import sys
import warnings

__all__ = ["CalibrationWarning", "NotFittedError"]


class NotFittedError(RuntimeError):
    """A calibrator was used before ``fit`` or ``load_state_dict`` gave it parameters."""


class CalibrationWarning(UserWarning):
    """A fit ended somewhere the user should know about: at a bound, or before converging."""


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def warn(message: str, category: type[Warning] = CalibrationWarning) -> None:
    """Issue ``message`` as a warning attributed to the first caller outside torchcal.

    Counting stack levels by hand breaks whenever a call moves one level deeper (a wrapper, a
    helper); walking the stack to the user's own frame never does, so ``python -W`` filters and
    the warning's file and line name the user's call of ``fit``, not torchcal's internals.
    Used throughout the package to raise its warnings.

    Args:
        message: the warning's text.
        category: the warning class.

    Example:
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     warn("T was held at the bound")
        >>> caught[0].category.__name__, str(caught[0].message)
        ('CalibrationWarning', 'T was held at the bound')
    """
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(
        _PACKAGE_DIR + os.sep
    ):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level + 1)
