"""Vector, matrix and Dirichlet scaling: an affine map of the logits or log-probabilities.

All three calibrate with ``softmax(x W^T + b)`` and are fitted exactly, in float64, by minimising
the mean negative log-likelihood plus the ODIR penalty of Kull et al. (2019), "Beyond temperature
scaling: Obtaining well-calibrated multi-class probabilities with Dirichlet calibration"
(NeurIPS)::

    mean NLL + reg_lambda / (K (K - 1)) * sum_{i != j} W_ij^2 + reg_mu / K * sum_j b_j^2

(the mean, not the sum, of the NLL, as in the paper and its reference implementation).

* :class:`VectorScaler` (Guo et al. 2017): ``x = z``, one scale and one bias per class,
  ``z * w + b``; no penalty.
* :class:`MatrixScaler`: ``x = z``, a full (K, K) matrix and a bias, with ODIR.
* :class:`DirichletCalibrator`: ``x = log_softmax(z)``, a full matrix and a bias, with ODIR
  (``diagonal=True``: one scale per class, the bias penalty only).

The objective is convex; it is minimised by Newton's method (``torchcal._optim.newton``), with the
exact Hessian when that is cheap (up to about 1,200 parameters: K <= 34 for a full matrix) and
with conjugate gradients on Hessian-vector products otherwise (Newton-CG), until every partial
derivative (on standardised inputs) is below ``tol`` (see
``torchcal._objectives.affine``). Every fit starts
from the fitted temperature, ``W = I / T``, ``b = 0`` (or from the uniform map if that is
better). Separable data, on which the likelihood keeps improving as the scales grow, are
recognised while the solver runs: it stops early with a
:class:`~torchcal.errors.CalibrationWarning`, keeping finite parameters.

Softmax ignores a constant added to every score, so the bias is determined only up to a common
shift and a full matrix only up to adding one vector to every row. The fitted values are the
representative whose bias sums to zero and whose columns' off-diagonal entries sum to zero: that
is where the penalised optimum lies anyway (with positive penalties it is unique), and the limit
of it as the penalties go to 0.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor, nn

from torchcal._inputs.validation import check_positive_finite, check_positive_int
from torchcal._objectives.affine import AffineObjective
from torchcal._objectives.temperature import SoftmaxTemperatureNLL
from torchcal._optim.affine import fit_affine
from torchcal._optim.temperature import solve_temperature
from torchcal.calibrators._loaded import loaded_tensor
from torchcal.calibrators._state import FittedState
from torchcal.calibrators.base import Inputs, SnapshotHead, SoftmaxCalibrator, fitted_value
from torchcal.errors import warn
from torchcal.export import in_compute_dtype

__all__ = ["DirichletCalibrator", "MatrixScaler", "VectorScaler"]

#: The largest K a full (K, K) matrix is fitted for: beyond it the K^2 parameters, their Newton
#: history and the O(M K^2) passes are out of proportion to what a calibration set can support.
MAX_MATRIX_CLASSES = 1024
#: A fit whose largest weight exceeds this multiple of 1/T (the fitted temperature's) is reported
#: as running towards infinity.
DIVERGENCE_FACTOR = 100.0
#: Without explicit ``reg_lambda``/``reg_mu``, each off-diagonal weight and bias is penalised by
#: this much on the *summed* NLL: ``reg_lambda = 100 K (K - 1) / M``, ``reg_mu = 100 K / M``.
DEFAULT_PENALTY = 100.0
#: Newton steps on 1/T spent on the start of every affine fit at most.
START_ITERATIONS = 10


def affine_calibration(logits: Tensor, weight: Tensor, bias: Tensor, log_probs: bool) -> Tensor:
    """``x W^T + b`` (or ``x * w + b`` for a (K,) weight) along the last dimension.

    ``x`` is ``logits`` or, with ``log_probs``, ``log_softmax(logits)``, computed in float64 for
    float64 logits and in float32 otherwise; the weight and bias are cast to that dtype.

    Example:
        >>> logits = torch.tensor([[1.0, 2.0, 3.0]])
        >>> affine_calibration(logits, torch.tensor([2.0, 1.0, 0.5]), torch.zeros(3), False)
        tensor([[2.0000, 2.0000, 1.5000]])
    """
    x = in_compute_dtype(logits)
    if log_probs:
        x = torch.log_softmax(x, dim=-1)
    weight = weight.to(x.dtype)
    bias = bias.to(x.dtype)
    if weight.dim() == 1:
        return x * weight + bias
    return torch.matmul(x, weight.t()) + bias


class AffineCalibrationHead(SnapshotHead):
    """Pure-tensor head: :func:`affine_calibration` with a snapshot of a fitted weight and bias.

    Args:
        weight: (K,) scales or a (K, K) matrix.
        bias: the (K,) bias.
        log_probs: apply the map to ``log_softmax(z)`` (Dirichlet) rather than to ``z``.

    Example:
        >>> head = AffineCalibrationHead(torch.eye(2) * 2, torch.tensor([0.5, -0.5]), False)
        >>> head(torch.tensor([[1.0, 0.0]]))
        tensor([[ 2.5000, -0.5000]])
        >>> [name for name, _ in head.named_buffers()], list(head.parameters())
        (['weight', 'bias'], [])
    """

    def __init__(self, weight: Tensor, bias: Tensor, log_probs: bool) -> None:
        super().__init__(weight=weight, bias=bias)
        self.log_probs = bool(log_probs)

    def forward(self, logits: Tensor) -> Tensor:
        return affine_calibration(logits, self.weight, self.bias, self.log_probs)


class _AffineCalibrator(SoftmaxCalibrator):
    """An affine map of transformed scores, fitted by Newton's method on mean NLL + ODIR.

    Subclasses set :attr:`_log_probs` (the map acts on ``log_softmax(z)`` rather than ``z``) and
    pass their penalties and whether the weight is diagonal to this constructor. The fitted
    values are the buffers ``weight_`` and ``bias_``, read as :attr:`weight` and :attr:`bias`.
    """

    _log_probs: ClassVar[bool] = False
    _remedy: ClassVar[str] = ", raise reg_lambda and reg_mu,"
    #: A 0.1.0 file's and state dict's names of the fitted values.
    _former_names: ClassVar[dict[str, str]] = {"weight": "weight_", "bias": "bias_"}
    _fitted_names = ("weight_", "bias_")

    weight_: Tensor
    bias_: Tensor

    def __init__(
        self,
        model: nn.Module | None = None,
        *,
        reg_lambda: float | None = None,
        reg_mu: float | None = None,
        diagonal: bool = False,
        tol: float = 1e-8,
        max_iter: int = 1000,
        class_dim: int | None = None,
        ignore_index: int | None = -100,
        inputs: Inputs = "logits",
        n_bins: int = 15,
    ) -> None:
        """The options of every affine calibrator (those of :class:`DirichletCalibrator`, which
        takes them all).

        Args:
            model: the trained classifier; ``None`` to calibrate logits directly.
            diagonal: fit a (K,) scale instead of a (K, K) matrix.
            reg_lambda: the penalty on the off-diagonal weights (``None``: the default).
            reg_mu: the penalty on the bias (``None``: the default).
            tol: the stopping tolerance on the partial derivatives.
            max_iter: iteration limit (Newton iterations).
            class_dim, ignore_index, inputs, n_bins: as for :class:`SoftmaxCalibrator`.
        """
        super().__init__(
            model, class_dim=class_dim, ignore_index=ignore_index, inputs=inputs, n_bins=n_bins
        )
        self.diagonal = bool(diagonal)
        self.reg_lambda = _check_penalty(reg_lambda, "reg_lambda")
        self.reg_mu = _check_penalty(reg_mu, "reg_mu")
        #: The lambda and mu of the last fit (the defaults depend on the data); not saved.
        self.reg_lambda_: float | None = None
        self.reg_mu_: float | None = None
        self.tol = check_positive_finite(tol, "tol")
        self.max_iter = check_positive_int(max_iter, "max_iter")

    weight = fitted_value("weight_", "The fitted weight (a copy): (K,) scales, or a (K, K) matrix.")
    bias = fitted_value("bias_", "The fitted (K,) bias (a copy), summing to zero.")

    def _penalties(self, n_samples: int, n_classes: int) -> tuple[float, float]:
        """Set ``reg_lambda_``, ``reg_mu_``; return the coefficients of sum_{i != j} W_ij^2 and
        sum_j b_j^2 added to the mean NLL."""
        k = n_classes
        default = DEFAULT_PENALTY / n_samples
        self.reg_lambda_ = default * k * (k - 1) if self.reg_lambda is None else self.reg_lambda
        self.reg_mu_ = default * k if self.reg_mu is None else self.reg_mu
        return self.reg_lambda_ / (k * (k - 1)), self.reg_mu_ / k

    def _fit_rows(
        self, logits: Tensor, labels: Tensor, temperature: SoftmaxTemperatureNLL | None
    ) -> tuple[int, bool, bool]:
        assert temperature is not None  # affine fits start from the fitted temperature
        n_samples, n_classes = logits.shape
        if not self.diagonal and n_classes > MAX_MATRIX_CLASSES:
            raise ValueError(
                f"{type(self).__name__} fits a full {n_classes} x {n_classes} matrix, more than "
                f"the {MAX_MATRIX_CLASSES} classes it supports ({n_classes**2:,} parameters); "
                "use VectorScaler, DirichletCalibrator(diagonal=True) or TemperatureScaler"
            )
        off_diagonal_penalty, bias_penalty = self._penalties(n_samples, n_classes)
        affine = AffineObjective(
            logits,
            labels,
            log_probs=self._log_probs,
            diagonal=self.diagonal,
            off_diagonal_penalty=off_diagonal_penalty,
            bias_penalty=bias_penalty,
        )
        if affine.n_parameters > n_samples:
            warn(
                f"{type(self).__name__} has {affine.n_parameters} parameters but only "
                f"{n_samples} samples to fit them on: expect it to overfit; calibrate on more "
                "data, raise the penalties, or use a smaller map (VectorScaler, TemperatureScaler)",
            )
        beta = _temperature_start(temperature)
        eye = torch.ones(n_classes) if self.diagonal else torch.eye(n_classes)
        result = fit_affine(
            affine,
            eye.double() * beta,
            torch.zeros(n_classes, dtype=torch.float64),
            tol=self.tol,
            max_iter=self.max_iter,
        )
        self._set_buffer("weight_", result.weight)
        self._set_buffer("bias_", result.bias)
        largest = float(result.weight.abs().max())
        explained = True
        if result.unbounded or largest > DIVERGENCE_FACTOR * beta:
            separated = result.separated_classes
            if separated:
                shown = ", ".join(str(i) for i in separated[:10])
                more = f" and {len(separated) - 10} more" if len(separated) > 10 else ""
                why = (
                    f"the classes are separable: {len(separated)} of the {n_classes} "
                    f"({shown}{more}) are each separated from the others by their own score "
                    "(every sample of the class "
                    "above every other sample): scaling it up narrows no sample's margin and "
                    "widens some, so their scales run off to infinity"
                )
            elif result.unbounded:
                why = (
                    "the classes are separable: scaling up its unpenalised parameters narrows no "
                    "sample's margin and widens some, so the scales run off to infinity"
                )
            else:
                why = (
                    f"its weights reached {largest:.3g}, over {DIVERGENCE_FACTOR:g} times "
                    f"1/T = {beta:.3g}"
                )
            stopped = " (stopped early)" if result.reason == "recession" else ""
            warn(
                f"the {self.kind} fit ran towards infinity{stopped}: {why}. On these samples the "
                "likelihood keeps improving as the map's scale grows (some classes are "
                "separated perfectly), so the parameters are where the solver stopped and will "
                "be overconfident on new data. Calibrate on more data (misclassified samples "
                f"included){self._remedy} or use TemperatureScaler",
            )
        elif result.reason == "no progress":
            warn(
                f"the {self.kind} fit made no progress after {result.iterations} iterations: the "
                "objective stopped decreasing (within float64 rounding) before every partial "
                f"derivative reached tol = {self.tol:g}; the parameters are the best found. "
                "Inputs of extreme magnitude or nearly collinear classes cause this; rescale the "
                "logits or use TemperatureScaler",
            )
        else:
            explained = False
        return result.iterations, result.converged, explained

    def _calibrate(self, logits: Tensor) -> Tensor:
        return affine_calibration(logits, self.weight_, self.bias_, self._log_probs)

    def _check_fitted_values(self, tensors: dict[str, Tensor], state: FittedState) -> None:
        """weight: (K,) or (K, K); bias: (K,), for the K classes of ``state``."""
        k = state.n_classes
        loaded_tensor(tensors, "weight_", shape=(k,) if self.diagonal else (k, k))
        loaded_tensor(tensors, "bias_", shape=(k,))

    def head(self) -> nn.Module:
        """An :class:`AffineCalibrationHead` with copies of the fitted weight and bias."""
        self._check_fitted()
        return AffineCalibrationHead(self.weight_, self.bias_, self._log_probs)


def _check_penalty(value: object, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number or None, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be finite and >= 0 (0 turns the penalty off), got {value}")
    return value


def _temperature_start(objective: SoftmaxTemperatureNLL) -> float:
    """1/T of the temperature fitted on ``objective``, the start of every affine fit (1 if T hit
    a bound).

    ``softmax(log_softmax(z) / T) = softmax(z / T)``, so it is also the Dirichlet map's best
    multiple of the identity. It is only a start: a few Newton steps on beta suffice on any
    data with a finite optimum, and where the steps keep going (separable data) the affine
    solver takes over from wherever they stopped.
    """
    solution = solve_temperature(
        objective,
        method="newton",
        temperature_bounds=(1e-2, 1e2),
        rtol=1e-4,
        max_iter=START_ITERATIONS,
    )
    return 1.0 if solution.bound is not None else 1.0 / solution.temperature


class VectorScaler(_AffineCalibrator):
    """Vector scaling (Guo et al. 2017): calibrated logits ``z * w + b``, one scale and one bias
    per class, fitting the mean NLL on held-out data exactly (no penalty).

    It can change the predicted class, unlike temperature scaling. With few validation samples
    it overfits easily: when some class is separated perfectly its scale runs towards infinity,
    which is reported with a :class:`~torchcal.errors.CalibrationWarning`. Every softmax shape
    is accepted (see :class:`~torchcal.calibrators.base.SoftmaxCalibrator`); the fitted values are
    :attr:`weight` (K,) and :attr:`bias` (K,), the bias summing to zero.

    Args:
        model: the trained classifier; ``None`` to calibrate logits directly.
        tol: the fit stops when every partial derivative of the objective, with respect to the
            parameters acting on standardised inputs, is at most ``tol``.
        max_iter: iteration limit (Newton iterations).
        class_dim, ignore_index, inputs, n_bins: as for
            :class:`~torchcal.calibrators.base.SoftmaxCalibrator`.

    Memory: beyond the logits, a float64 copy of the (M, K) rows when M * K <= 2^25 (else the rows
    are converted chunk by chunk on every pass) and temporaries of a few chunks of rows.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits = torch.randn(2000, 3) * 3
        >>> truth = logits * torch.tensor([0.5, 1.0, 2.0]) + torch.tensor([0.0, 1.0, -1.0])
        >>> labels = torch.distributions.Categorical(logits=truth).sample()
        >>> scaler = VectorScaler().fit(logits, labels, progress=False)
        >>> scaler.weight.round(decimals=1), scaler.fit_result.converged
        (tensor([0.5000, 1.0000, 1.9000]), True)
        >>> scaler.predict_proba(logits[:2]).sum(dim=1)
        tensor([1., 1.])
    """

    kind = "vector"
    _remedy = ","

    def __init__(
        self,
        model: nn.Module | None = None,
        *,
        tol: float = 1e-8,
        max_iter: int = 1000,
        class_dim: int | None = None,
        ignore_index: int | None = -100,
        inputs: Inputs = "logits",
        n_bins: int = 15,
    ) -> None:
        super().__init__(
            model,
            diagonal=True,
            reg_lambda=0.0,
            reg_mu=0.0,
            tol=tol,
            max_iter=max_iter,
            class_dim=class_dim,
            ignore_index=ignore_index,
            inputs=inputs,
            n_bins=n_bins,
        )


class MatrixScaler(_AffineCalibrator):
    """Matrix scaling with ODIR (Kull et al. 2019): calibrated logits ``z W^T + b``, fitted by
    minimising, exactly, ``mean NLL + reg_lambda / (K (K - 1)) * sum_{i != j} W_ij^2
    + reg_mu / K * sum_j b_j^2``.

    Defaults. The paper selects lambda and mu by cross-validation over a grid. A fixed value
    cannot serve all K: normalised by K (K - 1), ``reg_lambda = 1`` is a 100 times weaker pull per
    weight at K = 100 than at K = 10. ``None`` (the default) therefore picks
    ``reg_lambda = 100 K (K - 1) / M`` and ``reg_mu = 100 K / M`` for M fitted samples: a penalty
    of 100 per squared off-diagonal weight and bias on the *summed* NLL, i.e. a fixed Gaussian
    prior (standard deviation 0.07) towards a diagonal map with no bias, whose pull fades as data
    grow. On held-out data this was within 0.005 of the best test NLL of a grid (100 times weaker
    to 10 times stronger) for K = 10 with 500 and 5,000 samples and close to it on scikit-learn's
    digits (359 samples), where no penalty overfits badly (test NLL 0.67 against 0.099). Pass
    numbers to set lambda and mu (0 turns a penalty off); :attr:`reg_lambda_` and
    :attr:`reg_mu_` hold the values of the last fit (they are not saved).

    It can change the predicted class. More than :data:`MAX_MATRIX_CLASSES` classes is an error
    (use :class:`VectorScaler`), more parameters than samples a warning. The fitted values are
    :attr:`weight` (K, K) and :attr:`bias` (K,).

    Args:
        model: the trained classifier; ``None`` to calibrate logits directly.
        reg_lambda: the paper's lambda, on the off-diagonal weights (>= 0; ``None``: see above).
        reg_mu: the paper's mu, on the bias (>= 0; ``None``: see above).
        tol: the fit stops when every partial derivative of the objective, with respect to the
            parameters acting on standardised inputs, is at most ``tol``.
        max_iter: iteration limit (Newton iterations).
        class_dim, ignore_index, inputs, n_bins: as for
            :class:`~torchcal.calibrators.base.SoftmaxCalibrator`.

    Memory: beyond the logits, a float64 copy of the (M, K) rows when M * K <= 2^25 (else the rows
    are converted chunk by chunk on every pass), temporaries of a few chunks of rows, and either
    the Hessian (at most 1,200^2 values) or, for larger maps, a float32 copy of the standardised
    rows and their probabilities, a few copies of the K (K + 1) parameters and the Hessian's
    per-class blocks (at most 2^24 values).

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits = torch.randn(3000, 3) * 3
        >>> mixing = torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, -0.5, 0.5]])
        >>> labels = torch.distributions.Categorical(logits=logits @ mixing.T).sample()
        >>> unpenalised = MatrixScaler(reg_lambda=0, reg_mu=0).fit(logits, labels)
        >>> torch.allclose(unpenalised.weight, mixing, atol=0.1)
        True
        >>> default = MatrixScaler().fit(logits, labels)  # shrinks off-diagonal weights a little
        >>> bool(0 < default.weight[0, 1] < unpenalised.weight[0, 1])
        True
    """

    kind = "matrix"

    def __init__(
        self,
        model: nn.Module | None = None,
        *,
        reg_lambda: float | None = None,
        reg_mu: float | None = None,
        tol: float = 1e-8,
        max_iter: int = 1000,
        class_dim: int | None = None,
        ignore_index: int | None = -100,
        inputs: Inputs = "logits",
        n_bins: int = 15,
    ) -> None:
        super().__init__(
            model,
            diagonal=False,
            reg_lambda=reg_lambda,
            reg_mu=reg_mu,
            tol=tol,
            max_iter=max_iter,
            class_dim=class_dim,
            ignore_index=ignore_index,
            inputs=inputs,
            n_bins=n_bins,
        )


class DirichletCalibrator(_AffineCalibrator):
    """Dirichlet calibration with ODIR (Kull et al. 2019): ``log_softmax(z) W^T + b``.

    The map, objective and defaults of :class:`MatrixScaler`, applied to the log-probabilities.
    It depends on the logits only through the probabilities, so adding a constant to a row of
    logits changes nothing (and ``inputs="probs"`` fits the same map). ``diagonal=True`` fits one
    scale per class (the paper's diagonal variant: no off-diagonal penalty, the bias penalty
    stays).

    Args:
        model: the trained classifier; ``None`` to calibrate logits directly.
        reg_lambda: the paper's lambda, on the off-diagonal weights (>= 0; ``None``: the default
            of :class:`MatrixScaler`).
        reg_mu: the paper's mu, on the bias (>= 0; ``None``: the default of
            :class:`MatrixScaler`).
        diagonal: fit a (K,) scale instead of a (K, K) matrix.
        tol: the fit stops when every partial derivative of the objective, with respect to the
            parameters acting on standardised inputs, is at most ``tol``.
        max_iter: iteration limit (Newton iterations).
        class_dim, ignore_index, inputs, n_bins: as for
            :class:`~torchcal.calibrators.base.SoftmaxCalibrator`.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits = torch.randn(3000, 4) * 3
        >>> labels = torch.distributions.Categorical(logits=logits / 2).sample()
        >>> calibrator = DirichletCalibrator().fit(logits, labels, progress=False)
        >>> shifted = logits[:3] + torch.tensor([[1.0], [-5.0], [20.0]])
        >>> torch.allclose(calibrator.predict_proba(shifted), calibrator.predict_proba(logits[:3]))
        True
    """

    kind = "dirichlet"
    _log_probs = True
