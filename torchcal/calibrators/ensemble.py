"""Ensemble temperature scaling (Zhang, Kailkhura & Han 2020, "Mix-n-Match", ICML).

The calibrated distribution is a convex combination of three softmax outputs,

    p = w1 * softmax(z / T) + w2 * softmax(z) + w3 * (1 / K),    w >= 0, w1 + w2 + w3 = 1,

the temperature-scaled, the uncalibrated and the uniform distribution. T is fitted first, by
torchcal's exact temperature scaling (the NLL optimum, as :class:`~torchcal.TemperatureScaler`
finds it), then the weights with T held fixed. (The authors' reference code fits T by the same
mean squared error as the weights; torchcal keeps the standard NLL temperature, so that the
first component is exactly the temperature-scaled model.) Every component ranks the classes as
the logits do, so the predicted class never changes.

The weights minimise, over the simplex, either

* ``loss="mse"`` (default, as in the authors' reference implementation): the Brier score
  ``mean_i sum_k (p_ik - 1[y_i = k])^2``, a convex quadratic in w (their code averages over
  classes too, which divides it by K and has the same minimiser); or
* ``loss="nll"``: the mean negative log-likelihood ``-mean_i log p_i,y_i``, convex in w.

Both are solved exactly in float64 by Newton's method on the simplex: each step minimises the
local quadratic model over the triangle in closed form (the best of its seven faces: three
vertices, three edges and the interior), followed by a backtracking line search. For the Brier
score the model is exact and one step lands on the optimum. The fit stops when the Frank-Wolfe
gap ``g.w - min_j g_j`` (an upper bound on the distance to the optimal objective value, zero
exactly at a KKT point) is below :data:`WEIGHT_GAP_TOL`.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import numpy as np
import torch
from torch import Tensor, nn

from torchcal._inputs.chunks import RowChunks
from torchcal._inputs.validation import (
    check_choice,
    check_positive_finite,
    check_positive_int,
    check_temperature_bounds,
)
from torchcal._objectives.temperature import SoftmaxTemperatureNLL
from torchcal._optim.newton import Curvature, minimise
from torchcal._optim.simplex import SIMPLEX
from torchcal._optim.temperature import fit_temperature
from torchcal.calibrators._loaded import check_simplex, loaded_tensor
from torchcal.calibrators._state import FittedState
from torchcal.calibrators.base import Inputs, SnapshotHead, SoftmaxCalibrator
from torchcal.errors import warn
from torchcal.export import in_compute_dtype

__all__ = ["EnsembleTemperatureScaler"]

#: The objectives of the weights: the Brier score or the negative log-likelihood.
Loss = Literal["mse", "nll"]
#: Frank-Wolfe gap (objective units) at which the weight fit counts as converged.
WEIGHT_GAP_TOL = 1e-12


def ensemble_temperature_calibrate(logits: Tensor, temperature: Tensor, weights: Tensor) -> Tensor:
    """``log(w1 softmax(z/T) + w2 softmax(z) + w3/K)`` over the last dimension of ``logits``.

    Computed as a log-sum-exp of the three weighted log-probabilities, so it stays finite (and
    accurate) where the probabilities underflow; a zero weight drops its component. The logits
    are shifted by their row maximum before the division by T, so a row whose range overflows
    float32 gets the limit of the map rather than NaN.
    """
    z = in_compute_dtype(logits)
    z = z - z.amax(dim=-1, keepdim=True)
    log_weights = weights.to(z.dtype).log()
    scaled = torch.log_softmax(z / temperature.to(z.dtype), dim=-1) + log_weights[0]
    plain = torch.log_softmax(z, dim=-1) + log_weights[1]
    uniform = torch.zeros_like(z) + (log_weights[2] - math.log(z.shape[-1]))
    top = torch.maximum(torch.maximum(scaled, plain), uniform)  # finite: the weights sum to 1
    total = (scaled - top).exp() + (plain - top).exp() + (uniform - top).exp()
    return top + total.log()


class EnsembleTemperatureHead(SnapshotHead):
    """Ensemble temperature scaling with a fixed T and weights, held as buffers (a snapshot).

    Args:
        temperature: the () temperature of the first component.
        weights: the (3,) weights on the simplex.
    """

    def __init__(self, temperature: Tensor, weights: Tensor) -> None:
        super().__init__(temperature=temperature, weights=weights)

    def forward(self, logits: Tensor) -> Tensor:
        return ensemble_temperature_calibrate(logits, self.temperature, self.weights)


# ----------------------------------------------------------------------------- the weight fit
class _WeightObjective:
    """The weight objective of one loss, from the three components' statistics (float64)."""

    def __init__(self, logits: Tensor, labels: Tensor, beta: float, loss: str) -> None:
        self.loss = loss
        n_rows, n_classes = logits.shape
        sums = torch.zeros(5, dtype=torch.float64, device=logits.device)
        label_columns = []
        for start, stop in RowChunks.fitting(n_rows, row_width=n_classes, device=logits.device):
            z = logits[start:stop].double()
            y = labels[start:stop, None].to(z.device)
            scaled, plain = torch.softmax(z * beta, dim=1), torch.softmax(z, dim=1)
            if loss == "mse":  # sums over rows and classes of a^2, a b, b^2, a, b
                sums += torch.stack(
                    [
                        scaled.square().sum(),
                        (scaled * plain).sum(),
                        plain.square().sum(),
                        scaled.sum(),
                        plain.sum(),
                    ]
                )
            label_columns.append(torch.cat([scaled.gather(1, y), plain.gather(1, y)], dim=1))
        # each component's probability of the label, (N, 3): softmax(z/T), softmax(z), 1/K
        at_label = torch.cat(label_columns)
        self.at_label = torch.cat([at_label, torch.full_like(at_label[:, :1], 1.0 / n_classes)], 1)
        aa, ab, bb, a, b = (sums / n_rows).tolist()
        u = 1.0 / n_classes
        # mean_i sum_k v_ik v_ik^T with v_ik = (a_ik, b_ik, 1/K): the Brier score's Hessian / 2
        self.gram = torch.tensor(
            [[aa, ab, a * u], [ab, bb, b * u], [a * u, b * u, u]], dtype=torch.float64
        )
        self.label_mean = self.at_label.mean(dim=0).cpu()

    def value_and_gradient(self, weights: Tensor) -> tuple[float, Tensor]:
        """The objective and its gradient (3,) at ``weights``."""
        if self.loss == "mse":
            gram_w = self.gram @ weights
            return float(weights @ gram_w - 2 * self.label_mean @ weights + 1.0), 2 * (
                gram_w - self.label_mean
            )
        mixed = self.at_label @ weights.to(self.at_label.device)
        value = float(-mixed.log().mean())
        return value, -(self.at_label / mixed[:, None]).mean(dim=0).to(weights.device)

    def curvature(self, weights: Tensor) -> Curvature:
        """The Hessian (3, 3) at ``weights``."""
        if self.loss == "mse":
            return Curvature(matrix=2 * self.gram)
        mixed = self.at_label @ weights.to(self.at_label.device)
        scaled = self.at_label / mixed[:, None]
        return Curvature(matrix=(scaled.T @ scaled / scaled.shape[0]).to(weights.device))

    def recedes(self, direction: Tensor) -> bool:
        """Never: the simplex is bounded."""
        return False


