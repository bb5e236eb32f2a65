"""Temperature scaling: ``softmax(z / T)`` with T fitted exactly on held-out data."""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal, get_args

import torch
from torch import Tensor, nn

from torchcal._inputs import ACTIVATIONS, INPUTS, Activation, Inputs, Prepared, prepare
from torchcal._inputs.collect import check_loader
from torchcal._inputs.distributed import LocalReducer
from torchcal._inputs.model_rows import NextTokenSource
from torchcal._inputs.validation import (
    check_bin_count,
    check_choice,
    check_model,
    check_positive_finite,
    check_positive_int,
    check_temperature_bounds,
    check_tensor,
)
from torchcal._objectives.temperature import SigmoidTemperatureNLL, SoftmaxTemperatureNLL
from torchcal._optim.temperature import Solution, fit_temperature
from torchcal.calibrators._loaded import loaded_tensor
from torchcal.calibrators._state import FittedState
from torchcal.calibrators.base import (
    Calibrator,
    fitted_value,
    streamed_scores,
    warn_if_one_class,
)
from torchcal.calibrators.result import FitResult
from torchcal.errors import warn
from torchcal.export import CalibratedModel, Output, TemperatureHead

__all__ = ["TemperatureScaler"]

#: The temperature solvers.
Method = Literal["lbfgs", "newton"]
METHODS: tuple[str, ...] = get_args(Method)
_Objective = SoftmaxTemperatureNLL | SigmoidTemperatureNLL
DEFAULT_TEMPERATURE_BOUNDS = (1e-3, 1e3)


