"""Calibration metrics against torchmetrics, netcal, scikit-learn and plain numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import requires_cuda, tempered_logits
from hostile import expect_exact, expect_refused
from hypothesis import given, settings
from hypothesis import strategies as st
from netcal.metrics import ECE
from sklearn.metrics import log_loss
from torchmetrics.functional.classification import multiclass_calibration_error

from torchcal import _terms
from torchcal.metrics import (
    CalibrationErrorMeter,
    accuracy,
    bootstrap_interval,
    brier_score,
    classwise_calibration_error,
    debiased_calibration_error,
    entropy,
    expected_calibration_error,
    max_probability,
    maximum_calibration_error,
    negative_log_likelihood,
    reliability_bins,
    smooth_calibration_error,
    top1_margin,
)


def probabilities(n=5_000, k=10, seed=0, dtype=torch.float64):
    logits, labels = tempered_logits(n, k, 2.0, seed=seed)
    return torch.softmax(logits.to(dtype), dim=1), labels


@pytest.mark.parametrize("norm", ["l1", "l2", "max"])
@pytest.mark.parametrize(("n_bins", "k", "seed"), [(15, 10, 0), (10, 3, 1), (20, 100, 2)])
def test_ece_equals_torchmetrics(norm, n_bins, k, seed):
    probs, labels = probabilities(k=k, seed=seed)
    ours = expected_calibration_error(probs, labels, n_bins=n_bins, norm=norm)
    theirs = multiclass_calibration_error(probs, labels, num_classes=k, n_bins=n_bins, norm=norm)
    assert float(ours) == pytest.approx(float(theirs), abs=1e-6)


@pytest.mark.parametrize(("n_bins", "k", "seed"), [(15, 10, 3), (10, 2, 4), (5, 50, 5)])
def test_ece_equals_netcal(n_bins, k, seed):
    probs, labels = probabilities(k=k, seed=seed)
    theirs = ECE(bins=n_bins).measure(probs.numpy(), labels.numpy())
    ours = expected_calibration_error(probs, labels, n_bins=n_bins)
    assert float(ours) == pytest.approx(float(theirs), abs=1e-6)


def test_float32_probabilities_agree_with_torchmetrics():
    probs, labels = probabilities(dtype=torch.float32, seed=6)
    theirs = multiclass_calibration_error(probs, labels, num_classes=10, n_bins=15)
    assert float(expected_calibration_error(probs, labels)) == pytest.approx(
        float(theirs), abs=1e-6
    )


def test_mce_is_the_max_norm():
    probs, labels = probabilities(seed=7)
    assert torch.equal(
        maximum_calibration_error(probs, labels),
        expected_calibration_error(probs, labels, norm="max"),
    )


def _numpy_bins(confidences, correct, edges):
    index = np.clip(np.searchsorted(edges, confidences, side="right") - 1, 0, len(edges) - 2)
    counts = np.bincount(index, minlength=len(edges) - 1)
    conf = np.bincount(index, confidences, minlength=len(edges) - 1) / np.maximum(counts, 1)
    acc = np.bincount(index, correct, minlength=len(edges) - 1) / np.maximum(counts, 1)
    return counts, conf, acc


def test_reliability_bins_match_a_numpy_binning_and_give_the_ece():
    probs, labels = probabilities(seed=8)
    bins = reliability_bins(probs, labels, n_bins=15)
    p = probs.numpy()
    confidences, correct = p.max(1), (p.argmax(1) == labels.numpy()).astype(float)
    counts, conf, acc = _numpy_bins(confidences, correct, np.linspace(0, 1, 16))
    np.testing.assert_array_equal(bins.counts.numpy(), counts)
    np.testing.assert_allclose(bins.confidence.numpy(), conf, atol=1e-12)
    np.testing.assert_allclose(bins.accuracy.numpy(), acc, atol=1e-12)
    ece = np.sum(np.abs(acc - conf) * counts) / counts.sum()
    assert float(bins.calibration_error()) == pytest.approx(ece, abs=1e-12)
    assert bins.n_samples == len(labels)


def test_quantile_bins_hold_equal_numbers_of_samples():
    probs, labels = probabilities(n=3_000, seed=9)
    bins = reliability_bins(probs, labels, n_bins=10, strategy="quantile")
    assert bins.counts.tolist() == [300] * 10
    confidences = probs.max(1).values.numpy()
    correct = (probs.argmax(1) == labels).double().numpy()
    edges = np.quantile(confidences, np.linspace(0, 1, 11))
    edges[0], edges[-1] = 0.0, 1.0
    counts, conf, acc = _numpy_bins(confidences, correct, edges)
    ece = np.sum(np.abs(acc - conf) * counts) / counts.sum()
    adaptive = expected_calibration_error(probs, labels, n_bins=10, strategy="quantile")
    assert float(adaptive) == pytest.approx(ece, abs=1e-12)


def test_classwise_error_matches_a_numpy_one_vs_rest_computation():
    probs, labels = probabilities(k=5, seed=10)
    p, y = probs.numpy(), labels.numpy()
    edges = np.linspace(0, 1, 16)
    errors = []
    for k in range(5):
        counts, conf, acc = _numpy_bins(p[:, k], (y == k).astype(float), edges)
        errors.append(np.sum(np.abs(acc - conf) * counts) / counts.sum())
    assert float(classwise_calibration_error(probs, labels)) == pytest.approx(
        np.mean(errors), abs=1e-12
    )


def test_nll_and_brier_match_scikit_learn_and_numpy():
    probs, labels = probabilities(k=7, seed=11)
    p, y = probs.numpy(), labels.numpy()
    assert float(negative_log_likelihood(probs, labels)) == pytest.approx(
        log_loss(y, p, labels=list(range(7))), rel=1e-10
    )
    brier = np.mean(np.sum((p - np.eye(7)[y]) ** 2, axis=1))
    assert float(brier_score(probs, labels)) == pytest.approx(brier, rel=1e-10)


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 8), st.integers(1, 200), st.integers(0, 1000), st.integers(1, 30))
def test_ece_lies_in_the_unit_interval_and_mce_bounds_it(k, n, seed, n_bins):
    probs, labels = probabilities(n=n, k=k, seed=seed)
    ece = float(expected_calibration_error(probs, labels, n_bins=n_bins))
    rms = float(expected_calibration_error(probs, labels, n_bins=n_bins, norm="l2"))
    mce = float(maximum_calibration_error(probs, labels, n_bins=n_bins))
    assert 0.0 <= ece <= rms + 1e-12 <= mce + 2e-12 <= 1.0 + 2e-12


def test_metrics_keep_the_device_and_return_float64():
    probs, labels = probabilities(n=100, dtype=torch.float32)
    for value in (
        expected_calibration_error(probs, labels),
        negative_log_likelihood(probs, labels),
        brier_score(probs, labels),
    ):
        assert value.dtype == torch.float64 and value.ndim == 0


@requires_cuda
def test_metrics_on_cuda_equal_cpu():
    probs, labels = probabilities(seed=12)
    for norm in ("l1", "l2", "max"):
        gpu = expected_calibration_error(probs.cuda(), labels.cuda(), norm=norm)
        assert gpu.device.type == "cuda"
        assert float(gpu) == pytest.approx(
            float(expected_calibration_error(probs, labels, norm=norm))
        )


@pytest.mark.parametrize(
    ("probs", "labels", "message"),
    [
        (torch.tensor([[2.0, -1.0]]), torch.tensor([0]), "apply torch.softmax"),
        (torch.tensor([[0.5, 0.2]]), torch.tensor([0]), "rows must sum to 1"),
        (torch.tensor([[0.5, float("nan")]]), torch.tensor([0]), "NaN"),
        (torch.tensor([[0.5, 0.5]]), torch.tensor([2]), r"\[0, 2\)"),
        (torch.tensor([[0.5, 0.5]]), torch.tensor([0, 1]), "do not match"),
        (torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), "empty"),
    ],
)
def test_bad_metric_input_is_named(probs, labels, message):
    with pytest.raises(ValueError, match=message):
        expected_calibration_error(probs, labels)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"n_bins": 0}, "n_bins must be >= 1"),
        ({"norm": "l3"}, "norm must be one of"),
        ({"strategy": "log"}, "strategy must be one of"),
    ],
)
def test_bad_metric_options_are_named(options, message):
    probs, labels = probabilities(n=10)
    with pytest.raises(ValueError, match=message):
        expected_calibration_error(probs, labels, **options)


# ----------------------------------------------- numpy inputs, wording, bounds, chunked reads
LABELLED = [
    expected_calibration_error,
    maximum_calibration_error,
    classwise_calibration_error,
    negative_log_likelihood,
    brier_score,
    accuracy,
    debiased_calibration_error,
    smooth_calibration_error,
    lambda p, y: reliability_bins(p, y).calibration_error(),
    lambda p, y: bootstrap_interval(expected_calibration_error, p, y, n_resamples=20).low,
]


@pytest.mark.parametrize("metric", LABELLED)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_numpy_arrays_give_the_tensor_values(metric, dtype):
    probs, labels = probabilities(n=500, k=6, seed=13, dtype=dtype)
    expected = float(metric(probs, labels))
    array, label_array = probs.numpy(), labels.numpy()
    array.flags.writeable = False  # read, never written: no warning, no copy needed
    expect_exact(lambda: float(metric(array, label_array)), lambda found: found == expected)


def test_numpy_arrays_feed_the_meter_and_the_uncertainty_signals():
    probs, labels = probabilities(n=300, k=4, seed=14)
    meter, reference = CalibrationErrorMeter(), CalibrationErrorMeter()
    meter.update(probs.numpy(), labels.numpy().astype(np.int32))
    reference.update(probs, labels)
    assert meter.summary() == reference.summary()
    for signal in (entropy, top1_margin, max_probability):
        assert torch.equal(signal(probs.numpy()), signal(probs))
    reversed_rows = probs.numpy()[::-1]  # a negative stride: read through a copy
    assert float(expected_calibration_error(reversed_rows, labels.numpy()[::-1])) == (
        pytest.approx(float(expected_calibration_error(probs, labels)), abs=1e-15)
    )


@pytest.mark.parametrize(
    ("probs", "labels", "words"),
    [
        (torch.full((3, 2), 0.5), torch.zeros(4, dtype=torch.long), ("probs", "labels")),
        (torch.full((3, 2), 0.5), torch.zeros(3, 2, dtype=torch.long), ("one-hot",)),
        (torch.tensor(0.5), torch.tensor(1), ("probs",)),
        (torch.full((2, 3, 4), 0.25), torch.zeros(5, 4, dtype=torch.long), ("probs", "shape")),
        (torch.full((3, 2), 0.5), torch.full((3,), -100), ("ignore_index",)),
        (torch.zeros(3, 2, dtype=torch.long), torch.zeros(3, dtype=torch.long), ("probs", "int")),
        ([[0.5, 0.5]], torch.zeros(1, dtype=torch.long), ("probs", "list")),
        (np.array([["a", "b"]]), np.zeros(1, dtype=np.int64), ("probs", "numpy")),
        (torch.full((3,), 0.5), torch.zeros(4), ("probs", "entries")),
    ],
)
def test_metric_errors_speak_of_probs_never_of_logits(probs, labels, words):
    for metric in (expected_calibration_error, negative_log_likelihood, brier_score):
        expect_refused(lambda metric=metric: metric(probs, labels), *words)
        with pytest.raises((ValueError, TypeError)) as error:
            metric(probs, labels)
        assert "logits" not in str(error.value).replace("apply torch.softmax(logits", "")


def test_out_of_range_values_and_rows_off_the_simplex_are_refused_in_every_dtype():
    probs = torch.tensor([[0.7, 0.3], [0.4, 0.6]])
    labels = torch.tensor([0, 1])
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        negative = probs.to(dtype).clone()
        negative[0, 1] = -1e-3
        expect_refused(lambda p=negative: expected_calibration_error(p, labels), "[0, 1]")
        for bad in (float("nan"), float("inf"), -float("inf")):
            broken = probs.to(dtype).clone()
            broken[1, 0] = bad
            expect_refused(lambda p=broken: expected_calibration_error(p, labels), "probs")
        # 0.5 + 0.504: a float16 sum would round to 1.0; the check sums in float32. bfloat16
        # rounding alone moves a row's sum by up to its epsilon (2^-7), so it is held to that.
        second = 0.52 if dtype == torch.bfloat16 else 0.504
        off = torch.tensor([[0.5, 0.5], [0.5, second]], dtype=dtype)
        expect_refused(lambda p=off: expected_calibration_error(p, labels), "sum to 1", "row 1")


def test_label_fast_path_and_input_layer_route_agree():
    probs, labels = probabilities(n=400, k=5, seed=15)
    ignored = labels.clone()
    ignored[::7] = 3  # ignore_index inside the class range: these rows are left out
    kept = ignored != 3
    assert float(expected_calibration_error(probs, ignored, ignore_index=3)) == float(
        expected_calibration_error(probs[kept], labels[kept])
    )
    expect_refused(lambda: expected_calibration_error(probs, labels + 5), "[0, 5)")
    square, square_labels = probabilities(n=5, k=5, seed=16)  # N == K: classes in dim 1 given
    assert float(expected_calibration_error(square, square_labels, class_dim=1)) == pytest.approx(
        float(expected_calibration_error(square.numpy(), square_labels.numpy(), class_dim=-1))
    )


@pytest.mark.parametrize(
    "call",
    [
        lambda p, y: expected_calibration_error(p, y, n_bins=10**9),
        lambda p, y: reliability_bins(p, y, n_bins=10**9),
        lambda p, y: classwise_calibration_error(p, y, n_bins=10**9),
        lambda p, y: debiased_calibration_error(p, y, n_bins=10**9),
        lambda p, y: CalibrationErrorMeter(n_bins=10**9),
        lambda p, y: bootstrap_interval(expected_calibration_error, p, y, n_bins=10**9),
    ],
)
def test_a_huge_bin_count_is_refused_before_any_allocation(call):
    probs, labels = probabilities(n=50, k=3, seed=17)
    expect_refused(lambda: call(probs, labels), "n_bins", "100,000")


def test_huge_resample_counts_and_tiny_bandwidths_are_refused_with_their_limits():
    probs, labels = probabilities(n=50, k=3, seed=18)
    expect_refused(
        lambda: bootstrap_interval(accuracy, probs, labels, n_resamples=10**9),
        "n_resamples",
        "1,000,000",
    )
    expect_refused(lambda: smooth_calibration_error(probs, labels, bandwidth=1e-9), "0.001")
    assert float(smooth_calibration_error(probs, labels, bandwidth=1e-3)) >= 0.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_chunked_class_wise_and_brier_equal_numpy_float64(monkeypatch, dtype):
    monkeypatch.setattr(_terms, "CHUNK_ELEMENTS", 64)  # many row chunks of 12 rows
    probs, labels = probabilities(n=1001, k=5, seed=19, dtype=dtype)
    p, y = probs.numpy().astype(np.float64), labels.numpy()
    edges = np.linspace(0, 1, 11)
    errors = []
    for k in range(5):
        counts, conf, acc = _numpy_bins(p[:, k], (y == k).astype(float), edges)
        errors.append(np.sqrt(np.sum((acc - conf) ** 2 * counts) / counts.sum()))
    found = classwise_calibration_error(probs, labels, n_bins=10, norm="l2")
    assert float(found) == pytest.approx(np.mean(errors), abs=1e-12)
    brier = np.mean(np.sum((p - np.eye(5)[y]) ** 2, axis=1))  # float64 from the float32 values
    assert float(brier_score(probs, labels)) == pytest.approx(brier, rel=1e-13)


def _class_bins_checked_against_numpy(probs, labels, n_bins):
    """Check every class's bin counts, sums and correct counts from ``classwise_bin_sums``
    against numpy float64; return each class's numpy (|accuracy - confidence|, counts)."""
    p, y = probs.numpy().astype(np.float64), labels.numpy()
    edges = np.linspace(0, 1, n_bins + 1)
    counts, sums, correct = _terms.classwise_bin_sums(probs, labels, n_bins)
    per_class = []
    for k in range(p.shape[1]):
        index = np.clip(np.searchsorted(edges, p[:, k], side="right") - 1, 0, n_bins - 1)
        assert counts[k].tolist() == np.bincount(index, minlength=n_bins).tolist()
        expected = np.bincount(index, p[:, k], minlength=n_bins)
        np.testing.assert_allclose(sums[k].numpy(), expected, rtol=1e-13, atol=1e-13)
        assert correct[k].tolist() == np.bincount(index, y == k, minlength=n_bins).tolist()
        n_k, conf, acc = _numpy_bins(p[:, k], (y == k).astype(float), edges)
        per_class.append((np.abs(acc - conf), n_k))
    return per_class


