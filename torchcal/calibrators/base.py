"""One interface for every calibrator: fit on logits or a loader, calibrate, export, save.

:class:`Calibrator` is what every method shares: it wraps an optional model, is fitted with
``fit(logits, labels)`` or ``fit(loader)``, maps inputs to calibrated logits in ``forward``
(``predict_proba`` gives probabilities), reports :attr:`fit_result`, exports an inference-only
module and saves with :func:`torchcal.save`. Subclasses register themselves under their
:attr:`~Calibrator.kind`, the name used in save files and in :func:`torchcal.compare`.

:class:`SoftmaxCalibrator` is the common base of the calibrators that map a softmax classifier's
K class scores to K calibrated logits (vector, matrix and Dirichlet scaling, ensemble temperature
scaling, histogram binning, isotonic regression): it materialises the prepared rows once,
validates them (with the temperature objective's validating pass for the methods that start from
a fitted temperature), hands ``(M, K)`` rows to :meth:`SoftmaxCalibrator._fit_rows`, and applies
:meth:`SoftmaxCalibrator._calibrate` along the class dimension.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from typing import Any, ClassVar, NamedTuple, TypeVar, cast

import torch
from torch import Tensor, nn

from torchcal._inputs import (
    INPUTS,
    Inputs,
    Prepared,
    as_tensor,
    check_probabilities_input,
    prepare,
    probabilities_to_logits,
)
from torchcal._inputs.collect import logits_and_labels, model_logits
from torchcal._inputs.distributed import LocalReducer, ProcessGroupReducer
from torchcal._inputs.validation import (
    check_bin_count,
    check_choice,
    check_model,
    check_softmax_rows,
)
from torchcal._objectives.temperature import Evaluation, SoftmaxTemperatureNLL
from torchcal.calibrators._loaded import loaded_tensor, no_unknown_tensors
from torchcal.calibrators._state import FittedState, read_state, written_state
from torchcal.calibrators.result import FitResult
from torchcal.errors import NotFittedError, warn
from torchcal.export import (
    CalibratedModel,
    KeywordCalibratedModel,
    Output,
    ProbabilitiesToLogits,
    in_compute_dtype,
    takes_keyword_inputs,
)
from torchcal.metrics.calibration import bins_from_sums, top_label_bins
from torchcal.metrics.samples import sample_statistics

__all__ = ["Calibrator", "SoftmaxCalibrator"]

_Self = TypeVar("_Self", bound="Calibrator")
_Fit = TypeVar("_Fit", bound=Callable[..., Any])


def warn_if_one_class(n_samples: int, label_range: tuple[int, int]) -> None:
    """Warn when every kept label is the same class (over every rank of a distributed fit)."""
    low, high = label_range
    if n_samples > 1 and low == high:
        warn(
            f"all {n_samples} labels are class {low}: a calibration fitted on one "
            "class says little about the others; validate on data with every class",
        )


class Scores(NamedTuple):
    """The NLL and top-label ECE of probabilities on the data fitted on."""

    nll: float
    ece: float


def scores_of(probs: Tensor, labels: Tensor, n_bins: int) -> Scores:
    """:class:`Scores` of (M, K) probabilities held in memory, from one read of their
    statistics (the NLL and the top-label ECE of :mod:`torchcal.metrics`)."""
    statistics = sample_statistics(probs, labels)
    bins = top_label_bins(statistics.confidences, statistics.correct, n_bins, "uniform")
    return Scores(float(statistics.nll_terms().mean()), float(bins.calibration_error()))


def streamed_scores(objective: SoftmaxTemperatureNLL, evaluation: Evaluation) -> Scores:
    """:class:`Scores` of a streamed pass of ``objective``: its NLL and reliability-bin sums."""
    return Scores(evaluation.nll, streamed_calibration_error(objective, evaluation.bins))


def streamed_calibration_error(objective: SoftmaxTemperatureNLL, bins: Tensor | None) -> float:
    """The top-label ECE from a streamed pass's reliability-bin sums (count, confidence,
    correctness per bin, as :class:`~torchcal._objectives.temperature.Evaluation` holds them)."""
    assert bins is not None
    counts = bins[0].round().to(torch.int64)
    return float(bins_from_sums(objective.edges, counts, bins[1], bins[2]).calibration_error())


class _CheckedRows(NamedTuple):
    """A softmax calibrator's validated rows, their uncalibrated scores, and the temperature
    objective built on them (``None`` for methods that do not start from a temperature)."""

    logits: Tensor
    labels: Tensor
    before: Scores
    temperature: SoftmaxTemperatureNLL | None


def _refuse_constructor_options(fit: _Fit) -> _Fit:
    """Wrap a ``fit`` so that a constructor option passed to it (``fit(..., inputs="probs")``)
    raises a TypeError saying where the option goes, not "unexpected keyword argument"."""
    accepted = set(inspect.signature(fit).parameters)

    @functools.wraps(fit)
    def checked_fit(self: Calibrator, *args: Any, **kwargs: Any) -> Any:
        misplaced = sorted(set(kwargs) - accepted)
        if not misplaced:
            return fit(self, *args, **kwargs)
        constructor = inspect.signature(type(self).__init__).parameters
        options = [name for name in misplaced if name in constructor]
        if options:
            cls = type(self).__name__
            given = ", ".join(f"{name}={kwargs[name]!r}" for name in options)
            raise TypeError(
                f"{', '.join(options)} {'is a' if len(options) == 1 else 'are'} {cls} "
                f"constructor option{'s' * (len(options) > 1)}, not {'a ' * (len(options) == 1)}"
                f"fit argument{'s' * (len(options) > 1)}: build the calibrator with "
                f"{cls}({given}) and call .fit(logits, labels)"
            )
        return fit(self, *args, **kwargs)

    return cast(_Fit, checked_fit)


class Calibrator(nn.Module):
    """What every torchcal calibrator offers (see the module docstring).

    :meth:`fit` is defined here, once: the loader's logits (through the wrapped model) or the
    given ones are laid out by :func:`~torchcal._inputs.prepare`, then the subclass's hooks run
    on a draft (:meth:`_fitting`): :meth:`_validated` (the validating pass, which also measures
    the uncalibrated scores), :meth:`_agree` (distributed fits only) and :meth:`_fit_prepared`,
    which sets the fitted values and a ``fit_result`` built by :meth:`_record`.

    Subclasses set :attr:`kind`, keep every constructor option under its own name (so
    :meth:`options`, read from the constructor's signature, holds them), keep their fitted values
    as buffers named with a trailing underscore (``temperature_``, ``weight_``, ...; read through
    properties without it), and implement those fit hooks, ``forward``, ``export`` and
    :meth:`_check_fitted_values`. Saving and loading are the same for every kind: the buffers
    plus one fitted state (:mod:`torchcal.calibrators._state`), checked by :meth:`_check_loaded`.
    Arrays from numpy are accepted wherever tensors are. The repr shows the fitted values and the
    options that differ from the defaults.

    Example:
        >>> from torchcal import TemperatureScaler, VectorScaler
        >>> _ = torch.manual_seed(0)
        >>> logits = torch.randn(1000, 5) * 4
        >>> labels = torch.distributions.Categorical(logits=logits / 4).sample()
        >>> TemperatureScaler(method="newton")
        TemperatureScaler(method='newton')
        >>> TemperatureScaler().fit(logits, labels, progress=False)  # doctest: +ELLIPSIS
        TemperatureScaler(T=3.95...)
        >>> VectorScaler().fit(logits.numpy(), labels.numpy(), progress=False)
        VectorScaler(K=5, fitted)
        >>> TemperatureScaler().fit(logits, labels, inputs="probs")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        TypeError: inputs is a TemperatureScaler constructor option, not a fit argument: ...
    """

    #: The calibrator's name in save files, tables and the command line.
    kind: ClassVar[str] = ""
    #: Every calibrator class by kind (filled in as subclasses are defined).
    registry: ClassVar[dict[str, type[Calibrator]]] = {}

    #: Whether ``fit(..., distributed=True)`` can fit this calibrator over a process group.
    fits_distributed: ClassVar[bool] = False

    model: nn.Module | None
    fit_result: Any

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("kind"):
            Calibrator.registry[cls.kind] = cls

    @property
    def is_fitted(self) -> bool:
        """Whether the calibrator has been fitted or loaded."""
        return bool(getattr(self, "_fitted", False))

    def extra_repr(self) -> str:
        """The fitted values (:meth:`_fitted_repr`), then the options that differ from their
        defaults, as ``TemperatureScaler(T=1.8302)`` or ``VectorScaler(K=10, fitted)``."""
        shown = [self._fitted_repr()] if self.is_fitted else []
        defaults = _option_defaults(type(self))
        for name, value in self.options().items():
            if isinstance(value, list):
                value = tuple(value)  # options() holds JSON lists
            if value != defaults[name]:
                shown.append(f"{name}={value!r}")
        return ", ".join(shown)

    def _fitted_repr(self) -> str:
        """What the repr of a fitted calibrator shows first."""
        return "fitted"

    @contextlib.contextmanager
    def _fitting(self: _Self) -> Iterator[_Self]:
        """A draft of this calibrator to fit; its state becomes this calibrator's in one step
        when the ``with`` block ends without an exception.

        A fit that fails part-way, a warning raised as an error (``-W error``) included, leaves
        this calibrator exactly as it was: buffers, fit result and fitted flag. The draft shares
        the wrapped model and the current buffers until it assigns new ones.

        Example:
            >>> import torchcal
            >>> scaler = torchcal.TemperatureScaler()
            >>> try:
            ...     scaler.fit(torch.randn(8, 3), torch.full((8,), 7))
            ... except ValueError:
            ...     pass
            >>> scaler.is_fitted
            False
        """
        draft = copy.copy(self)  # a shallow copy with its own attribute dict
        draft._buffers = dict(self._buffers)  # a buffer assigned on the draft stays there
        yield draft
        self.__dict__.update(draft.__dict__)

    def _logits_and_labels(self, data: Any, labels: Any, progress: bool | None) -> tuple[Any, Any]:
        """``(logits, labels)`` from tensors, or from a loader run through the wrapped model,
        padded with ``ignore_index`` along this calibrator's class layout."""
        return logits_and_labels(
            self.model,
            data,
            labels,
            progress=progress,
            class_dim=getattr(self, "class_dim", None),
            ignore_index=getattr(self, "ignore_index", None),
        )

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError(
                f"this {type(self).__name__} is not fitted yet: call .fit(logits, labels) or "
                ".fit(loader), or load a fitted state with .load_state_dict(...)"
            )

    # ------------------------------------------------------------------------- fit
    @_refuse_constructor_options
    def fit(
        self: _Self,
        data: Tensor | Iterable[Any] | Any,
        labels: Tensor | None = None,
        *,
        progress: bool | None = None,
        distributed: bool = False,
        process_group: Any | None = None,
    ) -> _Self:
        """Fit on ``(logits, labels)`` or on a loader of ``(inputs, labels)`` batches.

        ``data`` is a logits tensor (any shape the calibrator's docstring lists), a numpy array
        (a memory map from ``numpy.load(path, mmap_mode="r")`` is read in row chunks by the
        temperature fits, never whole), a file opened with :func:`torchcal.open_logits`, or a
        loader. Arrays and files hold (N, K) rows with (N,) labels, or (N,) binary logits. With
        a loader the wrapped model runs in eval mode under ``torch.no_grad()`` on its own device,
        and every submodule's mode is restored afterwards.

        :class:`~torchcal.TemperatureScaler` with ``shift_labels=True`` streams a loader instead
        of collecting it: every solver pass runs the model over the loader again and holds one
        batch's logits, so memory does not grow with the validation set's tokens x vocabulary
        (only a few numbers per token), at the price of one model pass per solver pass (about 6;
        ``fit_result.data_passes`` counts them all, the warm start's included). The loader must
        give the same batches each time.

        ``distributed=True`` (temperature scaling) fits one temperature on the data of every
        rank of ``process_group`` (default: the world) of an initialised ``torch.distributed``:
        each rank passes its own shard, the ranks exchange the fit's float64 sums (a few dozen
        numbers per pass) and every rank ends with the same T, the one a single process would
        fit on the concatenated shards, and a :attr:`fit_result` that describes all of them.
        Every rank of the group must call ``fit`` with the same options; if one rank's data is
        invalid, every rank raises. (A ``DistributedSampler`` pads the shards to equal length
        by repeating samples unless ``drop_last=True``.)

        A fit that fails leaves the calibrator as it was (see :meth:`_fitting`).

        Args:
            data: logits (tensor, numpy array, opened file) or a loader of batches.
            labels: the labels of ``data``'s logits; ``None`` when ``data`` is a loader.
            progress: show a tqdm bar while collecting logits (``None``: only on a terminal).
            distributed: fit over the ranks of ``process_group`` (calibrators whose
                :attr:`fits_distributed` is true).
            process_group: the ``torch.distributed`` group of a distributed fit (default: the
                world).

        Returns:
            ``self``, fitted.

        Example:
            >>> import tempfile
            >>> import numpy as np
            >>> from torchcal import TemperatureScaler
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
        reducer = self._reducer(distributed, process_group)
        self._check_can_fit()
        error: Exception | None = None
        prepared: Prepared | None = None
        checked: Any = None
        try:  # everything that can fail on one rank alone happens here, before any exchange
            prepared = self._prepared(data, labels, progress)
            checked = self._validated(prepared, reducer)
        except Exception as caught:
            if not reducer.distributed:
                raise
            error = caught
        if reducer.distributed:
            self._agree(error, prepared, checked, reducer)
        assert prepared is not None
        with self._fitting() as draft, torch.no_grad():
            draft._fit_prepared(prepared, checked)
            draft._fitted = True
        return self

    def _reducer(self, distributed: bool, process_group: Any | None) -> LocalReducer:
        """How the fit's sums are combined: over a process group, or not at all."""
        if process_group is not None and not distributed:
            raise ValueError("process_group is only used with distributed=True")
        if not distributed:
            return LocalReducer()
        if not self.fits_distributed:
            raise ValueError(
                f"{type(self).__name__} cannot fit distributed: distributed=True is for "
                "TemperatureScaler; gather the logits on one process to fit it"
            )
        return ProcessGroupReducer(process_group)

    def _prepared(self, data: Any, labels: Any, progress: bool | None) -> Prepared:
        """The fit's inputs: ``data`` (or a loader's logits) laid out by :func:`prepare`."""
        logits, labels = self._logits_and_labels(data, labels, progress)
        return prepare(
            logits,
            labels,
            activation=getattr(self, "activation", "softmax"),
            class_dim=getattr(self, "class_dim", None),
            ignore_index=getattr(self, "ignore_index", None),
            per_class=getattr(self, "per_class", False),
            inputs=getattr(self, "inputs", "logits"),
        )

    def _record(
        self,
        before: Scores,
        after: Scores,
        *,
        n_samples: int,
        n_parameters: int,
        iterations: int,
        converged: bool,
        **temperature: Any,
    ) -> FitResult:
        """The :class:`FitResult` of a fit (``temperature``: the temperature fit's fields)."""
        return FitResult(
            calibrator=self.kind,
            nll_before=before.nll,
            nll_after=after.nll,
            ece_before=before.ece,
            ece_after=after.ece,
            n_samples=n_samples,
            n_parameters=n_parameters,
            iterations=iterations,
            converged=converged,
            **temperature,
        )

    # ------------------------------------------------------------------------- fit hooks
    def _check_can_fit(self) -> None:
        """Raise before touching the data if this calibrator cannot fit here (a missing
        dependency)."""

    def _validated(self, prepared: Prepared, reducer: LocalReducer) -> Any:
        """The validating pass over ``prepared``: refuses invalid values and measures the
        uncalibrated scores; what it returns goes to :meth:`_fit_prepared`."""
        raise NotImplementedError

    def _agree(
        self, error: Exception | None, prepared: Prepared | None, checked: Any, reducer: Any
    ) -> None:
        """A distributed fit: every rank learns of any rank's error, and the validating passes
        are combined over the ranks (calibrators with :attr:`fits_distributed`)."""
        raise NotImplementedError

    def _fit_prepared(self, prepared: Prepared, checked: Any) -> None:
        """Fit on this draft (see :meth:`_fitting`): set the fitted values and ``fit_result``
        (built by :meth:`_record`)."""
        raise NotImplementedError

    def predict_proba(self, inputs: Any) -> Tensor:
        """Calibrated probabilities of ``model(inputs)`` (or of ``inputs`` without a model).

        Args:
            inputs: the model's inputs, or logits (probabilities with ``inputs="probs"``).
        """
        raise NotImplementedError

    def export(self, output: Output = "logits") -> CalibratedModel:
        """An inference-only module: the wrapped model, then the fitted calibration.

        Args:
            output: ``"logits"`` for calibrated logits, ``"probs"`` for probabilities.
        """
        raise NotImplementedError

    def _scores(self, inputs: Any, activation: str = "softmax") -> Tensor:
        """The logits to calibrate: ``model(inputs)`` (or ``inputs`` without a model), turned
        from probabilities into logits when the calibrator was built with ``inputs="probs"``.

        A mapping of inputs is passed as keyword arguments and the logits are taken from the
        model's output as :mod:`torchcal._inputs.collect` describes (e.g. a ``ModelOutput``)."""
        scores = as_tensor(inputs) if self.model is None else model_logits(self.model, inputs)
        if getattr(self, "inputs", "logits") == "probs":
            check_probabilities_input(scores)
            scores = probabilities_to_logits(scores, activation)
        return scores

    def _export(
        self, head: nn.Module, output: Output, activation: str = "softmax"
    ) -> CalibratedModel:
        """``model -> [probabilities to logits] -> head -> [softmax or sigmoid]``."""
        if getattr(self, "inputs", "logits") == "probs":
            head = nn.Sequential(ProbabilitiesToLogits(activation), head)
        wrapper = KeywordCalibratedModel if takes_keyword_inputs(self.model) else CalibratedModel
        class_dim = getattr(self, "_fitted_class_dim", None)
        class_dim = -1 if class_dim is None else class_dim  # None: sigmoid logits, elementwise
        return wrapper(self.model, head, output, link=activation, class_dim=class_dim)

    # ------------------------------------------------------------------------- state
    #: The fitted buffers a constructor registers empty (a fit or a load gives them values).
    _fitted_names: ClassVar[tuple[str, ...]] = ()
    #: Earlier names of fitted buffers (old name -> current name), as files and state dicts
    #: written by torchcal 0.1.0 hold them; loading maps them to the current names.
    _former_names: ClassVar[dict[str, str]] = {}
    #: Whether loaded values take the dtype of the buffer they replace (else their own).
    _keeps_buffer_dtype: ClassVar[bool] = False

    def _init_fitted_state(self) -> None:
        """Start unfitted: no fit result, the layout of a softmax classifier's (N, K) logits."""
        self.fit_result = None
        self._fitted = False
        self._fitted_activation = "softmax"
        self._fitted_class_dim: int | None = -1

    def options(self) -> dict[str, Any]:
        """The constructor's keyword arguments but ``model``, as this calibrator holds them
        (JSON-serialisable: tuples as lists), saved by :func:`torchcal.save`.

        Read from the constructor's signature, as scikit-learn's ``get_params``: every option
        is kept under its own name, so ``type(c)(**c.options())`` rebuilds the calibrator.

        Example:
            >>> from torchcal import HistogramBinning
            >>> HistogramBinning(bins=10).options()
            {'bins': 10, 'class_dim': None, 'ignore_index': -100, 'inputs': 'logits', 'n_bins': 15}
        """
        options = {}
        for name in _option_defaults(type(self)):
            value = getattr(self, name)
            options[name] = list(value) if isinstance(value, tuple) else value
        return options

    def _own_buffers(self) -> dict[str, Tensor]:
        """The fitted values: this calibrator's own buffers (a wrapped model's are not)."""
        return dict(self.named_buffers(recurse=False))

    def fitted_tensors(self) -> dict[str, Tensor]:
        """The fitted values by buffer name, on the CPU, as saved by :func:`torchcal.save`."""
        self._check_fitted()
        return {name: buffer.detach().cpu().clone() for name, buffer in self._own_buffers().items()}

    def _class_count(self) -> int | None:
        """The class count inputs are checked against (``None``: none)."""
        return None

    def get_extra_state(self) -> dict[str, Any]:
        """The fitted state beside the buffers (format: :mod:`torchcal.calibrators._state`)."""
        return written_state(
            fitted=self._fitted,
            fit_result=self.fit_result,
            activation=self._fitted_activation,
            class_dim=self._fitted_class_dim,
            n_classes=self._class_count(),
        )

    def set_extra_state(self, state: Any) -> None:
        """Take the fitted state of :meth:`get_extra_state` (of any version), checked against
        the buffers this calibrator holds.

        Args:
            state: the extra state, as a state dict holds it.
        """
        self._apply_state(self._check_loaded(self._own_buffers(), state))

    def _apply_state(self, state: FittedState) -> None:
        self._fitted = bool(state.fitted)
        results = state.fit_results
        if results is not None and len(results) == 1 and not getattr(self, "per_class", False):
            self.fit_result = results[0]
        else:
            self.fit_result = results
        self._fitted_activation = state.activation
        self._fitted_class_dim = state.class_dim

    def _with_current_names(self, tensors: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        """``tensors`` with every former buffer name (:attr:`_former_names`) replaced by the
        current one, unless the current one is there too (then the former is left, and
        refused as unknown)."""
        renamed = dict(tensors)
        for former, current in self._former_names.items():
            if prefix + former in renamed and prefix + current not in renamed:
                renamed[prefix + current] = renamed.pop(prefix + former)
        return renamed

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        renamed = self._with_current_names(state_dict, prefix)
        if renamed.keys() != state_dict.keys():  # load_state_dict passes its own copy
            state_dict.clear()
            state_dict.update(renamed)
        stored = {
            name: state_dict[prefix + name]
            for name in self._own_buffers()
            if prefix + name in state_dict
        }
        extra = state_dict.get(prefix + "_extra_state")
        if stored or extra is not None:  # checked before anything changes
            self._check_loaded(stored, extra)
        for name, buffer in self._own_buffers().items():  # resized to the stored values' shape
            value = stored.get(name)
            if isinstance(value, Tensor) and value.shape != buffer.shape:
                setattr(self, name, torch.empty_like(value, device=buffer.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if extra is None:  # no fitted state: fitted as the values say
            self._fitted = self._fitted_without_state(self._own_buffers(), FittedState())

    def _restore(self, tensors: dict[str, Tensor], state: Any) -> None:
        """Become fitted from :meth:`fitted_tensors` and :meth:`get_extra_state` output (of any
        version), as :func:`torchcal.load` reads them; raise ``ValueError`` naming the field
        unless a fit could have produced them.

        Args:
            tensors: the fitted values by name.
            state: the fitted state.
        """
        tensors = self._with_current_names(tensors)
        no_unknown_tensors(tensors, set(self._own_buffers()), self.kind)
        if state is None:
            raise ValueError("fit_result must be a JSON object, got null")
        loaded = self._check_loaded(tensors, state)
        if not loaded.fitted:
            raise ValueError(
                "the saved calibrator was never fitted (fit_result.fitted is false, or its "
                "values are unset)"
            )
        for name, buffer in self._own_buffers().items():
            dtype = buffer.dtype if self._keeps_buffer_dtype else tensors[name].dtype
            setattr(self, name, tensors[name].to(device=buffer.device, dtype=dtype).clone())
        self._apply_state(loaded)

    def _check_loaded(self, tensors: dict[str, Tensor], state: object | None) -> FittedState:
        """Refuse loaded values and state that no fit could have produced; return the state,
        its ``fitted`` decided.

        The one check behind :func:`torchcal.load`, :meth:`load_state_dict` and
        :meth:`set_extra_state`: the state's fields have their types (``None``: a state dict
        without one), and for a fitted state its layout suits this kind
        (:meth:`_check_layout`), every fitted tensor is present, floating and finite, and
        :meth:`_check_fitted_values` (one per kind) accepts their shapes and ranges.

        Args:
            tensors: the fitted values by (current) buffer name.
            state: the extra state, or ``None`` when there is none.
        """
        loaded = FittedState() if state is None else read_state(state, self.kind)
        if loaded.fitted is None:
            loaded = replace(loaded, fitted=self._fitted_without_state(tensors, loaded))
        if not loaded.fitted:
            return loaded
        self._check_layout(loaded)
        for name in self._own_buffers():
            loaded_tensor(tensors, name)
        self._check_fitted_values(tensors, loaded)
        return loaded

    def _fitted_without_state(self, tensors: dict[str, Tensor], state: FittedState) -> bool:
        """Whether values loaded with a state that does not say (an older temperature state,
        or none) are fitted ones."""
        return False

    def _check_layout(self, state: FittedState) -> None:
        """Refuse a fitted state whose layout this kind cannot have produced."""
        results = state.fit_results
        if results is not None and len(results) != 1 and not getattr(self, "per_class", False):
            without = " without per_class" if hasattr(self, "per_class") else ""
            raise ValueError(
                f"fit_result.fit_results holds {len(results)} results; a {self.kind} calibrator"
                f"{without} has one"
            )

    def _check_fitted_values(self, tensors: dict[str, Tensor], state: FittedState) -> None:
        """Raise ``ValueError`` naming the tensor unless ``tensors`` (present, floating and
        finite) have the shapes and ranges a fit with this ``state`` gives (one per kind)."""
        raise NotImplementedError


def fitted_value(name: str, doc: str) -> property:
    """A read-only property giving a copy of the fitted buffer ``name`` (refused before a fit).

    Args:
        name: the buffer, e.g. ``"weight_"``.
        doc: the property's docstring.
    """

    def read(self: Calibrator) -> Tensor:
        self._check_fitted()
        return getattr(self, name).detach().clone()

    return property(read, doc=doc)


class SnapshotHead(nn.Module):
    """The base of the pure-tensor heads: copies of fitted values, held as buffers by name.

    Args:
        values: the fitted tensors by buffer name.

    Example:
        >>> head = SnapshotHead(weight=torch.ones(2))
        >>> [name for name, _ in head.named_buffers()], list(head.parameters())
        (['weight'], [])
    """

    def __init__(self, **values: Tensor) -> None:
        super().__init__()
        for name, value in values.items():
            self.register_buffer(name, value.detach().clone())


def _option_defaults(cls: type[Calibrator]) -> dict[str, Any]:
    """The constructor's options but ``model``, with their defaults, in signature order."""
    return {
        name: parameter.default
        for name, parameter in inspect.signature(cls.__init__).parameters.items()
        if name not in ("self", "model")
        and parameter.kind in (parameter.KEYWORD_ONLY, parameter.POSITIONAL_OR_KEYWORD)
    }


class SoftmaxCalibrator(Calibrator):
    """Base of the calibrators that map a softmax classifier's K scores to K calibrated logits.

    Inputs of every softmax shape are accepted, as for :class:`~torchcal.TemperatureScaler`:
    (N, K) with (N,) labels, dense (N, K, *spatial) maps, token sequences (B, L, V), with labels
    equal to ``ignore_index`` left out. The calibrated logits are log-probabilities (or scores
    whose softmax is the calibrated distribution) with the classes where they were.

    Subclasses register their fitted values as buffers in ``__init__`` (any shape; loading a state
    dict resizes them) and implement :meth:`_fit_rows`, :meth:`_calibrate` and :meth:`head`.

    Args:
        model: the trained classifier; ``None`` to calibrate logits directly.
        class_dim: the class dimension of the logits; ``None`` infers it from the labels' shape.
        ignore_index: label value to leave out (default -100, as in ``F.cross_entropy``).
        inputs: ``"logits"``, or ``"probs"`` when only probabilities are at hand (they are used as
            log-probabilities).
        n_bins: equal-width bins of the ECE reported in :attr:`fit_result`.
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        *,
        class_dim: int | None = None,
        ignore_index: int | None = -100,
        inputs: Inputs = "logits",
        n_bins: int = 15,
    ) -> None:
        super().__init__()
        self.model = check_model(model)
        self.class_dim = class_dim
        self.ignore_index = ignore_index
        self.inputs = check_choice(inputs, "inputs", INPUTS)
        self.n_bins = check_bin_count(n_bins, "n_bins")
        for name in self._fitted_names:
            self.register_buffer(name, torch.empty(0))
        self._init_fitted_state()
        self._n_classes = 0
        self._fit_device: torch.device | None = None

    # ------------------------------------------------------------------------- subclass hooks
    def _fit_rows(
        self, logits: Tensor, labels: Tensor, temperature: SoftmaxTemperatureNLL | None
    ) -> tuple[int, bool] | tuple[int, bool, bool]:
        """Fit on (M, K) validated logits and (M,) labels; return (iterations, converged), or
        (iterations, converged, explained) where ``explained`` says the method has already warned
        why it did not converge.

        ``temperature`` is the temperature-scaling NLL on these rows, its validating pass done,
        for methods that start from a fitted temperature (:attr:`_starts_from_temperature`);
        ``None`` for the others.
        """
        raise NotImplementedError

    def _calibrate(self, logits: Tensor) -> Tensor:
        """Calibrated logits for logits with the classes in the last dimension."""
        raise NotImplementedError

    def head(self) -> nn.Module:
        """A pure-tensor module doing :meth:`_calibrate` with a snapshot of the fitted values."""
        raise NotImplementedError

    #: Whether the fit starts from the temperature fitted on the rows (vector, matrix and
    #: Dirichlet scaling, ensemble temperature scaling): the temperature objective is built for
    #: them only, and its validating pass measures the uncalibrated scores.
    _starts_from_temperature: ClassVar[bool] = True

    #: Whether the method represents rows whose range max - min overflows float32 (such as
    #: +-3e38) exactly in the limit; the others refuse such rows, naming the first.
    _fits_overflowing_rows: ClassVar[bool] = False

    # ------------------------------------------------------------------------- state
    def _fitted_repr(self) -> str:
        return f"K={self._n_classes}, fitted"

    def _class_count(self) -> int | None:
        return self._n_classes

    def _apply_state(self, state: FittedState) -> None:
        super()._apply_state(state)
        self._n_classes = state.n_classes or 0

    def _check_layout(self, state: FittedState) -> None:
        """A softmax calibrator's state: softmax, a class dimension, at least one class."""
        super()._check_layout(state)
        if state.activation != "softmax":
            raise ValueError(f"fit_result.activation must be 'softmax', got {state.activation!r}")
        if state.class_dim is None:
            raise ValueError("fit_result.class_dim must be a negative integer, got None")
        if state.n_classes is None or state.n_classes < 1:
            raise ValueError(f"fit_result.n_classes must be >= 1, got {state.n_classes!r}")

    def _set_buffer(self, name: str, value: Tensor) -> None:
        """Store a fitted value as the float32 buffer ``name``, on the device fitted on."""
        device = self._fit_device or getattr(self, name).device
        setattr(self, name, value.detach().to(device=device, dtype=torch.float32).clone())

    # ------------------------------------------------------------------------- fit
    def _validated(self, prepared: Prepared, reducer: LocalReducer) -> _CheckedRows:
        """The rows in memory, validated, with the uncalibrated scores: from the temperature
        objective's validating pass for methods that start from a fitted temperature, else
        from the rows directly (with the same checks and messages)."""
        logits, labels = prepared.rows()
        if self._starts_from_temperature:
            # One validating pass (NaN/inf, probabilities given as logits) that also yields the
            # uncalibrated NLL and reliability bins; the fit then starts from its temperature.
            objective = SoftmaxTemperatureNLL(logits, labels, n_bins=self.n_bins)
            self._refuse_overflowing_rows(objective)
            warn_if_one_class(objective.n_samples, objective.label_range)
            before = streamed_scores(objective, objective.initial)
            return _CheckedRows(logits, labels.long(), before, objective)
        labels = check_softmax_rows(logits, labels)
        warn_if_one_class(labels.numel(), (int(labels.min()), int(labels.max())))
        probs = torch.softmax(in_compute_dtype(logits), dim=-1)
        return _CheckedRows(logits, labels, scores_of(probs, labels, self.n_bins), None)

    def _fit_prepared(self, prepared: Prepared, checked: _CheckedRows) -> None:
        self._fit_device = checked.logits.device  # fitted values live where the logits are
        # (iterations, converged[, explained]): explained says the method has already warned
        # why it stopped short, so the generic warning below would repeat it.
        iterations, converged, *explained = self._fit_rows(
            checked.logits, checked.labels, checked.temperature
        )
        assert prepared.class_dim is not None  # softmax rows always have a class dimension
        self._fitted_class_dim = prepared.class_dim
        self._n_classes = checked.logits.shape[1]
        probs = torch.softmax(self._calibrate(checked.logits), dim=-1)
        self.fit_result = self._record(
            checked.before,
            scores_of(probs, checked.labels, self.n_bins),
            n_samples=checked.logits.shape[0],
            n_parameters=sum(t.numel() for t in self._own_buffers().values()),
            iterations=iterations,
            converged=converged,
        )
        if not converged and not any(explained):
            warn(
                f"the {self.kind} fit stopped after {iterations} iterations without "
                "converging; its parameters may be inexact",
            )

    def _refuse_overflowing_rows(self, objective: SoftmaxTemperatureNLL) -> None:
        row = objective.first_wide_row
        if row is not None and not self._fits_overflowing_rows:
            raise ValueError(
                f"logits row {row} (of the rows fitted on) spans from "
                f"{float(objective.row_max[row]):.4g} by more than float32's range "
                f"{torch.finfo(torch.float32).max:.4g}: {type(self).__name__} cannot represent "
                "such a row; check the model's outputs, or use TemperatureScaler, which fits "
                "them exactly"
            )

    # ------------------------------------------------------------------------- use
    def forward(self, inputs: Any) -> Tensor:
        """Calibrated logits of ``model(inputs)`` (or of ``inputs`` without a model).

        Args:
            inputs: the model's inputs, or logits (probabilities with ``inputs="probs"``) with
                the classes in the dimension fitted on.
        """
        self._check_fitted()
        logits = self._scores(inputs)
        class_dim = self._fitted_class_dim
        if logits.ndim < -class_dim or logits.shape[class_dim] != self._n_classes:
            raise ValueError(
                f"this {type(self).__name__} was fitted on {self._n_classes} classes in dim "
                f"{class_dim}, but got logits of shape {tuple(logits.shape)}"
            )
        return self._calibrate(logits.movedim(class_dim, -1)).movedim(-1, class_dim)

    def predict_proba(self, inputs: Any) -> Tensor:
        """Calibrated probabilities: the softmax of :meth:`forward` over the class dimension.

        Args:
            inputs: as for :meth:`forward`.
        """
        return torch.softmax(self(inputs), dim=self._fitted_class_dim)

    def export(self, output: Output = "logits") -> CalibratedModel:
        """An inference-only module: the wrapped model, then :meth:`head` (a snapshot).

        It works with ``torch.jit.script``, ``torch.export.export`` and ``torch.onnx.export``.

        Args:
            output: ``"logits"`` gives calibrated logits, ``"probs"`` their softmax over the
                class dimension the calibrator was fitted with (segmentation maps and token
                logits included).
        """
        self._check_fitted()
        return self._export(self.head(), output)
