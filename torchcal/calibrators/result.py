"""The record of a fit: one :class:`FitResult` type for every calibrator."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

__all__ = ["FitResult"]

#: The solvers of temperature scaling, as records written before ``solver`` existed name them.
_TEMPERATURE_SOLVERS = ("lbfgs", "newton")


@dataclass(frozen=True)
class FitResult:
    """What a fit found and what it cost, measured on the data it was fitted on.

    Every calibrator's :attr:`~torchcal.Calibrator.fit_result` is one of these; the fields after
    ``converged`` describe a temperature fit and are ``None`` for the other calibrators.

    Attributes:
        calibrator: the calibrator's kind, e.g. ``"temperature"``, ``"vector"`` or ``"isotonic"``.
        nll_before, nll_after: mean negative log-likelihood before and after calibration.
        ece_before, ece_after: top-label ECE (``n_bins`` equal-width bins) before and after.
        n_samples: number of samples fitted on (over all ranks for a distributed fit).
        n_parameters: number of fitted values.
        iterations: solver iterations on the full data (0 for methods fitted in closed form).
        converged: whether the solver met its tolerance (always True at a temperature bound).
        temperature: the fitted T (inside ``temperature_bounds``).
        solver: the temperature solver, ``"lbfgs"`` or ``"newton"``.
        function_evaluations: passes of the solver over the full data, each one yielding the NLL
            and its derivatives.
        data_passes: every pass over the full logits, validation and the T = 1 report included
            (a warm start on a subsample of the rows is not counted; below 4096 samples it runs
            on all of them, and its passes count).
        bound: ``"lower"`` or ``"upper"`` if the optimum lies beyond that temperature bound and T
            was held at it, else ``None``.

    Example:
        >>> result = FitResult("vector", 0.9, 0.7, 0.12, 0.02, 1000, 20, 7, True)
        >>> print(result)  # doctest: +NORMALIZE_WHITESPACE
        vector calibration on 1000 samples (20 values, converged):
        NLL 0.9000 -> 0.7000, ECE 0.1200 -> 0.0200
        >>> FitResult.from_dict(result.to_dict()) == result
        True
    """

    calibrator: str
    nll_before: float
    nll_after: float
    ece_before: float
    ece_after: float
    n_samples: int
    n_parameters: int
    iterations: int
    converged: bool
    temperature: float | None = None
    solver: str | None = None
    function_evaluations: int | None = None
    data_passes: int | None = None
    bound: str | None = None

    def __str__(self) -> str:
        status = "converged" if self.converged else "NOT converged"
        scores = (
            f"NLL {self.nll_before:.4f} -> {self.nll_after:.4f}, "
            f"ECE {self.ece_before:.4f} -> {self.ece_after:.4f}"
        )
        if self.temperature is None:
            return (
                f"{self.calibrator} calibration on {self.n_samples} samples "
                f"({self.n_parameters} values, {status}): {scores}"
            )
        at_bound = f", held at the {self.bound} bound" if self.bound else ""
        evaluations = self.function_evaluations or 0
        return (
            f"T = {self.temperature:.6g} on {self.n_samples} samples ({self.solver}, {status}"
            f"{at_bound}, {evaluations} evaluation{'' if evaluations == 1 else 's'}): {scores}"
        )

    def to_dict(self) -> dict[str, Any]:
        """A plain dict of the fields, for JSON or a state dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FitResult:
        """Rebuild from :meth:`to_dict` output, ignoring keys this version does not know.

        Records written before every calibrator shared this type are read too: they name the
        calibrator's kind, or for temperature scaling the solver, ``method``.

        Args:
            values: the record's fields by name.

        Example:
            >>> old = {"method": "newton", "temperature": 2.0, "nll_before": 1.0,
            ...        "nll_after": 0.9, "ece_before": 0.1, "ece_after": 0.01, "iterations": 3,
            ...        "function_evaluations": 4, "data_passes": 5, "converged": True,
            ...        "n_samples": 100}
            >>> record = FitResult.from_dict(old)
            >>> record.calibrator, record.solver, record.n_parameters
            ('temperature', 'newton', 1)
        """
        return cls(**{k: v for k, v in upgraded_record(values).items() if k in _FIELDS})


def upgraded_record(values: dict[str, Any]) -> dict[str, Any]:
    """A record dict in the current field names: an older record's ``method`` becomes
    ``calibrator`` (and, for temperature scaling, ``solver``); other keys are kept as they are.

    Args:
        values: a record dict of any version.
    """
    if "calibrator" in values or "method" not in values:
        return dict(values)
    upgraded = {k: v for k, v in values.items() if k != "method"}
    method = values["method"]
    if "temperature" in values and method in _TEMPERATURE_SOLVERS:
        upgraded.update(calibrator="temperature", solver=method)
        upgraded.setdefault("n_parameters", 1)
    else:
        upgraded["calibrator"] = method
    return upgraded


_FIELDS = frozenset(field.name for field in fields(FitResult))