def _check_flag(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def _is_set(temperature: object) -> bool:
    """False for the all-NaN temperature of an unfitted scaler."""
    return not (isinstance(temperature, Tensor) and bool(torch.isnan(temperature).all()))


class TemperatureScaler(Calibrator):
    """Wrap a classifier so that its logits are divided by a temperature fitted on held-out data.

    ``T`` minimises the mean negative log-likelihood of ``softmax(logits / T)`` (or, for sigmoid
    models, the binary cross-entropy of ``sigmoid(logits / T)``) on the data given to
    :meth:`fit`. The fit is exact: it stops when the estimated distance to the optimum,
    ``|log T - log T*|``, is below ``tol``, and T stays inside ``temperature_bounds``.

    Every classifier shape is accepted: (N, K) logits with (N,) labels; segmentation maps
    (N, K, H, W) with (N, H, W) labels and volumes (N, K, D, H, W); token sequences (B, L, V) with
    (B, L) labels; binary (N,) or (N, 1) logits; multi-label (N, K) logits with (N, K) 0/1 targets
    (``activation="sigmoid"``, one shared T or one per label with ``per_class=True``). Labels equal
    to ``ignore_index`` are left out of the fit and of the reported metrics. One-hot labels are
    rejected for softmax models (pass class indices).

    Args:
        model: the trained classifier; ``None`` to calibrate logits directly.
        activation: ``"auto"`` (sigmoid for one logit per sample, else softmax), ``"softmax"``
            or ``"sigmoid"`` (binary or multi-label).
        class_dim: the class dimension of the logits; ``None`` infers it from the labels' shape
            (dim 1 for (N, K, ...) with (N, ...) labels, the last dim for (B, L, V) with (B, L)).
        ignore_index: label value to leave out (default -100, as in ``F.cross_entropy``).
        per_class: one temperature per label of a multi-label sigmoid model.
        inputs: ``"logits"``, or ``"probs"`` when only probabilities are at hand (they are fitted
            as log-probabilities, or log-odds for sigmoid models).
        method: ``"lbfgs"`` (``torch.optim.LBFGS`` with strong-Wolfe line search on log T) or
            ``"newton"`` (safeguarded Newton on 1/T, where the NLL is convex).
        temperature_bounds: the range T is kept in; an optimum beyond it ends at the bound with a
            :class:`~torchcal.errors.CalibrationWarning`.
        tol: relative accuracy of T at which the fit stops.
        max_iter: iteration limit of the solver.
        n_bins: equal-width bins of the ECE reported in :attr:`fit_result`.
        shift_labels: calibrate a causal language model's next-token probabilities: fit the
            (B, L, V) logits ``logits[:, :-1]`` against the (B, L) labels ``labels[:, 1:]`` (the
            Hugging Face convention: labels are the input ids, -100 where ignored). A loader is
            streamed: see :meth:`fit`.

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

    kind = "temperature"
    fits_distributed = True
    _former_names: ClassVar[dict[str, str]] = {"temperature": "temperature_"}  # 0.1.0 files
    _keeps_buffer_dtype = True

    def __init__(
        self,
        model: nn.Module | None = None,
        *,
        activation: Activation = "auto",
        class_dim: int | None = None,
        ignore_index: int | None = -100,
        per_class: bool = False,
        inputs: Inputs = "logits",
        method: Method = "lbfgs",
        temperature_bounds: tuple[float, float] = DEFAULT_TEMPERATURE_BOUNDS,
        tol: float = 1e-6,
        max_iter: int = 100,
        n_bins: int = 15,
        shift_labels: bool = False,
    ) -> None:
        super().__init__()
        self.model = check_model(model)
        self.shift_labels = _check_flag(shift_labels, "shift_labels")
        self.activation = check_choice(activation, "activation", ACTIVATIONS)
        self.class_dim = class_dim
        self.ignore_index = ignore_index
        self.per_class = bool(per_class)
        self.inputs = check_choice(inputs, "inputs", INPUTS)
        self.method = check_choice(method, "method", METHODS)
        self.temperature_bounds = check_temperature_bounds(temperature_bounds)
        self.tol = check_positive_finite(tol, "tol")
        self.max_iter = check_positive_int(max_iter, "max_iter")
        self.n_bins = check_bin_count(n_bins, "n_bins")
        self.register_buffer("temperature_", torch.tensor(math.nan))
        self._init_fitted_state()

    # ----------------------------------------------------------------------------- state
    @property
    def temperature(self) -> float:
        """The fitted temperature T (read-only)."""
        self._check_fitted()
        if self.temperature_.ndim:
            raise ValueError(
                f"this scaler has one temperature per label ({self.temperature_.numel()}); "
                "read them from .temperatures"
            )
        return float(self.temperature_)

    temperatures = fitted_value(
        "temperature_",
        "The fitted temperature(s) as a tensor (a copy): shape () or, with ``per_class``, (K,).",
    )

    def _fitted_without_state(self, tensors: dict[str, Tensor], state: FittedState) -> bool:
        """An older state (or none) leaves it to the values: T is NaN until fitted."""
        return state.fit_results is not None or _is_set(tensors.get("temperature_"))

    def _check_layout(self, state: FittedState) -> None:
        super()._check_layout(state)
        if state.class_dim is None and (self.per_class or state.activation != "sigmoid"):
            raise ValueError(
                "fit_result.class_dim must be set for softmax and per-class temperatures"
            )

    def _check_fitted_values(self, tensors: dict[str, Tensor], state: FittedState) -> None:
        """T: finite, > 0, within ``temperature_bounds``, of shape () (``per_class``: one per
        fit result, or any length without them), equal to its fit results' temperatures (to
        the rounding of its dtype), each result from this solver."""
        records = state.fit_results
        if not self.per_class:
            shape: dict[str, Any] = {"shape": ()}
        else:
            shape = {"ndim": 1} if records is None else {"shape": (len(records),)}
        temperature = loaded_tensor(
            tensors, "temperature_", **shape, positive=True, bounds=self.temperature_bounds
        )
        tolerance = 8 * torch.finfo(temperature.dtype).eps
        for i, (record, value) in enumerate(
            zip(records or (), temperature.reshape(-1).tolist(), strict=False)
        ):
            field = f"fit_result.fit_results[{i}]"
            if record.temperature is None or not (
                math.isfinite(record.temperature) and record.temperature > 0
            ):
                raise ValueError(
                    f"{field}.temperature must be finite and > 0, got {record.temperature!r}"
                )
            if abs(value / record.temperature - 1) > tolerance:
                raise ValueError(
                    f"{field}.temperature is {record.temperature!r} but the stored temperature "
                    f"is {value!r}: the file's values do not belong together"
                )
            if record.solver not in METHODS:
                raise ValueError(f"{field}.solver must be one of {METHODS}, got {record.solver!r}")
            if record.bound not in (None, "lower", "upper"):
                raise ValueError(
                    f"{field}.bound must be 'lower', 'upper' or null, got {record.bound!r}"
                )

    def _set_fitted(
        self,
        temperature: float | Tensor,
        fit_result: FitResult | tuple[FitResult, ...] | None,
    ) -> None:
        """Make this scaler fitted with ``temperature`` (used by :meth:`fit` and by loading)."""
        buffer = self.temperature_
        self.temperature_ = torch.as_tensor(temperature).to(buffer.device, buffer.dtype).clone()
        self.fit_result = fit_result
        self._fitted = True

    def _fitted_repr(self) -> str:
        if self.temperature_.ndim:
            values = ", ".join(f"{float(t):.5g}" for t in self.temperature_[:4])
            return f"T=({values}{', ...' if self.temperature_.numel() > 4 else ''})"
        return f"T={float(self.temperature_):.5g}"

    # ----------------------------------------------------------------------------- use
    def forward(self, inputs: Any) -> Tensor:
        """Calibrated logits: ``model(inputs) / T``, or ``inputs / T`` without a model.

        With ``inputs="probs"`` the probabilities are first mapped to logits (``log p``, or the
        log-odds for a sigmoid model), as in :meth:`fit`.

        Args:
            inputs: the model's inputs, or logits (probabilities with ``inputs="probs"``).
        """
        self._check_fitted()
        logits = self._scores(inputs, self._fitted_activation)
        temperature = self.temperature_
        if temperature.ndim:  # one per class: broadcast along the class dimension
            self._check_classes(logits, temperature.numel())
            trailing = -self._fitted_class_dim - 1
            temperature = temperature.reshape(temperature.shape + (1,) * trailing)
        return logits / temperature

    def _check_classes(self, logits: Tensor, n_classes: int) -> None:
        """Per-class temperatures need logits with ``n_classes`` entries in the class dim."""
        dim = self._fitted_class_dim
        assert dim is not None  # per-class temperatures always have a class dimension
        if logits.ndim < -dim or logits.shape[dim] != n_classes:
            raise ValueError(
                f"this TemperatureScaler has one temperature per label for K={n_classes} labels "
                f"in dim {dim}, but got logits of shape {tuple(logits.shape)}; pass logits with "
                f"{n_classes} labels there"
            )

    def predict_proba(self, inputs: Any) -> Tensor:
        """Calibrated probabilities: softmax over the class dimension, or sigmoid.

        Args:
            inputs: as for :meth:`forward`.
        """
        calibrated = self(inputs)
        if self._fitted_activation == "sigmoid":
            return torch.sigmoid(calibrated)
        return torch.softmax(calibrated, dim=self._fitted_class_dim)

    def export(self, output: Output = "logits") -> CalibratedModel:
        """A plain inference-only module: the wrapped model followed by the fitted calibration.

        ``output="logits"`` gives ``model(x) / T``, ``"probs"`` gives its softmax over the fitted
        class dimension (its sigmoid for a sigmoid model); without a wrapped model the module
        maps logits to calibrated logits or probabilities. With ``inputs="probs"`` the module
        first takes the log of the model's probabilities, as ``forward`` does.
        T is copied into a buffer (refitting this scaler leaves the export unchanged); the
        wrapped model is shared, not copied. The result works with ``torch.jit.script``,
        ``torch.export.export`` and ``torch.onnx.export``.

        Args:
            output: ``"logits"`` or ``"probs"`` (see above).

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
        return self._export(TemperatureHead(self.temperature_), output, self._fitted_activation)

    # ----------------------------------------------------------------------------- fit
    def _prepared(self, data: Any, labels: Any, progress: bool | None) -> Prepared:
        if self.shift_labels:
            return self._next_token_rows(data, labels)
        return super()._prepared(data, labels, progress)

    def _validated(self, prepared: Prepared, reducer: LocalReducer) -> list[_Objective]:
        """One objective per temperature; building it makes the validating pass."""
        objective_type = (
            SoftmaxTemperatureNLL if prepared.activation == "softmax" else SigmoidTemperatureNLL
        )
        options = {"ignore_index": prepared.ignore_index, "n_bins": self.n_bins}
        return [
            objective_type(source, targets, reducer=reducer, **options)
            for source, targets in zip(prepared.sources, prepared.labels, strict=True)
        ]

    def _agree(
        self,
        error: Exception | None,
        prepared: Prepared | None,
        objectives: list[_Objective] | None,
        reducer: Any,
    ) -> None:
        objectives = objectives or []
        layout = self._layout(prepared, len(objectives))
        reducer.check(error, layout, self._shared_options(prepared))
        for objective in objectives:
            objective.synchronise()

    def _fit_prepared(self, prepared: Prepared, objectives: list[_Objective]) -> None:
        if prepared.activation == "softmax":
            warn_if_one_class(objectives[0].n_samples, objectives[0].label_range)
        results, temperatures = [], []
        for objective in objectives:
            solution = fit_temperature(
                objective,
                method=self.method,
                temperature_bounds=self.temperature_bounds,
                rtol=self.tol,
                max_iter=self.max_iter,
            )
            results.append(self._result(objective, solution))
            temperatures.append(solution.temperature)
            self._warn_about(objective, solution)
        self._fitted_activation, self._fitted_class_dim = prepared.activation, prepared.class_dim
        self._set_fitted(
            torch.tensor(temperatures if self.per_class else temperatures[0]),
            tuple(results) if self.per_class else results[0],
        )

    def _shared_options(self, prepared: Prepared | None) -> dict[str, Any]:
        """What every rank of a distributed fit must pass alike: the options and the dtype."""
        return {
            "calibrator": self.kind,
            **self.options(),
            "dtype": None if prepared is None else str(prepared.sources[0].dtype),
        }

    @staticmethod
    def _layout(prepared: Prepared | None, n_objectives: int) -> tuple[int, int, int]:
        """What every rank's data must share: activation, classes per row, temperatures."""
        if prepared is None:
            return (0, 0, 0)
        if prepared.activation == "softmax":
            return (1, int(prepared.sources[0].shape[-1]), n_objectives)
        return (2, 1, n_objectives)

    def _next_token_rows(self, data: Any, labels: Any) -> Prepared:
        """``shift_labels=True``: tensors are sliced (no copy), a loader is streamed."""
        if self.activation == "sigmoid" or self.per_class or self.inputs == "probs":
            raise ValueError(
                "shift_labels=True calibrates softmax next-token logits: it cannot be combined "
                "with activation='sigmoid', per_class=True or inputs='probs'"
            )
        if self.class_dim not in (None, -1, 2):
            raise ValueError(
                f"shift_labels=True takes (B, L, V) logits with the classes last, got "
                f"class_dim={self.class_dim}"
            )
        if labels is not None:
            logits, labels = check_tensor(data, "logits"), check_tensor(labels, "labels")
            if logits.ndim != 3 or labels.ndim != 2 or logits.shape[:2] != labels.shape:
                raise ValueError(
                    "shift_labels=True needs (B, L, V) logits with (B, L) labels, got "
                    f"{tuple(logits.shape)} and {tuple(labels.shape)}"
                )
            return prepare(
                logits[:, :-1],
                labels[:, 1:],
                activation="softmax",
                class_dim=-1,
                ignore_index=self.ignore_index,
            )
        check_loader(data)
        source = NextTokenSource(self.model, data, ignore_index=self.ignore_index)
        return Prepared("softmax", (source,), (source.labels,), -1, None)

    def _result(self, objective: _Objective, solution: Solution) -> FitResult:
        source = objective.source
        streamed = isinstance(source, NextTokenSource)  # every model pass, warm start too
        return self._record(
            streamed_scores(objective, objective.initial),
            streamed_scores(objective, solution.evaluation),
            n_samples=objective.n_samples,
            n_parameters=1,
            iterations=solution.iterations,
            converged=solution.converged,
            temperature=solution.temperature,
            solver=self.method,
            function_evaluations=solution.evaluations,
            data_passes=source.passes.count if streamed else objective.passes,
            bound=solution.bound,
        )

    def _warn_about(self, objective: _Objective, solution: Solution) -> None:
        low, high = self.temperature_bounds
        if solution.bound == "lower":
            why = (
                "every sample's label has the top score, so the NLL keeps falling as T -> 0"
                if objective.n_top == objective.n_samples
                else "the NLL is still falling there"
            )
            warn(
                f"the optimal temperature lies below the lower bound {low:g}: {why}. T was held "
                f"at {low:g}; validate on data the model gets wrong sometimes, or widen "
                "temperature_bounds",
            )
        elif solution.bound == "upper":
            warn(
                f"the optimal temperature lies above the upper bound {high:g}: the logits predict "
                "the labels no better than chance (uniform probabilities fit best). T was held at "
                f"{high:g}; check that logits and labels are aligned",
            )
        elif not solution.converged:
            warn(
                f"the temperature fit stopped after {solution.iterations} iterations without "
                f"reaching tol={self.tol:g}; T = {solution.temperature:.6g} may be inexact. "
                "Raise max_iter or try method='newton'",
            )
