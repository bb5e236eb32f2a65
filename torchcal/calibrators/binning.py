"""One-vs-rest histogram binning and isotonic regression on softmax probabilities.

Both calibrators work on ``p = softmax(z)`` class by class: for each class k they fit a map
``g_k`` from ``p_k`` to ``P(y = k)`` on the validation rows (Zadrozny & Elkan 2001, 2002), apply
every ``g_k`` to its own class probability, and renormalise the K outputs so they sum to 1:

    q_k = max(g_k(p_k), PROBABILITY_FLOOR),    calibrated p_k = q_k / sum_j q_j .

The maps are piecewise constant (histogram binning) or piecewise linear (isotonic regression) and
can be exactly 0, for a whole row too; the floor keeps every calibrated probability positive, so
log-probabilities and the NLL stay finite. The calibrated logits are the log-probabilities.

Unlike temperature scaling, these calibrators can change the predicted class: the maps differ
from class to class, and piecewise-constant maps give equal probabilities to classes whose
scores fall in bins of equal value. Ties are broken as ``torch.argmax`` breaks them (the lowest
class index wins).

Everything that runs at inference is plain tensor code (comparisons, gathers, arithmetic) held in
a pure function used by both the calibrator and its exported head, so the heads work with
``torch.jit.script``, ``torch.jit.trace``, ``torch.export.export`` and ``torch.onnx.export``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from torchcal._inputs.validation import check_bin_count
from torchcal.calibrators._loaded import loaded_tensor
from torchcal.calibrators._state import FittedState
from torchcal.calibrators.base import Inputs, SnapshotHead, SoftmaxCalibrator, fitted_value
from torchcal.errors import warn
from torchcal.export import in_compute_dtype

__all__ = ["HistogramBinning", "IsotonicCalibrator"]

#: Smallest one-vs-rest output before renormalising (float32-friendly; log(1e-6) = -13.8).
PROBABILITY_FLOOR = 1e-6


def _classes_first(probs: Tensor) -> Tensor:
    """(..., K) -> (K, N) with N the product of the leading dimensions."""
    return probs.reshape(-1, probs.shape[-1]).t().contiguous()


def _classes_last(columns: Tensor, like: Tensor) -> Tensor:
    """(K, N) -> the shape of ``like``, (..., K)."""
    return columns.t().reshape(like.shape)


def renormalised_log_probs(scores: Tensor, floor: float = PROBABILITY_FLOOR) -> Tensor:
    """Log of ``max(scores, floor)`` renormalised over the last dimension.

    Example:
        >>> renormalised_log_probs(torch.tensor([[0.2, 0.6, 0.0]])).exp()
        tensor([[2.5000e-01, 7.5000e-01, 1.2500e-06]])
    """
    floored = scores.clamp_min(floor)
    return floored.log() - floored.sum(dim=-1, keepdim=True).log()


# ----------------------------------------------------------------------------- histogram binning
def histogram_bin(probs: Tensor, n_bins: int) -> Tensor:
    """The index ``floor(p * B)`` of each probability's bin among B equal-width bins of [0, 1]
    (the last one closed).

    Example:
        >>> histogram_bin(torch.tensor([0.0, 0.25, 0.5, 1.0]), 4)
        tensor([0, 1, 2, 3])
    """
    return (probs * n_bins).floor().clamp(0, n_bins - 1).long()


def histogram_map(probs: Tensor, bin_values: Tensor) -> Tensor:
    """Each class's bin value at its probability: ``bin_values[k, floor(p_k * B)]``.

    ``probs`` is (..., K) in [0, 1] and ``bin_values`` (K, B): the B equal-width bins
    ``[j/B, (j+1)/B)`` of [0, 1], the last one closed. NaN probabilities give NaN.
    """
    n_bins = bin_values.shape[-1]
    values = bin_values.to(probs.dtype)
    columns = _classes_first(probs)
    index = histogram_bin(torch.nan_to_num(columns, nan=0.0), n_bins)
    mapped = values.gather(1, index) + columns * 0  # the second term propagates NaN
    return _classes_last(mapped, probs)


def histogram_calibrate(logits: Tensor, bin_values: Tensor) -> Tensor:
    """Calibrated log-probabilities of ``logits`` (..., K) by one-vs-rest histogram binning."""
    probs = torch.softmax(in_compute_dtype(logits), dim=-1)
    return renormalised_log_probs(histogram_map(probs, bin_values))


class HistogramHead(SnapshotHead):
    """Histogram binning with fixed (K, B) bin values, held as a buffer (a snapshot).

    Args:
        bin_values: each class's value per bin.
    """

    def __init__(self, bin_values: Tensor) -> None:
        super().__init__(bin_values=bin_values)

    def forward(self, logits: Tensor) -> Tensor:
        return histogram_calibrate(logits, self.bin_values)


# ----------------------------------------------------------------------------- isotonic regression
def count_at_or_below(thresholds: Tensor, columns: Tensor) -> Tensor:
    """How many of each class's sorted ``thresholds`` (K, M) are <= each of ``columns`` (K, N).

    The same as ``torch.searchsorted(thresholds, columns, right=True)``, which has no ONNX
    translation, computed instead by a binary search unrolled into ``ceil(log2(M + 1))`` rounds
    of one gather, one comparison and one addition, over the thresholds padded with ``+inf`` to
    ``2^rounds - 1``. Every export route sees only those plain ops, in O(K N) memory; the price is
    time on CPU, about 2.5x ``searchsorted``'s (each round is a pass over the (K, N) values).
    """
    size = thresholds.shape[-1]
    rounds = 0
    while (1 << rounds) <= size:
        rounds += 1
    padding = (1 << rounds) - 1 - size
    knots = thresholds
    if padding > 0:
        fill = torch.full(
            (thresholds.shape[0], padding),
            float("inf"),
            dtype=thresholds.dtype,
            device=thresholds.device,
        )
        knots = torch.cat([thresholds, fill], dim=1)
    # last index known to hold a knot <= x (-1: none yet); each round tests one more bit
    last = torch.full(columns.shape, -1, dtype=torch.long, device=columns.device)
    for level in range(rounds - 1, -1, -1):
        step = 1 << level
        last = last.add(knots.gather(1, last + step) <= columns, alpha=step)
    return last + 1


def isotonic_map(probs: Tensor, thresholds: Tensor, values: Tensor) -> Tensor:
    """Each class's isotonic map at its probability, as scikit-learn's ``predict`` computes it.

    ``probs`` is (..., K); ``thresholds`` and ``values`` (K, M) hold each class's increasing
    knots and fitted values (padded by repeating the last knot). Between knots the map is
    linear; below the first knot and above the last it is clipped to the end values
    (``out_of_bounds="clip"``).
    """
    knots = thresholds.to(probs.dtype)
    heights = values.to(probs.dtype)
    size = knots.shape[-1]
    columns = _classes_first(probs)
    above = count_at_or_below(knots, columns)  # in [0, M]
    left = (above - 1).clamp(0, size - 1)
    right = above.clamp(0, size - 1)
    x0, x1 = knots.gather(1, left), knots.gather(1, right)
    y0, y1 = heights.gather(1, left), heights.gather(1, right)
    width = x1 - x0
    spread = width > 0  # zero at both ends (clipping) and between repeated knots
    fraction = torch.where(spread, (columns - x0) / torch.where(spread, width, 1.0), 0.0)
    mapped = y0 + fraction.clamp(0.0, 1.0) * (y1 - y0) + columns * 0  # propagate NaN
    return _classes_last(mapped, probs)


def isotonic_calibrate(logits: Tensor, thresholds: Tensor, values: Tensor) -> Tensor:
    """Calibrated log-probabilities of ``logits`` (..., K) by one-vs-rest isotonic regression."""
    probs = torch.softmax(in_compute_dtype(logits), dim=-1)
    return renormalised_log_probs(isotonic_map(probs, thresholds, values))


class IsotonicHead(SnapshotHead):
    """Isotonic regression with fixed (K, M) knots and values, held as buffers (a snapshot).

    Args:
        thresholds: each class's increasing knots.
        values: the map's values at the knots.
    """

    def __init__(self, thresholds: Tensor, values: Tensor) -> None:
        super().__init__(thresholds=thresholds, values=values)

    def forward(self, logits: Tensor) -> Tensor:
        return isotonic_calibrate(logits, self.thresholds, self.values)


# ----------------------------------------------------------------------------- calibrators
def _warn_about_absent_classes(labels: Tensor, n_classes: int, kind: str) -> None:
    counts = torch.bincount(labels, minlength=n_classes)
    absent = (counts == 0).nonzero().squeeze(1).tolist()
    if absent:
        shown = ", ".join(map(str, absent[:10])) + (", ..." if len(absent) > 10 else "")
        warn(
            f"{len(absent)} of {n_classes} classes never occur among the {labels.numel()} labels "
            f"(class {shown}): the {kind} map of such a class is 0 wherever it has data, so its "
            "calibrated probability ends near the floor; validate on data with every class",
        )


class _BinningCalibrator(SoftmaxCalibrator):
    """A map of each class's probability fitted without a temperature first; softmax gives a
    row wider than float32's range its limit exactly, so such rows are fitted too."""

    _starts_from_temperature = False
    _fits_overflowing_rows = True


