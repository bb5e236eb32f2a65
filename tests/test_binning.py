"""HistogramBinning and IsotonicCalibrator: exactness against numpy, netcal and scikit-learn."""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest
import torch
from conftest import requires_cuda, tempered_logits
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.isotonic import IsotonicRegression

from torchcal import CalibrationWarning
from torchcal.calibrators.binning import (
    PROBABILITY_FLOOR,
    HistogramBinning,
    IsotonicCalibrator,
    count_at_or_below,
    histogram_map,
    isotonic_map,
    renormalised_log_probs,
)


def split(k: int = 5, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Validation and test logits (float32) with labels drawn from softmax(z / 2)."""
    logits, labels = tempered_logits(4_000, k, 2.0, seed=seed)
    test_logits, test_labels = tempered_logits(3_000, k, 2.0, seed=seed + 100)
    return logits, labels, test_logits, test_labels


def numpy_probs(logits: torch.Tensor) -> np.ndarray:
    """softmax in float32, as the calibrators compute it, returned as exact float64 values."""
    return torch.softmax(logits, dim=1).double().numpy()


def numpy_floor_and_renormalise(scores: np.ndarray) -> np.ndarray:
    floored = np.maximum(scores, PROBABILITY_FLOOR)
    return floored / floored.sum(axis=1, keepdims=True)


# ------------------------------------------------------------------ histogram binning
def numpy_histogram(probs: np.ndarray, labels: np.ndarray, bins: int) -> np.ndarray:
    """Bin values (K, B) by np.searchsorted on float32 edges; empty bins keep their centre."""
    edges = np.linspace(0.0, 1.0, bins + 1).astype(np.float32).astype(np.float64)
    n_classes = probs.shape[1]
    values = np.empty((n_classes, bins))
    for k in range(n_classes):
        index = np.clip(np.searchsorted(edges, probs[:, k], side="right") - 1, 0, bins - 1)
        for j in range(bins):
            inside = index == j
            values[k, j] = (labels[inside] == k).mean() if inside.any() else (j + 0.5) / bins
    return values


def numpy_apply_histogram(probs: np.ndarray, values: np.ndarray) -> np.ndarray:
    bins = values.shape[1]
    edges = np.linspace(0.0, 1.0, bins + 1).astype(np.float32).astype(np.float64)
    index = np.clip(np.searchsorted(edges, probs, side="right") - 1, 0, bins - 1)
    return values[np.arange(probs.shape[1]), index]


@pytest.mark.parametrize("bins", [15, 7, 40])
def test_histogram_matches_an_independent_numpy_implementation(bins):
    logits, labels, test_logits, _ = split(seed=bins)
    binning = HistogramBinning(bins=bins).fit(logits, labels, progress=False)
    reference = numpy_histogram(numpy_probs(logits), labels.numpy(), bins)
    # measured: equal up to float32 storage of the bin values (< 3e-8)
    np.testing.assert_allclose(binning.bin_values_.double().numpy(), reference, atol=1e-7)
    raw = numpy_apply_histogram(numpy_probs(test_logits), reference)
    mapped = histogram_map(torch.softmax(test_logits, 1), binning.bin_values_)
    np.testing.assert_allclose(mapped.double().numpy(), raw, atol=1e-7)
    calibrated = binning.predict_proba(test_logits).double().numpy()
    np.testing.assert_allclose(calibrated, numpy_floor_and_renormalise(raw), atol=1e-6)


def test_histogram_matches_netcal_one_vs_rest():
    from netcal.binning import HistogramBinning as NetcalHistogramBinning

    logits, labels, test_logits, _ = split(k=5, seed=1)
    binning = HistogramBinning(bins=15).fit(logits, labels, progress=False)
    netcal = NetcalHistogramBinning(bins=15, detection=False)
    netcal.fit(numpy_probs(logits), labels.numpy())
    netcal_values = np.stack([model._bin_map for _, model in netcal._multiclass_instances])
    np.testing.assert_allclose(binning.bin_values_.double().numpy(), netcal_values, atol=1e-7)
    # netcal renormalises without a floor: compare on rows whose raw outputs are positive
    raw = histogram_map(torch.softmax(test_logits, 1), binning.bin_values_).double()
    assert float(raw.sum(dim=1).min()) > 0.1
    ours = (raw / raw.sum(dim=1, keepdim=True)).numpy()
    # measured: 2e-8 (float32 storage of the bin values)
    np.testing.assert_allclose(ours, netcal.transform(numpy_probs(test_logits)), atol=1e-7)


def test_histogram_bin_edges_are_closed_on_the_left_and_empty_bins_keep_their_centre():
    values = torch.arange(8.0).reshape(2, 4) / 10
    probs = torch.tensor([[0.0, 1.0], [0.25, 0.75], [0.2499, 0.7501], [0.5, 0.5]])
    mapped = histogram_map(probs, values)
    expected = torch.tensor([[0.0, 0.7], [0.1, 0.7], [0.0, 0.7], [0.2, 0.6]])
    assert torch.allclose(mapped, expected)
    logits = torch.log(torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3]]))
    binning = HistogramBinning(bins=4).fit(logits, torch.tensor([0, 1, 0]), progress=False)
    # class 0 has rows in bins 2 and 3 only; the others keep their centres 0.125 and 0.375
    assert torch.allclose(binning.bin_values_[0], torch.tensor([0.125, 0.375, 1.0, 0.5]))


# ------------------------------------------------------------------ isotonic regression
def sklearn_isotonic(probs: np.ndarray, labels: np.ndarray) -> list[IsotonicRegression]:
    return [
        IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(
            probs[:, k], (labels == k).astype(np.float64)
        )
        for k in range(probs.shape[1])
    ]


@pytest.mark.parametrize("k", [3, 10])
def test_isotonic_matches_scikit_learn_predict(k):
    logits, labels, test_logits, _ = split(k=k, seed=k)
    isotonic = IsotonicCalibrator().fit(logits, labels, progress=False)
    test_probs = numpy_probs(test_logits)
    # beyond the fitted range on both sides too: clipping
    extremes = np.linspace(0.0, 1.0, 11)[:, None].repeat(k, axis=1)
    points = np.concatenate([test_probs, extremes])
    regressions = sklearn_isotonic(numpy_probs(logits), labels.numpy())
    reference = np.stack([r.predict(points[:, j]) for j, r in enumerate(regressions)], axis=1)
    mapped = isotonic_map(torch.from_numpy(points).float(), isotonic.thresholds_, isotonic.values_)
    # measured: max 5e-8 (float32 storage of the fitted values)
    np.testing.assert_allclose(mapped.double().numpy(), reference, atol=1e-6)
    calibrated = isotonic.predict_proba(test_logits).double().numpy()
    np.testing.assert_allclose(
        calibrated, numpy_floor_and_renormalise(reference[: len(test_probs)]), atol=1e-6
    )
    for j, regression in enumerate(regressions):  # the knots are scikit-learn's, padded
        m = len(regression.X_thresholds_)
        knots = isotonic.thresholds_[j].double().numpy()
        assert np.array_equal(knots[:m], regression.X_thresholds_)
        assert (knots[m:] == knots[m - 1]).all()


def test_isotonic_needs_scikit_learn_only_to_fit(monkeypatch):
    logits, labels, *_ = split(k=4, seed=5)
    fitted = IsotonicCalibrator().fit(logits, labels, progress=False)
    monkeypatch.setitem(sys.modules, "sklearn.isotonic", None)  # as if it were not installed
    with pytest.raises(ImportError, match=r"pip install scikit-learn"):
        IsotonicCalibrator().fit(logits, labels, progress=False)
    assert fitted.predict_proba(logits[:2]).shape == (2, 4)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.floats(0, 1, width=32), min_size=1, max_size=12),
    st.lists(st.floats(-0.5, 1.5, width=32), min_size=1, max_size=30),
)
def test_the_exportable_binary_search_is_searchsorted(knots, points):
    thresholds = torch.tensor(sorted(knots))[None]
    columns = torch.tensor(points)[None]
    expected = torch.searchsorted(thresholds, columns, right=True)
    assert torch.equal(count_at_or_below(thresholds, columns), expected)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.floats(0, 1, width=32), min_size=1, max_size=12, unique=True),
    st.lists(st.floats(0, 1, width=32), min_size=1, max_size=30),
    st.integers(0, 4),
)
def test_isotonic_map_is_np_interp_with_clipping(knots, points, padding):
    xp = np.sort(np.array(knots, dtype=np.float32)).astype(np.float64)
    fp = np.sort(np.random.default_rng(len(knots)).random(len(xp)))
    padded_x = np.concatenate([xp, np.repeat(xp[-1:], padding)])
    padded_y = np.concatenate([fp, np.repeat(fp[-1:], padding)])
    x = np.array(points, dtype=np.float32)
    mapped = isotonic_map(
        torch.from_numpy(x)[:, None].double(),
        torch.from_numpy(padded_x)[None],
        torch.from_numpy(padded_y)[None],
    )
    np.testing.assert_allclose(mapped[:, 0].numpy(), np.interp(x, xp, fp), atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 6), st.integers(20, 300), st.integers(0, 2**16))
def test_isotonic_is_monotone_and_outputs_are_probabilities(k, n, seed):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=generator) * 3
    labels = torch.randint(0, k, (n,), generator=generator)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        isotonic = IsotonicCalibrator().fit(logits, labels, progress=False)
    grid = torch.linspace(0, 1, 101)[:, None].expand(101, k)
    mapped = isotonic_map(grid, isotonic.thresholds_, isotonic.values_)
    assert bool((mapped.diff(dim=0) >= 0).all())  # monotone in p_k, class by class
    assert bool(((mapped >= 0) & (mapped <= 1)).all())
    probs = isotonic.predict_proba(torch.randn(50, k, generator=generator) * 5)
    assert bool(((probs > 0) & (probs <= 1)).all())
    assert torch.allclose(probs.sum(dim=1), torch.ones(50), atol=1e-6)


# ------------------------------------------------------------------ both
def test_rows_mapped_to_zero_are_floored_and_stay_finite():
    scores = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.5, 0.0], [0.2, 0.2, 0.6]])
    log_probs = renormalised_log_probs(scores)
    assert bool(torch.isfinite(log_probs).all())
    expected = numpy_floor_and_renormalise(scores.double().numpy())
    np.testing.assert_allclose(log_probs.exp().double().numpy(), expected, rtol=1e-6)
    assert torch.allclose(log_probs[0].exp(), torch.full((3,), 1 / 3))


@pytest.mark.parametrize("cls", [HistogramBinning, IsotonicCalibrator])
def test_a_class_without_labels_warns_and_gets_the_floor(cls):
    logits, labels, *_ = split(k=4, seed=6)
    labels = labels.clamp(max=2)  # class 3 never occurs
    with pytest.warns(CalibrationWarning, match=r"1 of 4 classes never occur.*class 3"):
        calibrator = cls().fit(logits, labels, progress=False)
    probs = calibrator.predict_proba(logits)
    assert float(probs[:, 3].max()) < 1e-3
    assert bool(torch.isfinite(calibrator(logits)).all())


@pytest.mark.parametrize("cls", [HistogramBinning, IsotonicCalibrator])
def test_calibration_improves_held_out_nll_and_the_argmax_may_change(cls):
    logits, labels, test_logits, test_labels = split(k=5, seed=7)
    calibrator = cls().fit(logits, labels, progress=False)
    result = calibrator.fit_result
    assert result.converged and result.iterations == 0 and result.calibrator == cls.kind
    assert result.nll_after < result.nll_before and result.ece_after < result.ece_before
    before = torch.nn.functional.cross_entropy(test_logits, test_labels)
    after = torch.nn.functional.nll_loss(calibrator(test_logits), test_labels)
    assert after < before
    # not accuracy-preserving by construction: here about 5% of the predictions change (ties
    # between equal calibrated values go to the lowest class index), the accuracy hardly moves
    predicted = calibrator(test_logits).argmax(dim=1)
    assert bool((predicted != test_logits.argmax(dim=1)).any())
    accuracy = (predicted == test_labels).float().mean()
    assert float(accuracy) == pytest.approx(
        float((test_logits.argmax(1) == test_labels).float().mean()), abs=0.01
    )


@pytest.mark.parametrize("cls", [HistogramBinning, IsotonicCalibrator])
def test_dense_inputs_and_half_precision(cls):
    logits, labels, *_ = split(k=4, seed=8)
    calibrator = cls().fit(logits, labels, progress=False)
    dense = calibrator._calibrate(logits[:32].reshape(2, 4, 4, 4))  # leading dims, classes last
    assert torch.allclose(dense.reshape(32, 4), calibrator._calibrate(logits[:32]))
    half = calibrator._calibrate(logits[:32].half())
    assert half.dtype == torch.float32
    assert torch.allclose(half, calibrator._calibrate(logits[:32].half().float()))


@pytest.mark.parametrize("cls", [HistogramBinning, IsotonicCalibrator])
def test_the_head_is_a_snapshot_that_torchscript_compiles(cls):
    logits, labels, test_logits, _ = split(k=4, seed=10)
    calibrator = cls().fit(logits, labels, progress=False)
    head = calibrator.head()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated in torch 2.13
        scripted = torch.jit.script(head)
    assert torch.equal(scripted(test_logits), calibrator(test_logits))
    assert list(head.parameters()) == []
    calibrator.fit(test_logits, labels[: len(test_logits)], progress=False)  # refit: head unchanged
    assert torch.equal(head(test_logits), scripted(test_logits))


def test_options_rebuild_and_bins_are_checked():
    binning = HistogramBinning(bins=10, n_bins=20)
    assert binning.options()["bins"] == 10 and binning.options()["n_bins"] == 20
    assert HistogramBinning(**binning.options()).options() == binning.options()
    assert IsotonicCalibrator(**IsotonicCalibrator().options()).options()["n_bins"] == 15
    with pytest.raises(ValueError, match="bins must be >= 1"):
        HistogramBinning(bins=0)
    with pytest.raises(TypeError, match="bins must be an int"):
        HistogramBinning(bins=2.5)


@requires_cuda
@pytest.mark.parametrize("cls", [HistogramBinning, IsotonicCalibrator])
def test_fits_and_applies_on_cuda_as_on_cpu(cls):
    logits, labels, test_logits, _ = split(k=5, seed=9)
    cpu = cls().fit(logits, labels, progress=False)
    cuda = cls().to("cuda").fit(logits.cuda(), labels.cuda(), progress=False)
    for name, value in cpu.fitted_tensors().items():
        assert torch.allclose(cuda.fitted_tensors()[name], value, atol=1e-6)
    assert torch.allclose(cuda(test_logits.cuda()).cpu(), cpu(test_logits), atol=1e-5)