@pytest.mark.parametrize(("dtype", "n_bins"), [(torch.float32, 15), (torch.float64, 10)])
def test_class_wise_bins_of_wide_rows_equal_numpy_float64(monkeypatch, dtype, n_bins):
    # 1,000 classes: most entries lie in the first bin, whose sums come from the column totals,
    # and only the few others are binned one by one, over several row chunks.
    monkeypatch.setattr(_terms, "CHUNK_ELEMENTS", 1 << 16)
    probs, labels = probabilities(n=700, k=1000, seed=21, dtype=dtype)
    errors = {"l1": [], "l2": [], "max": []}
    for gaps, n_k in _class_bins_checked_against_numpy(probs, labels, n_bins):
        errors["l1"].append(np.sum(gaps * n_k) / n_k.sum())
        errors["l2"].append(np.sqrt(np.sum(gaps**2 * n_k) / n_k.sum()))
        errors["max"].append(gaps[n_k > 0].max())
    for norm, expected in errors.items():
        found = classwise_calibration_error(probs, labels, n_bins=n_bins, norm=norm)
        assert float(found) == pytest.approx(np.mean(expected), abs=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_class_wise_bins_of_sparse_then_dense_chunks_equal_numpy_float64(monkeypatch, dtype):
    # 300 classes, 15 bins. The first rows are nearly one-hot: few entries past the first edge,
    # so those chunks are sparse (first bins from the column totals). The later rows spread
    # their mass over 15 classes at 1/15 each, past the first edge: those chunks are dense.
    monkeypatch.setattr(_terms, "CHUNK_ELEMENTS", 3000)  # 10 rows per chunk
    generator = torch.Generator().manual_seed(22)
    n_classes, n_bins = 300, 15
    peaked = torch.softmax(torch.randn(40, n_classes, generator=generator) * 0.5, 1)
    peaked[:, 7] += 1.0
    spread = torch.rand(35, n_classes, generator=generator) * 1e-3
    spread[:, ::20] += 1.0
    probs = torch.cat([peaked, spread]).to(dtype)
    probs /= probs.sum(dim=1, keepdim=True)
    labels = torch.randint(0, n_classes, (75,), generator=generator)
    assert _terms._entries_at_least(probs[:10].reshape(-1), 0.99 / n_bins) is not None
    assert _terms._entries_at_least(probs[40:50].reshape(-1), 0.99 / n_bins) is None
    l1 = [
        np.sum(gaps * n_k) / n_k.sum()
        for gaps, n_k in _class_bins_checked_against_numpy(probs, labels, n_bins)
    ]
    _, sums, _ = _terms.classwise_bin_sums(probs, labels, n_bins)
    _, sums_alone, _ = _terms.classwise_bin_sums(probs, labels, n_bins, counts=False)
    assert torch.equal(sums_alone, sums)
    found = classwise_calibration_error(probs, labels, n_bins=n_bins)
    assert float(found) == pytest.approx(np.mean(l1), abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(0.0, 1.0, width=32), min_size=0, max_size=300),
    st.sampled_from([0.05, 0.5, 0.9]),
    st.sampled_from([1, 4, 64]),
)
def test_entries_at_least_a_threshold_are_all_found(values, threshold, block):
    values = torch.tensor(values, dtype=torch.float32)
    found = _terms._entries_at_least(values, threshold, block=block)
    expected = (values >= threshold).nonzero().squeeze(1)
    if found is None:  # only where a quarter of the blocks or more hold one
        whole = values.numel() // block * block
        hot = values[:whole].view(-1, block).amax(1) >= threshold if whole else torch.ones(0)
        assert 4 * int(hot.sum()) > hot.numel()
    else:
        assert sorted(found.tolist()) == expected.tolist()


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.lists(
            st.floats(0.0, allow_nan=False, width=32) | st.just(-0.0), min_size=1, max_size=12
        ),
        min_size=1,
        max_size=20,
    ).filter(lambda rows: len({len(row) for row in rows}) == 1),
    st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]),
)
def test_row_maxima_read_as_integers_equal_amax_on_non_negative_values(rows, dtype):
    values = torch.tensor(rows, dtype=torch.float32).to(dtype)  # +inf and -0.0 included
    expected = values.amax(dim=1)
    assert torch.equal(_terms.row_maxima(values), expected)
    out = torch.empty(len(rows), dtype=dtype)
    assert _terms.row_maxima(values, out=out) is out and torch.equal(out, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    "value, accepted",
    [
        (-0.0, True),
        (float("nan"), False),
        (-float("nan"), False),
        (float("inf"), False),
        (-float("inf"), False),
        (-0.1, False),
        (1.5, False),
    ],
)
def test_value_checks_read_as_integers_decide_as_the_values_do(dtype, value, accepted):
    """The chunked checks take the range of the values' bits as integers: -0.0 (negative bits)
    is still accepted, every NaN, infinity and value outside [0, 1] still refused."""
    probs = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]], dtype=dtype)
    probs[0, 2] = value
    labels = torch.tensor([0, 2])
    meter = CalibrationErrorMeter()
    calls = [
        lambda: expected_calibration_error(probs, labels),
        lambda: classwise_calibration_error(probs, labels),
        lambda: (meter.update(probs, labels), meter.compute())[1],
    ]
    for call in calls:
        if accepted:
            assert float(call()) >= 0
        else:
            with pytest.raises(ValueError, match=r"NaN or infinite|in \[0, 1\]"):
                call()