class HistogramBinning(_BinningCalibrator):
    """One-vs-rest histogram binning (Zadrozny & Elkan 2001): a bin-wise frequency per class.

    For each class k the probability ``p_k = softmax(z)_k`` is placed in one of ``bins``
    equal-width bins ``[j/B, (j+1)/B)`` of [0, 1] (the last one closed, the bin index is
    ``floor(p_k * B)``), and the bin's value is the fraction of the validation rows in that bin
    whose label is k. A bin no validation row falls into keeps its centre ``(j + 0.5) / B``, i.e.
    roughly leaves such probabilities alone (netcal's convention). The K values of a row are
    floored at :data:`PROBABILITY_FLOOR` and renormalised (see the module docstring); the
    calibrated logits are their logarithms. The predicted class can change.

    Two bin counts, not to be confused: ``bins`` is the calibration map's (it changes the
    calibrated probabilities), ``n_bins``, an option of every calibrator, only the reported ECE's
    (it changes nothing but :attr:`fit_result`'s ``ece_before`` and ``ece_after``).

    Args:
        model: the trained classifier; ``None`` to calibrate logits directly.
        bins: the MAP's bins: number of equal-width bins of each class's map. 15 by default: Guo
            et al. (2017)'s choice, and the grid of torchcal's ECE and reliability diagrams. Fewer
            bins suit small validation sets (every class needs rows in most of its bins).
        class_dim, ignore_index, inputs: as for
            :class:`~torchcal.calibrators.base.SoftmaxCalibrator`.
        n_bins: the REPORT's bins: equal-width bins of the ECE reported in :attr:`fit_result`
            (not the map's bins).

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits = torch.randn(2000, 4) * 3
        >>> labels = torch.distributions.Categorical(logits=logits / 2).sample()
        >>> binning = HistogramBinning(bins=10).fit(logits, labels, progress=False)
        >>> tuple(binning.bin_values_.shape)
        (4, 10)
        >>> probs = binning.predict_proba(logits[:3])
        >>> torch.allclose(probs.sum(dim=1), torch.ones(3))
        True
        >>> binning.fit_result.ece_after < binning.fit_result.ece_before
        True
    """

    kind = "histogram"
    _fitted_names = ("bin_values_",)

    def __init__(
        self,
        model: nn.Module | None = None,
        *,
        bins: int = 15,
        class_dim: int | None = None,
        ignore_index: int | None = -100,
        inputs: Inputs = "logits",
        n_bins: int = 15,
    ) -> None:
        super().__init__(
            model, class_dim=class_dim, ignore_index=ignore_index, inputs=inputs, n_bins=n_bins
        )
        self.bins = check_bin_count(bins, "bins")

    bin_values = fitted_value(
        "bin_values_", "The fitted (K, bins) bin values (a copy): each class's frequency per bin."
    )

    def _fit_rows(self, logits: Tensor, labels: Tensor, temperature: None) -> tuple[int, bool]:
        n_classes = logits.shape[1]
        _warn_about_absent_classes(labels, n_classes, "histogram")
        probs = torch.softmax(in_compute_dtype(logits), dim=-1)
        index = histogram_bin(probs, self.bins)
        # flat (class, bin) index of every probability; its positives are the label's column
        flat = index + torch.arange(n_classes, device=index.device) * self.bins
        size = n_classes * self.bins
        counts = torch.bincount(flat.reshape(-1), minlength=size).double()
        hits = flat.gather(1, labels[:, None].to(flat.device)).squeeze(1)
        positives = torch.bincount(hits, minlength=size).double()
        centres = (torch.arange(self.bins, dtype=torch.float64, device=index.device) + 0.5) / (
            self.bins
        )
        values = torch.where(counts > 0, positives / counts.clamp_min(1), centres.repeat(n_classes))
        self._set_buffer("bin_values_", values.reshape(n_classes, self.bins))
        return 0, True

    def _calibrate(self, logits: Tensor) -> Tensor:
        return histogram_calibrate(logits, self.bin_values_)

    def _check_fitted_values(self, tensors: dict[str, Tensor], state: FittedState) -> None:
        """Bin values: (K, bins), in [0, 1]."""
        shape = (state.n_classes, self.bins)
        loaded_tensor(tensors, "bin_values_", shape=shape, unit_interval=True)

    def head(self) -> nn.Module:
        """A :class:`HistogramHead` with a copy of the fitted bin values."""
        self._check_fitted()
        return HistogramHead(self.bin_values_)


