"""Temperature scaling: ``softmax(z / T)`` with T fitted exactly on held-out data."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from torchcal._objective import SoftmaxTemperatureNLL
from torchcal._solver import Solution, solve_temperature
from torchcal._validation import check_choice, check_positive_finite, check_positive_int
from torchcal._version import __version__
from torchcal.collect import collect_logits
from torchcal.errors import CalibrationWarning, NotFittedError
from torchcal.export import CalibratedModel, TemperatureHead
from torchcal.metrics.calibration import top_label_bins
from torchcal.result import FitResult

METHODS = ("lbfgs", "newton")
DEFAULT_TEMPERATURE_BOUNDS = (1e-3, 1e3)


class TemperatureScaler(nn.Module):
    """Wrap a classifier so that its logits are divided by a temperature fitted on held-out data.

    ``T`` minimises the mean negative log-likelihood of ``softmax(logits / T)`` on the data given
    to :meth:`fit`. The fit is exact: it stops when the estimated distance to the optimum,
    ``|log T - log T*|``, is below ``tol``, and T stays inside ``temperature_bounds``.

    Args:
        model: the trained classifier; ``None`` to calibrate logits directly.
        method: ``"lbfgs"`` (``torch.optim.LBFGS`` with strong-Wolfe line search on log T) or
            ``"newton"`` (safeguarded Newton on 1/T, where the NLL is convex).
        temperature_bounds: the range T is kept in; an optimum beyond it ends at the bound with a
            :class:`~torchcal.errors.CalibrationWarning`.
        tol: relative accuracy of T at which the fit stops.
        max_iter: iteration limit of the solver.
        n_bins: equal-width bins of the ECE reported in :attr:`fit_result`.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits = torch.randn(1000, 5) * 4
        >>> labels = torch.distributions.Categorical(logits=logits / 4).sample()
        >>> scaler = TemperatureScaler().fit(logits, labels, progress=False)
        >>> round(scaler.temperature, 1)
        4.0
        >>> scaler.predict_proba(logits[:2]).sum(dim=1)
        tensor([1., 1.])
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        *,
        method: str = "lbfgs",
        temperature_bounds: tuple[float, float] = DEFAULT_TEMPERATURE_BOUNDS,
        tol: float = 1e-6,
        max_iter: int = 100,
        n_bins: int = 15,
    ) -> None:
        super().__init__()
        if model is not None and not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module or None, got {type(model).__name__}")
        self.model = model
        self.method = check_choice(method, "method", METHODS)
        low, high = (check_positive_finite(b, "temperature_bounds") for b in temperature_bounds)
        if not low < high:
            raise ValueError(
                f"temperature_bounds must be (low, high) with low < high, got {temperature_bounds}"
            )
        self.temperature_bounds = (low, high)
        self.tol = check_positive_finite(tol, "tol")
        self.max_iter = check_positive_int(max_iter, "max_iter")
        self.n_bins = check_positive_int(n_bins, "n_bins")
        self.register_buffer("temperature_", torch.tensor(math.nan))
        self.fit_result: FitResult | None = None
        self._fitted = False

    # ----------------------------------------------------------------------------- state
    @property
    def temperature(self) -> float:
        """The fitted temperature T (read-only)."""
        self._check_fitted()
        return float(self.temperature_)

    @property
    def is_fitted(self) -> bool:
        """Whether a temperature has been fitted or loaded."""
        return self._fitted

    def _check_fitted(self) -> None:
        if not self._fitted:
            raise NotFittedError(
                f"this {type(self).__name__} has no temperature yet: call .fit(logits, labels) or "
                ".fit(loader), or load a fitted state with .load_state_dict(...)"
            )

    def get_extra_state(self) -> dict[str, Any]:
        return {
            "torchcal_version": __version__,
            "fit_result": None if self.fit_result is None else self.fit_result.to_dict(),
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        result = state.get("fit_result")
        self.fit_result = None if result is None else FitResult.from_dict(result)

    def _set_fitted(self, temperature: float, fit_result: FitResult | None) -> None:
        """Make this scaler fitted with ``temperature`` (used by :meth:`fit` and by loading)."""
        with torch.no_grad():
            self.temperature_.fill_(temperature)
        self.fit_result = fit_result
        self._fitted = True

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._fitted = not bool(torch.isnan(self.temperature_))

    # ----------------------------------------------------------------------------- use
    def forward(self, inputs: Any) -> Tensor:
        """Calibrated logits: ``model(inputs) / T``, or ``inputs / T`` without a model."""
        self._check_fitted()
        logits = inputs if self.model is None else self.model(inputs)
        return logits / self.temperature_

    def predict_proba(self, inputs: Any) -> Tensor:
        """Calibrated probabilities ``softmax(model(inputs) / T)`` over dim 1."""
        return torch.softmax(self(inputs), dim=1)

    def export(self, output: str = "logits") -> CalibratedModel:
        """A plain inference-only module: the wrapped model followed by the fitted calibration.

        ``output="logits"`` gives ``model(x) / T``, ``"probs"`` gives its softmax over dim 1;
        without a wrapped model the module maps logits to calibrated logits or probabilities.
        T is copied into a buffer (refitting this scaler leaves the export unchanged); the
        wrapped model is shared, not copied. The result works with ``torch.jit.script``,
        ``torch.export.export`` and ``torch.onnx.export``.

        Example:
            >>> _ = torch.manual_seed(0)
            >>> logits = torch.randn(500, 4) * 4
            >>> labels = torch.distributions.Categorical(logits=logits / 2).sample()
            >>> scaler = TemperatureScaler().fit(logits, labels, progress=False)
            >>> deployed = scaler.export("probs")
            >>> torch.equal(deployed(logits), scaler.predict_proba(logits))
            True
            >>> [name for name, _ in deployed.named_buffers()], list(deployed.parameters())
            (['head.temperature'], [])
        """
        self._check_fitted()
        return CalibratedModel(self.model, TemperatureHead(self.temperature_), output)

    # ----------------------------------------------------------------------------- fit
    def fit(
        self,
        data: Tensor | Iterable[Any],
        labels: Tensor | None = None,
        *,
        progress: bool | None = None,
    ) -> TemperatureScaler:
        """Fit T on ``(logits, labels)`` tensors or on a loader of ``(inputs, labels)`` batches.

        With a loader the wrapped model runs in eval mode under ``torch.no_grad()`` on its own
        device, and every submodule's mode is restored afterwards. ``progress`` shows a tqdm bar
        while collecting logits (``None``: only on a terminal). Returns ``self``.
        """
        if labels is None:
            if isinstance(data, Tensor):
                raise TypeError(
                    "fit(logits) needs labels: call fit(logits, labels), or fit(loader) with a "
                    "loader of (inputs, labels) batches"
                )
            logits, labels = collect_logits(self.model, data, progress=progress)
        else:
            logits = data
        objective = SoftmaxTemperatureNLL(logits, labels)
        solution = solve_temperature(
            objective,
            method=self.method,
            temperature_bounds=self.temperature_bounds,
            rtol=self.tol,
            max_iter=self.max_iter,
        )
        self._set_fitted(solution.temperature, self._result(objective, solution))
        self._warn_about(objective, solution)
        return self

    def _result(self, objective: SoftmaxTemperatureNLL, solution: Solution) -> FitResult:
        def ece(confidences: Tensor) -> float:
            bins = top_label_bins(confidences, objective.top1_correct, self.n_bins)
            return float(bins.calibration_error())

        return FitResult(
            temperature=solution.temperature,
            nll_before=objective.initial.nll,
            nll_after=solution.evaluation.nll,
            ece_before=ece(objective.initial.confidences),
            ece_after=ece(solution.evaluation.confidences),
            iterations=solution.iterations,
            function_evaluations=solution.evaluations,
            data_passes=objective.passes,
            converged=solution.converged,
            n_samples=objective.n_samples,
            method=self.method,
            bound=solution.bound,
        )

    def _warn_about(self, objective: SoftmaxTemperatureNLL, solution: Solution) -> None:
        low, high = self.temperature_bounds
        if solution.bound == "lower":
            why = (
                "every sample's label has the top score, so the NLL keeps falling as T -> 0"
                if bool(objective.top1_correct.all())
                else "the NLL is still falling there"
            )
            warnings.warn(
                f"the optimal temperature lies below the lower bound {low:g}: {why}. T was held "
                f"at {low:g}; validate on data the model gets wrong sometimes, or widen "
                "temperature_bounds",
                CalibrationWarning,
                stacklevel=3,
            )
        elif solution.bound == "upper":
            warnings.warn(
                f"the optimal temperature lies above the upper bound {high:g}: the logits predict "
                "the labels no better than chance (uniform probabilities fit best). T was held at "
                f"{high:g}; check that logits and labels are aligned",
                CalibrationWarning,
                stacklevel=3,
            )
        elif not solution.converged:
            warnings.warn(
                f"the temperature fit stopped after {solution.iterations} iterations without "
                f"reaching tol={self.tol:g}; T = {solution.temperature:.6g} may be inexact. "
                "Raise max_iter or try method='newton'",
                CalibrationWarning,
                stacklevel=3,
            )