def test_class_wise_quantile_bins_match_numpy():
    probs, labels = probabilities(n=600, k=3, seed=20)
    p, y = probs.numpy(), labels.numpy()
    errors = []
    for k in range(3):
        edges = np.quantile(p[:, k], np.linspace(0, 1, 6))
        edges[0], edges[-1] = 0.0, 1.0
        counts, conf, acc = _numpy_bins(p[:, k], (y == k).astype(float), edges)
        errors.append(np.sum(np.abs(acc - conf) * counts) / counts.sum())
    found = classwise_calibration_error(probs, labels, n_bins=5, strategy="quantile")
    assert float(found) == pytest.approx(np.mean(errors), abs=1e-12)


def test_bfloat16_rounding_of_true_probabilities_is_not_refused():
    # [0.498, 0.502] rounds to [0.498046875, 0.50390625] in bfloat16: a sum 1.00195 that is
    # pure rounding, beyond 1e-3 but within bfloat16's epsilon.
    probs = torch.tensor([[0.498, 0.502], [0.25, 0.75]], dtype=torch.bfloat16)
    assert float(probs.float().sum(dim=1)[0]) > 1.001
    value = expected_calibration_error(probs, torch.tensor([1, 1]), n_bins=2)
    reference = (abs(0.50390625 - 1) + abs(0.75 - 1)) / 2  # both in the top bin: |conf - acc|
    assert float(value) == pytest.approx(reference, abs=1e-12)


