"""Exceptions and warnings raised by torchcal."""


class NotFittedError(RuntimeError):
    """A calibrator was used before ``fit`` or ``load_state_dict`` gave it parameters."""


class CalibrationWarning(UserWarning):
    """A fit ended somewhere the user should know about: at a bound, or before converging."""
