"""Temperature scaling: ``softmax(z / T)`` with T fitted exactly on held-out data."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from typing import Any, ClassVar, Literal, get_args

import torch
from torch import Tensor, nn

from torchcal._inputs.collect import check_loader
from torchcal._inputs.distributed import LocalReducer, ProcessGroupReducer
from torchcal._inputs.model_rows import NextTokenRows
from torchcal._inputs.shapes import FitRows, fit_rows
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
    Inputs,
    as_tensor,
    fitted_value,
    streamed_calibration_error,
    warn_if_one_class,
)
from torchcal.calibrators.result import FitResult
from torchcal.errors import warn
from torchcal.export import CalibratedModel, TemperatureHead

#: The temperature solvers.
Method = Literal["lbfgs", "newton"]
METHODS: tuple[str, ...] = get_args(Method)
#: How the logits are read: ``"auto"`` picks sigmoid for one logit per sample, else softmax.
Activation = Literal["auto", "softmax", "sigmoid"]
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
        self.activation = check_choice(activation, "activation", get_args(Activation))
        self.class_dim = class_dim
        self.ignore_index = ignore_index
        self.per_class = bool(per_class)
        self.inputs = check_choice(inputs, "inputs", get_args(Inputs))
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
        """Calibrated probabilities: softmax over the class dimension, or sigmoid."""
        calibrated = self(inputs)
        if self._fitted_activation == "sigmoid":
            return torch.sigmoid(calibrated)
        return torch.softmax(calibrated, dim=self._fitted_class_dim)

    def export(self, output: str = "logits") -> CalibratedModel:
        """A plain inference-only module: the wrapped model followed by the fitted calibration.

        ``output="logits"`` gives ``model(x) / T``, ``"probs"`` gives its softmax over the fitted
        class dimension (its sigmoid for a sigmoid model); without a wrapped model the module
        maps logits to calibrated logits or probabilities. With ``inputs="probs"`` the module
        first takes the log of the model's probabilities, as ``forward`` does.
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
        return self._export(TemperatureHead(self.temperature_), output, self._fitted_activation)

    # ----------------------------------------------------------------------------- fit
    def fit(
        self,
        data: Tensor | Iterable[Any] | Any,
        labels: Tensor | None = None,
        *,
        progress: bool | None = None,
        distributed: bool = False,
        process_group: Any | None = None,
    ) -> TemperatureScaler:
        """Fit T on ``(logits, labels)`` or on a loader of ``(inputs, labels)`` batches.

        ``data`` is a logits tensor (any shape the class docstring lists), a numpy array (a
        memory map from ``numpy.load(path, mmap_mode="r")`` is read in row chunks, never whole),
        a file opened with :func:`torchcal.open_logits`, or a loader. Arrays and files hold (N, K)
        rows with (N,) labels, or (N,) binary logits. With a loader the wrapped model runs in
        eval mode under ``torch.no_grad()`` on its own device, and every submodule's mode is
        restored afterwards. ``progress`` shows a tqdm bar while collecting logits (``None``:
        only on a terminal).

        With ``shift_labels=True`` a loader is streamed instead of collected: every solver pass
        runs the model over the loader again and holds one batch's logits, so memory does not
        grow with the validation set's tokens x vocabulary (only a few numbers per token), at
        the price of one model pass per solver pass (about 6; ``fit_result.data_passes`` counts
        them all, the warm start's included). The loader must give the same batches each time.

        ``distributed=True`` fits one temperature on the data of every rank of
        ``process_group`` (default: the world) of an initialised ``torch.distributed``: each
        rank passes its own shard, the ranks exchange the fit's float64 sums (a few dozen
        numbers per pass) and every rank ends with the same T, the one a single process would
        fit on the concatenated shards, and a :attr:`fit_result` that describes all of them.
        Every rank of the group must call ``fit`` with the same options; if one rank's data is
        invalid, every rank raises. (A ``DistributedSampler`` pads the shards to equal length
        by repeating samples unless ``drop_last=True``.) Returns ``self``.

        Example:
            >>> import tempfile
            >>> import numpy as np
            >>> _ = torch.manual_seed(0)
            >>> logits = torch.randn(4000, 10) * 3
            >>> labels = torch.distributions.Categorical(logits=logits / 2).sample()
            >>> path = tempfile.mkdtemp() + "/val_logits.npy"
            >>> np.save(path, logits.numpy())
            >>> mapped = np.load(path, mmap_mode="r")  # read in row chunks by the fit
            >>> from_disk = TemperatureScaler().fit(mapped, labels, progress=False)
            >>> from_disk.temperature == TemperatureScaler().fit(logits, labels).temperature
            True

            The same fit over the ranks of a process group (here a group of one):

            >>> import torch.distributed as dist
            >>> store = dist.FileStore(tempfile.mkdtemp() + "/store", 1)
            >>> dist.init_process_group("gloo", store=store, rank=0, world_size=1)
            >>> shared = TemperatureScaler().fit(logits, labels, distributed=True)
            >>> shared.temperature == from_disk.temperature
            True
            >>> dist.destroy_process_group()
        """
        if process_group is not None and not distributed:
            raise ValueError("process_group is only used with distributed=True")
        reducer = ProcessGroupReducer(process_group) if distributed else LocalReducer()
        error: Exception | None = None
        rows: FitRows | None = None
        objectives: list[_Objective] = []
        try:  # everything that can fail on one rank alone happens here, before any exchange
            rows = self._collect_rows(data, labels, progress)
            objective_type = (
                SoftmaxTemperatureNLL if rows.activation == "softmax" else SigmoidTemperatureNLL
            )
            for source, targets in zip(rows.sources, rows.labels, strict=True):
                options = {"ignore_index": rows.ignore_index, "n_bins": self.n_bins}
                objectives.append(objective_type(source, targets, reducer=reducer, **options))
        except Exception as caught:
            if not reducer.distributed:
                raise
            error = caught
        if reducer.distributed:
            reducer.check(error, self._layout(rows, len(objectives)), self._shared_options(rows))
            for objective in objectives:
                objective.synchronise()
        assert rows is not None
        if rows.activation == "softmax":
            warn_if_one_class(objectives[0])
        with self._fitting() as draft:
            results, temperatures = [], []
            for objective in objectives:
                solution = fit_temperature(
                    objective,
                    method=self.method,
                    temperature_bounds=self.temperature_bounds,
                    rtol=self.tol,
                    max_iter=self.max_iter,
                )
                result = self._result(objective, solution)
                if isinstance(objective.source, NextTokenRows):  # every model pass, warm start too
                    result = dataclasses.replace(result, data_passes=objective.source.passes.count)
                results.append(result)
                temperatures.append(solution.temperature)
                self._warn_about(objective, solution)
            draft._fitted_activation, draft._fitted_class_dim = rows.activation, rows.class_dim
            draft._set_fitted(
                torch.tensor(temperatures if self.per_class else temperatures[0]),
                tuple(results) if self.per_class else results[0],
            )
        return self

    def _shared_options(self, rows: FitRows | None) -> dict[str, Any]:
        """What every rank of a distributed fit must pass alike: the options and the dtype."""
        return {
            "calibrator": self.kind,
            **self.options(),
            "dtype": None if rows is None else str(rows.sources[0].dtype),
        }

    @staticmethod
    def _layout(rows: FitRows | None, n_objectives: int) -> tuple[int, int, int]:
        """What every rank's data must share: activation, classes per row, temperatures."""
        if rows is None:
            return (0, 0, 0)
        if rows.activation == "softmax":
            return (1, int(rows.sources[0].shape[-1]), n_objectives)
        return (2, 1, n_objectives)

    def _collect_rows(self, data: Any, labels: Any, progress: bool | None) -> FitRows:
        if self.shift_labels:
            return self._next_token_rows(data, labels)
        data, labels = self._logits_and_labels(data, labels, progress)
        if self.inputs == "probs" or self.per_class or getattr(data, "ndim", 2) > 2:
            data = as_tensor(data)  # numpy arrays are read in chunks only as (N, K) or (N,) logits
        return fit_rows(
            data,
            labels,
            activation=self.activation,
            class_dim=self.class_dim,
            ignore_index=self.ignore_index,
            per_class=self.per_class,
            inputs=self.inputs,
        )

    def _next_token_rows(self, data: Any, labels: Any) -> FitRows:
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
            return fit_rows(
                logits[:, :-1],
                labels[:, 1:],
                activation="softmax",
                class_dim=-1,
                ignore_index=self.ignore_index,
            )
        check_loader(data)
        source = NextTokenRows(self.model, data, ignore_index=self.ignore_index)
        return FitRows("softmax", (source,), (source.labels,), -1, None)

    def _result(self, objective: _Objective, solution: Solution) -> FitResult:
        return FitResult(
            calibrator=self.kind,
            n_parameters=1,
            temperature=solution.temperature,
            nll_before=objective.initial.nll,
            nll_after=solution.evaluation.nll,
            ece_before=streamed_calibration_error(objective, objective.initial.bins),
            ece_after=streamed_calibration_error(objective, solution.evaluation.bins),
            iterations=solution.iterations,
            function_evaluations=solution.evaluations,
            data_passes=objective.passes,
            converged=solution.converged,
            n_samples=objective.n_samples,
            solver=self.method,
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