def test_metrics_of_probabilities_that_require_grad_keep_their_graph():
    probs, labels = probabilities(n=500, k=6, seed=23)
    leaf = probs.clone().requires_grad_()
    ece = expected_calibration_error(leaf, labels)
    assert float(ece) == float(expected_calibration_error(probs, labels))
    ece.backward()
    assert leaf.grad is not None and bool(leaf.grad.abs().sum() > 0)
    assert float(brier_score(leaf, labels)) == pytest.approx(float(brier_score(probs, labels)))


def test_half_precision_rows_are_judged_by_their_float32_sums():
    probs = torch.full((100, 4), 0.25, dtype=torch.float16)
    probs[7] = torch.tensor([0.5, 0.5, 0.00122, 0.0])  # sums to 1.00122: rounds to 1.00098 in half
    with pytest.raises(ValueError, match="sum to 1"):
        expected_calibration_error(probs, torch.zeros(100, dtype=torch.long))


@pytest.mark.parametrize(("total", "refused"), [(1.00095, False), (0.99905, False), (1.0011, True)])
def test_row_sums_near_the_tolerance_are_judged_as_the_input_layer_does(total, refused):
    probs, labels = probabilities(n=300, k=5, seed=24, dtype=torch.float32)
    probs[11] *= total / float(probs[11].sum())
    if refused:
        with pytest.raises(ValueError, match="sum to 1"):
            expected_calibration_error(probs, labels)
    else:
        expected = float(expected_calibration_error(probs.double(), labels))
        assert float(expected_calibration_error(probs, labels)) == pytest.approx(expected)