def fit_weights(
    logits: Tensor, labels: Tensor, temperature: float, loss: str, max_iter: int
) -> tuple[np.ndarray, int, bool]:
    """The simplex weights minimising ``loss`` for a fixed T: (weights, iterations, converged).

    Newton's method on the simplex (:mod:`torchcal._optim.simplex`), from the centre of the
    simplex, where every row's mixture probability is at least 1 / (3 K) so the NLL is finite,
    until the Frank-Wolfe gap is at most :data:`WEIGHT_GAP_TOL`.

    Args:
        logits: (N, K) logits.
        labels: (N,) class indices.
        temperature: the fixed T of the first component.
        loss: ``"mse"`` (Brier score) or ``"nll"``.
        max_iter: Newton iterations at most.
    """
    objective = _WeightObjective(logits, labels, 1.0 / temperature, loss)
    start = torch.full((3,), 1.0 / 3.0, dtype=torch.float64)
    result = minimise(objective, start, tol=WEIGHT_GAP_TOL, max_iter=max_iter, constraint=SIMPLEX)
    return result.theta.numpy(), result.iterations, result.converged


# ----------------------------------------------------------------------------- the calibrator
class EnsembleTemperatureScaler(SoftmaxCalibrator):
    """Ensemble temperature scaling: mix temperature-scaled, raw and uniform probabilities.

    ``p = w1 softmax(z / T) + w2 softmax(z) + w3 / K`` with ``w`` on the simplex (Zhang et al.,
    2020). T is the exact NLL temperature of :class:`~torchcal.TemperatureScaler` (same solver,
    same defaults, so the same T); the weights then minimise the Brier score (``loss="mse"``,
    the authors' reference implementation) or the NLL (``loss="nll"``) exactly, in float64. The
    calibrated logits are ``log p``. The predicted class never changes. See the module docstring.

    Args:
        model: the trained classifier; ``None`` to calibrate logits directly.
        loss: ``"mse"`` (Brier score) or ``"nll"``: the objective of the weights.
        temperature_bounds: the range T is kept in; an optimum beyond it ends at the bound with a
            :class:`~torchcal.errors.CalibrationWarning`.
        tol: relative accuracy of T (the weights are solved to float64 precision).
        max_iter: iteration limit of the temperature solver and of the weight solver.
        class_dim, ignore_index, inputs, n_bins: as for
            :class:`~torchcal.calibrators.base.SoftmaxCalibrator`.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits = torch.randn(2000, 5) * 4
        >>> labels = torch.distributions.Categorical(logits=logits / 3).sample()
        >>> ets = EnsembleTemperatureScaler().fit(logits, labels, progress=False)
        >>> round(float(ets.weights_.sum()), 6), bool((ets.weights_ >= 0).all())
        (1.0, True)
        >>> torch.equal(ets(logits).argmax(dim=1), logits.argmax(dim=1))
        True
    """

    kind = "ensemble_temperature"
    _fitted_names = ("temperature_", "weights_")
    _fits_overflowing_rows = True

    def __init__(
        self,
        model: nn.Module | None = None,
        *,
        loss: Loss = "mse",
        temperature_bounds: tuple[float, float] = (1e-3, 1e3),
        tol: float = 1e-6,
        max_iter: int = 100,
        class_dim: int | None = None,
        ignore_index: int | None = -100,
        inputs: Inputs = "logits",
        n_bins: int = 15,
    ) -> None:
        super().__init__(
            model, class_dim=class_dim, ignore_index=ignore_index, inputs=inputs, n_bins=n_bins
        )
        self.loss = check_choice(loss, "loss", get_args(Loss))
        self.temperature_bounds = check_temperature_bounds(temperature_bounds)
        self.tol = check_positive_finite(tol, "tol")
        self.max_iter = check_positive_int(max_iter, "max_iter")

    @property
    def temperature(self) -> float:
        """The fitted temperature T of the first component."""
        self._check_fitted()
        return float(self.temperature_)

    @property
    def weights(self) -> tuple[float, float, float]:
        """The fitted weights (w1, w2, w3) of softmax(z/T), softmax(z) and the uniform."""
        self._check_fitted()
        w1, w2, w3 = self.weights_.tolist()
        return w1, w2, w3

    def _fit_rows(
        self, logits: Tensor, labels: Tensor, temperature: SoftmaxTemperatureNLL | None
    ) -> tuple[int, bool]:
        assert temperature is not None  # the first component is the fitted temperature
        solution = fit_temperature(
            temperature,
            method="lbfgs",
            temperature_bounds=self.temperature_bounds,
            rtol=self.tol,
            max_iter=self.max_iter,
        )
        if solution.bound is not None:
            low, high = self.temperature_bounds
            held = low if solution.bound == "lower" else high
            warn(
                f"the ensemble's temperature lies beyond the {solution.bound} bound: T was held at "
                f"{held:g} (see TemperatureScaler for what this says about the data); the weights "
                "were fitted with that T",
            )
        weights, iterations, converged = fit_weights(
            logits, labels, solution.temperature, self.loss, self.max_iter
        )
        self._set_buffer("temperature_", torch.tensor(solution.temperature, dtype=torch.float64))
        self._set_buffer("weights_", torch.from_numpy(weights))
        return solution.iterations + iterations, solution.converged and converged

    def _calibrate(self, logits: Tensor) -> Tensor:
        return ensemble_temperature_calibrate(logits, self.temperature_, self.weights_)

    def _check_fitted_values(self, tensors: dict[str, Tensor], state: FittedState) -> None:
        """T: () finite, > 0, within ``temperature_bounds``; weights: (3,) on the simplex."""
        loaded_tensor(
            tensors, "temperature_", shape=(), positive=True, bounds=self.temperature_bounds
        )
        check_simplex(loaded_tensor(tensors, "weights_", shape=(3,)), "weights_")

    def head(self) -> nn.Module:
        """An :class:`EnsembleTemperatureHead` with copies of the fitted T and weights."""
        self._check_fitted()
        return EnsembleTemperatureHead(self.temperature_, self.weights_)
