"""The records of a fit: :class:`FitResult` for temperature scaling, :class:`CalibratorFitResult`
for the other calibrators."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, TypeVar

_Record = TypeVar("_Record", bound="_JSONRecord")


class _JSONRecord:
    """Conversion of a frozen dataclass to and from a plain dict (JSON, state dicts)."""

    def to_dict(self) -> dict[str, Any]:
        """A plain dict of the fields, for JSON or a state dict."""
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[_Record], values: dict[str, Any]) -> _Record:
        """Rebuild from :meth:`to_dict` output, ignoring keys this version does not know."""
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in values.items() if k in known})


@dataclass(frozen=True)
class FitResult(_JSONRecord):
    """What a fit found and what it cost.

    Attributes:
        temperature: the fitted T (inside ``temperature_bounds``).
        nll_before, nll_after: mean negative log-likelihood at T = 1 and at the fitted T.
        ece_before, ece_after: top-label ECE (15 equal-width bins) at T = 1 and at the fitted T.
        iterations: solver iterations on the full data (after the warm start).
        function_evaluations: passes of the solver over the full data, each one yielding the NLL
            and its derivative.
        data_passes: every pass over the full logits, validation and the T = 1 report included
            (a warm start on a subsample of the rows is not counted; below 4096 samples it runs
            on all of them, and its passes count).
        converged: whether the stated tolerance was met (always True at a bound).
        n_samples: number of samples fitted on (over all ranks for a distributed fit).
        method: ``"lbfgs"`` or ``"newton"``.
        bound: ``"lower"`` or ``"upper"`` if the optimum lies beyond that temperature bound and T
            was held at it, else ``None``.
    """

    temperature: float
    nll_before: float
    nll_after: float
    ece_before: float
    ece_after: float
    iterations: int
    function_evaluations: int
    data_passes: int
    converged: bool
    n_samples: int
    method: str
    bound: str | None = None

    def __str__(self) -> str:
        at_bound = f", held at the {self.bound} bound" if self.bound else ""
        status = "converged" if self.converged else "NOT converged"
        return (
            f"T = {self.temperature:.6g} on {self.n_samples} samples ({self.method}, {status}"
            f"{at_bound}, {self.function_evaluations} evaluation"
            f"{'' if self.function_evaluations == 1 else 's'}): "
            f"NLL {self.nll_before:.4f} -> {self.nll_after:.4f}, "
            f"ECE {self.ece_before:.4f} -> {self.ece_after:.4f}"
        )


@dataclass(frozen=True)
class CalibratorFitResult(_JSONRecord):
    """What a calibrator's fit found, measured on the data it was fitted on.

    Attributes:
        method: the calibrator's kind, e.g. ``"vector"`` or ``"isotonic"``.
        nll_before, nll_after: mean negative log-likelihood before and after calibration.
        ece_before, ece_after: top-label ECE (``n_bins`` equal-width bins) before and after.
        n_samples: number of samples fitted on.
        n_parameters: number of fitted values.
        iterations: optimiser iterations (0 for methods fitted in closed form).
        converged: whether the optimiser met its tolerance.
    """

    method: str
    nll_before: float
    nll_after: float
    ece_before: float
    ece_after: float
    n_samples: int
    n_parameters: int
    iterations: int
    converged: bool

    def __str__(self) -> str:
        status = "converged" if self.converged else "NOT converged"
        return (
            f"{self.method} calibration on {self.n_samples} samples ({self.n_parameters} "
            f"values, {status}): NLL {self.nll_before:.4f} -> {self.nll_after:.4f}, "
            f"ECE {self.ece_before:.4f} -> {self.ece_after:.4f}"
        )
