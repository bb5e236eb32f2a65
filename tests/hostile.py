"""The hostile-input harness: run a call on bad input and classify what happened.

Every hostile case must end in exactly one of three outcomes:

- ``refused``: a ``ValueError`` or ``TypeError`` (or ``OSError`` for files) whose message names
  the argument or the problem (each case says which words it expects);
- ``warned``: a :class:`~torchcal.CalibrationWarning` whose message names the cause, with the
  result at its documented bound;
- ``exact``: no error and no warning, and a finite, valid result that the case checks against an
  independent reference.

Anything else (another exception type, an error that names nothing, a NaN reported as fitted, a
missing warning) is ``mishandled`` and fails the test. The counts of each outcome are printed at
the end of the pytest run (see ``conftest.pytest_terminal_summary``).

The hostile profiles are derandomized, but Hypothesis also draws constants found in the loaded
modules that live outside site-packages (the project's own, and the tests): runs that load
different sets of them draw different examples, and the refused/exact split moves. The slow
profiles' 3,900 cases gave 3287 refused with the two hostile files alone, 3341 in the whole
``pytest -m slow`` of an editable install and 3309 in that of the CI's fresh one; each is the
same on every run. Importing ``torchcal.integrations.lightning`` alone moves 25 of them.

Example:
    >>> import torch, torchcal
    >>> outcome = expect_refused(
    ...     lambda: torchcal.TemperatureScaler().fit(torch.full((4, 3), float("nan")),
    ...                                               torch.zeros(4, dtype=torch.long)),
    ...     "nan",
    ... )
    >>> outcome
    'refused'
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable
from typing import Any

from torchcal import CalibrationWarning

OUTCOMES = ("refused", "warned", "exact")
COUNTS: Counter[str] = Counter()


class Mishandled(AssertionError):
    """A hostile case ended in none of the three accepted outcomes."""


def _names_all(message: str, words: tuple[str, ...]) -> bool:
    lowered = message.lower()
    return all(word.lower() in lowered for word in words)


def expect_refused(
    call: Callable[[], Any],
    *words: str,
    errors: tuple[type[BaseException], ...] = (ValueError, TypeError),
) -> str:
    """Assert ``call()`` raises one of ``errors`` whose message contains every one of ``words``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CalibrationWarning)
            result = call()
    except errors as error:
        if not _names_all(str(error), words):
            COUNTS["mishandled"] += 1
            raise Mishandled(
                f"refused, but the message does not name {words}: {type(error).__name__}: {error}"
            ) from error
        COUNTS["refused"] += 1
        return "refused"
    except Exception as error:
        COUNTS["mishandled"] += 1
        raise Mishandled(
            f"expected {' or '.join(e.__name__ for e in errors)} naming {words}, "
            f"got {type(error).__name__}: {error}"
        ) from error
    COUNTS["mishandled"] += 1
    raise Mishandled(f"expected a refusal naming {words}, but the call returned {result!r}")


def expect_warned(
    call: Callable[[], Any], *words: str, check: Callable[[Any], None] | None = None
) -> str:
    """Assert ``call()`` emits a CalibrationWarning containing ``words``; ``check`` its result."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = call()
        except Exception as error:
            COUNTS["mishandled"] += 1
            raise Mishandled(
                f"expected a CalibrationWarning naming {words}, got {type(error).__name__}: {error}"
            ) from error
    messages = [str(w.message) for w in caught if issubclass(w.category, CalibrationWarning)]
    if not any(_names_all(message, words) for message in messages):
        COUNTS["mishandled"] += 1
        raise Mishandled(f"expected a CalibrationWarning naming {words}, got {messages}")
    if check is not None:
        try:
            check(result)
        except AssertionError:
            COUNTS["mishandled"] += 1
            raise
    COUNTS["warned"] += 1
    return "warned"


def expect_exact(call: Callable[[], Any], check: Callable[[Any], None]) -> str:
    """Assert ``call()`` neither raises nor warns, and its result passes ``check``."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", CalibrationWarning)
        try:
            result = call()
        except Exception as error:
            COUNTS["mishandled"] += 1
            raise Mishandled(
                f"expected an exact result, got {type(error).__name__}: {error}"
            ) from error
    try:
        check(result)
    except AssertionError:
        COUNTS["mishandled"] += 1
        raise
    COUNTS["exact"] += 1
    return "exact"