def _isotonic_regression() -> type:
    try:
        from sklearn.isotonic import IsotonicRegression
    except ImportError as error:
        raise ImportError(
            "IsotonicCalibrator is fitted with scikit-learn's IsotonicRegression, which is not "
            "installed: pip install scikit-learn (or pip install 'torchcal[calibrators]'). "
            "Applying a fitted or loaded IsotonicCalibrator needs only torch"
        ) from error
    return IsotonicRegression


class IsotonicCalibrator(_BinningCalibrator):
    """One-vs-rest isotonic regression (Zadrozny & Elkan 2002), fitted with scikit-learn.

    For each class k a non-decreasing map from ``p_k = softmax(z)_k`` to ``1[y = k]`` is fitted
    by ``sklearn.isotonic.IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip")`` on the
    validation rows (least squares under monotonicity, pooled adjacent violators). The fitted
    knots are kept as (K, M) buffers ``thresholds_`` and ``values_`` (padded to a common length
    by repeating each class's last knot) and applied in torch exactly as scikit-learn's
    ``predict``: linear between knots, clipped outside them. The K values of a row are floored at
    :data:`PROBABILITY_FLOOR` and renormalised (see the module docstring); the calibrated logits
    are their logarithms. The predicted class can change.

    Fitting needs scikit-learn (``pip install scikit-learn``); applying, exporting and loading a
    fitted calibrator need only torch. The probabilities are fitted in float32 (float64 for
    float64 logits) and the knots stored in float32.

    Args:
        model: the trained classifier; ``None`` to calibrate logits directly.
        class_dim, ignore_index, inputs: as for
            :class:`~torchcal.calibrators.base.SoftmaxCalibrator`.
        n_bins: equal-width bins of the ECE reported in :attr:`fit_result`.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits = torch.randn(2000, 4) * 3
        >>> labels = torch.distributions.Categorical(logits=logits / 2).sample()
        >>> isotonic = IsotonicCalibrator().fit(logits, labels, progress=False)
        >>> isotonic.thresholds_.shape == isotonic.values_.shape
        True
        >>> isotonic.fit_result.nll_after < isotonic.fit_result.nll_before
        True
        >>> isotonic.predict_proba(logits[:3]).sum(dim=1).allclose(torch.ones(3))  # distributions
        True
    """

    kind = "isotonic"
    _fitted_names = ("thresholds_", "values_")

    thresholds = fitted_value(
        "thresholds_", "The fitted (K, M) knots (a copy), each class's row increasing."
    )
    values = fitted_value(
        "values_",
        "The fitted (K, M) values at the knots (a copy), each class's row non-decreasing.",
    )

    def _check_can_fit(self) -> None:
        """Fitting needs scikit-learn: without it, ``ImportError`` before the data is read."""
        _isotonic_regression()

    def _fit_rows(self, logits: Tensor, labels: Tensor, temperature: None) -> tuple[int, bool]:
        isotonic_regression = _isotonic_regression()
        n_classes = logits.shape[1]
        _warn_about_absent_classes(labels, n_classes, "isotonic")
        # float32 probabilities (for non-float64 logits) passed as exact float64 values: the
        # knots are then float32 numbers, stored without rounding
        probs = torch.softmax(in_compute_dtype(logits), dim=-1).double().cpu().numpy()
        targets = labels.cpu().numpy()
        knots, heights = [], []
        for k in range(n_classes):
            regression = isotonic_regression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
            regression.fit(probs[:, k], (targets == k).astype(probs.dtype))
            knots.append(torch.from_numpy(regression.X_thresholds_.copy()))
            heights.append(torch.from_numpy(regression.y_thresholds_.copy()))
        size = max(len(knot) for knot in knots)

        def padded(points: list[Tensor]) -> Tensor:
            return torch.stack([torch.cat([p, p[-1:].expand(size - len(p))]) for p in points])

        self._set_buffer("thresholds_", padded(knots))
        self._set_buffer("values_", padded(heights))
        return 0, True

    def _calibrate(self, logits: Tensor) -> Tensor:
        return isotonic_calibrate(logits, self.thresholds_, self.values_)

    def _check_fitted_values(self, tensors: dict[str, Tensor], state: FittedState) -> None:
        """Knots and values: (K, M) with M >= 1, in [0, 1], non-decreasing along each row."""
        n_classes = state.n_classes
        knots = loaded_tensor(tensors, "thresholds_", ndim=2, unit_interval=True)
        if knots.shape[0] != n_classes or knots.shape[1] < 1:
            raise ValueError(
                f"thresholds_ must have shape ({n_classes}, M) with M >= 1, got "
                f"{tuple(knots.shape)}"
            )
        loaded_tensor(tensors, "values_", shape=tuple(knots.shape), unit_interval=True)
        for name in ("thresholds_", "values_"):
            steps = tensors[name].diff(dim=1)
            if bool((steps < 0).any()):
                raise ValueError(f"{name} must be non-decreasing along each class's row")

    def head(self) -> nn.Module:
        """An :class:`IsotonicHead` with copies of the fitted knots and values."""
        self._check_fitted()
        return IsotonicHead(self.thresholds_, self.values_)
