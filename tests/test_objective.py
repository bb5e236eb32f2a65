"""The streamed objectives: chunked reads, exact binning, no copies of the logits."""

from __future__ import annotations

import pytest
import torch
from conftest import tempered_logits

from torchcal import TemperatureScaler
from torchcal._inputs.chunks import CPU_CHUNK_ELEMENTS
from torchcal._inputs.sources import TensorSource
from torchcal._objectives.temperature import (
    CLASSES_FIRST_MAX_CLASSES,
    SigmoidTemperatureNLL,
    SoftmaxTemperatureNLL,
)
from torchcal._terms import (
    BinSums,
    bin_index,
    bin_sums,
    uniform_bin_index,
    uniform_bin_sums,
    uniform_edges,
)


@pytest.mark.parametrize("n_bins", [1, 7, 10, 15, 16, 64, 1000, 1023, 1024, 4097, 100_000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_uniform_binning_equals_bucketize_on_the_float64_edges(n_bins, dtype):
    edges = uniform_edges(n_bins)
    inner = edges.float()
    confidences = torch.cat(
        [
            torch.rand(200_000, generator=torch.Generator().manual_seed(n_bins)),
            inner,
            torch.nextafter(inner, torch.tensor(2.0)),
            torch.nextafter(inner, torch.tensor(-1.0)).clamp(0, 1),
        ]
    ).to(dtype)
    if dtype == torch.float64:  # the float64 edges themselves and their neighbours
        confidences = torch.cat(
            [
                confidences,
                edges,
                torch.nextafter(edges, torch.tensor(2.0, dtype=dtype)).clamp(0, 1),
                torch.nextafter(edges, torch.tensor(-1.0, dtype=dtype)).clamp(0, 1),
            ]
        )
    correct = torch.rand(len(confidences)) > 0.4
    expected = bin_sums(confidences, correct, edges)
    assert torch.equal(uniform_bin_index(confidences, n_bins), bin_index(confidences, edges))
    found = uniform_bin_sums(confidences, correct, n_bins)
    assert torch.equal(found[0], expected[0]) and torch.equal(found[2], expected[2])
    assert torch.allclose(found[1], expected[1], rtol=1e-12, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_a_fit_reads_the_logits_one_chunk_at_a_time(monkeypatch, dtype):
    logits, labels = tempered_logits(20_000, 40, seed=7)
    logits = logits.to(dtype)
    reads = []
    original = TensorSource.read
    monkeypatch.setattr(
        TensorSource, "read", lambda self, a, b: reads.append(b - a) or original(self, a, b)
    )
    scaler = TemperatureScaler().fit(logits, labels, progress=False)
    assert max(reads) <= CPU_CHUNK_ELEMENTS // 40
    full = [chunk for chunk in reads if chunk == CPU_CHUNK_ELEMENTS // 40]
    assert len(full) >= scaler.fit_result.data_passes * (20_000 // (CPU_CHUNK_ELEMENTS // 40))


@pytest.mark.parametrize("method", ["lbfgs", "newton"])
def test_data_passes_count_every_row_read_when_the_warm_start_takes_all_rows(monkeypatch, method):
    logits, labels = tempered_logits(1_000, 40, seed=9)  # below 4096 rows: no subsample
    rows_read = []
    original = TensorSource.read
    monkeypatch.setattr(
        TensorSource, "read", lambda self, a, b: rows_read.append(b - a) or original(self, a, b)
    )
    scaler = TemperatureScaler(method=method).fit(logits, labels, progress=False)
    result = scaler.fit_result
    assert sum(rows_read) == result.data_passes * 1_000
    assert result.data_passes > 1 + result.function_evaluations  # the warm start's passes count


def test_ignored_rows_are_skipped_without_copying_the_rest():
    logits, labels = tempered_logits(6_000, 8, seed=8)
    labels[::3] = -100
    kept = labels != -100
    masked = TemperatureScaler().fit(logits, labels, progress=False)
    dropped = TemperatureScaler().fit(logits[kept], labels[kept], progress=False)
    assert masked.temperature == pytest.approx(dropped.temperature, rel=1e-6)
    assert masked.fit_result.n_samples == int(kept.sum())
    assert masked.fit_result.ece_after == pytest.approx(dropped.fit_result.ece_after, abs=1e-9)


@pytest.mark.parametrize("ignored", [False, True])
def test_sigmoid_nan_logits_after_the_first_chunk_are_named_by_entry(ignored):
    logits = torch.randn(300, generator=torch.Generator().manual_seed(3))
    targets = (logits > 0).long()
    logits[[130, 250]] = torch.tensor([float("nan"), float("inf")])
    if ignored:
        targets[::4] = -100
    with pytest.raises(ValueError, match=r"in 2 entries, e\.g\. entry 130;"):
        SigmoidTemperatureNLL(logits, targets, ignore_index=-100, chunk_elements=50)


def test_the_label_range_covers_every_kept_label_when_some_are_ignored():
    logits = torch.randn(60, 3, generator=torch.Generator().manual_seed(4))
    labels = torch.tensor([-100] * 10 + [1] * 10 + [0, 2] * 20)  # chunks of 8 rows
    objective = SoftmaxTemperatureNLL(logits, labels, ignore_index=-100, chunk_elements=24)
    assert objective.label_range == (0, 2)
    labels[:20] = -100  # only whole chunks are ignored
    objective = SoftmaxTemperatureNLL(logits, labels, ignore_index=-100, chunk_elements=24)
    assert objective.label_range == (0, 2)
    labels[20:] = 1
    labels[::3] = -100
    objective = SoftmaxTemperatureNLL(logits, labels, ignore_index=-100, chunk_elements=24)
    assert objective.label_range == (1, 1)


def _float64_derivatives(nll, beta: float) -> list[float]:
    """The first four derivatives of a float64 function of beta, by nested autograd."""
    derivative, values = nll, []
    for _ in range(4):
        derivative = torch.func.grad(derivative)
        values.append(float(derivative(torch.tensor(beta, dtype=torch.float64))))
    return values


@pytest.mark.parametrize("n_classes", [12, CLASSES_FIRST_MAX_CLASSES + 1, 40])
@pytest.mark.parametrize("beta", [0.3, 1.0, 2.5])
def test_softmax_taylor_derivatives_match_float64_autograd(beta, n_classes):
    # few classes are computed classes-first, more row by row: both agree with the reference,
    # over several chunks and with ignored rows dropped from each
    logits, labels = tempered_logits(3_000, n_classes, seed=12)
    labels[::7] = -100
    kept = labels != -100
    z = logits[kept].double()
    z_label = z.gather(1, labels[kept][:, None]).squeeze(1)

    def nll(b):
        return (torch.logsumexp(z * b, dim=1) - b * z_label).mean()

    expected = _float64_derivatives(nll, beta)
    objective = SoftmaxTemperatureNLL(
        logits, labels, ignore_index=-100, chunk_elements=n_classes * 500
    )
    found = objective.evaluate(beta, taylor=True)
    assert [found.grad, found.hess, found.third, found.fourth] == pytest.approx(
        expected, rel=1e-4, abs=1e-6 * abs(expected[1])
    )
    assert found.nll == pytest.approx(float(nll(torch.tensor(beta, dtype=torch.float64))))


@pytest.mark.parametrize("beta", [0.3, 1.0, 2.5])
def test_sigmoid_taylor_derivatives_match_float64_autograd(beta):
    generator = torch.Generator().manual_seed(13)
    logits = torch.randn(5_000, generator=generator) * 3
    targets = (torch.rand(5_000, generator=generator) < torch.sigmoid(logits / 2)).float()
    z, t = logits.double(), targets.double()

    def nll(b):
        return torch.nn.functional.binary_cross_entropy_with_logits(z * b, t)

    expected = _float64_derivatives(nll, beta)
    objective = SigmoidTemperatureNLL(logits, targets, chunk_elements=700)
    found = objective.evaluate(beta, taylor=True)
    assert [found.grad, found.hess, found.third, found.fourth] == pytest.approx(
        expected, rel=1e-4, abs=1e-6 * abs(expected[1])
    )


@pytest.mark.parametrize("sizes", [[700], [300, 300], [90] * 9, [50, 700, 20], [2_000]])
def test_bin_sums_of_chunks_equal_those_of_all_the_confidences_at_once(sizes):
    # one chunk is binned as given; more are buffered (capacity 400 here), flushed when full,
    # and a chunk larger than the buffer is binned on its own
    generator = torch.Generator().manual_seed(len(sizes))
    parts = [torch.rand(n, generator=generator) for n in sizes]
    right = [torch.rand(n, generator=generator) < 0.6 for n in sizes]
    sums = BinSums(uniform_edges(15, torch.device("cpu")), 400, torch.float32)
    for confidences, correct in zip(parts, right, strict=True):
        sums.add(confidences, correct)
    expected = uniform_bin_sums(torch.cat(parts), torch.cat(right), 15)
    found = sums.result()
    assert torch.equal(found[0], expected[0].to(torch.float64))
    assert torch.equal(found[2], expected[2])
    torch.testing.assert_close(found[1], expected[1], rtol=1e-14, atol=1e-12)


def test_bin_sums_keep_no_chunk_once_a_second_comes():
    # holding many small chunks scattered small allocations among a pass's large ones and grew
    # the heap by 100 MB over a file; only a lone chunk may be held as given
    import weakref

    sums = BinSums(uniform_edges(15, torch.device("cpu")), 1_000, torch.float32)
    chunks = [(torch.rand(10), torch.rand(10) < 0.5) for _ in range(3)]
    held = [weakref.ref(confidences) for confidences, _ in chunks]
    for confidences, correct in chunks:
        sums.add(confidences, correct)
    del chunks, confidences, correct
    assert all(reference() is None for reference in held)
    assert int(sums.result()[0].sum()) == 30
