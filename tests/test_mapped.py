"""Fitting on logits read in row chunks: memory-mapped .npy, safetensors files, numpy arrays."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tempered_logits
from safetensors.torch import save_file

from torchcal import LogitsFile, TemperatureScaler, open_logits
from torchcal._inputs.chunks import CPU_CHUNK_ELEMENTS
from torchcal.io.files import load_scaler

N, K = 20_000, 50
ROOT = Path(__file__).resolve().parents[1]


def fit(logits, labels, **options):
    return TemperatureScaler(**options).fit(logits, labels, progress=False)


@pytest.fixture(scope="module")
def problem():
    return tempered_logits(N, K, temperature=2.0, seed=11)


class CountingSource:
    """A row source that records how many rows each read asks for."""

    def __init__(self, source, reads=None) -> None:
        self.source = source
        self.shape, self.dtype, self.device = source.shape, source.dtype, source.device
        self.reads = [] if reads is None else reads

    def read(self, start: int, stop: int) -> torch.Tensor:
        self.reads.append(stop - start)
        return self.source.read(start, stop)

    def every(self, step: int, offset: int = 0) -> CountingSource:
        return CountingSource(self.source.every(step, offset), self.reads)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_a_safetensors_file_fits_like_the_same_logits_in_memory(problem, tmp_path, dtype):
    logits, labels = problem
    logits = logits.to(dtype)
    save_file({"val_logits": logits, "other": torch.zeros(3)}, tmp_path / "val.safetensors")
    with open_logits(tmp_path / "val.safetensors", key="val_logits") as stored:
        assert stored.shape == logits.shape and stored.dtype == dtype
        from_file = fit(stored, labels)
    in_memory = fit(logits, labels)
    assert from_file.temperature == pytest.approx(in_memory.temperature, rel=1e-9)
    assert from_file.fit_result.nll_after == pytest.approx(in_memory.fit_result.nll_after, 1e-9)
    assert from_file.fit_result.ece_after == pytest.approx(in_memory.fit_result.ece_after, 1e-9)
    assert from_file.fit_result.n_samples == N


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_a_memory_mapped_npy_fits_like_the_same_logits_in_memory(problem, tmp_path, dtype):
    logits, labels = problem
    array = logits.numpy().astype(dtype)
    np.save(tmp_path / "val.npy", array)
    in_memory = fit(torch.from_numpy(array), labels).temperature
    mapped = np.load(tmp_path / "val.npy", mmap_mode="r")
    assert fit(mapped, labels.numpy()).temperature == pytest.approx(in_memory, rel=1e-9)
    assert fit(open_logits(tmp_path / "val.npy"), labels).temperature == pytest.approx(
        in_memory, rel=1e-9
    )


def test_the_fit_reads_one_chunk_of_rows_at_a_time(problem, tmp_path):
    logits, labels = problem
    np.save(tmp_path / "val.npy", logits.numpy())
    chunk_rows = CPU_CHUNK_ELEMENTS // K
    for source in (open_logits(tmp_path / "val.npy"), np.load(tmp_path / "val.npy", mmap_mode="r")):
        from torchcal._inputs.sources import as_source

        counting = CountingSource(as_source(source))
        scaler = fit(counting, labels)
        assert max(counting.reads) <= chunk_rows
        # every pass reads each row once; the warm start reads every 16th row
        passes = scaler.fit_result.data_passes
        assert sum(counting.reads) >= passes * N
        assert scaler.temperature == pytest.approx(fit(logits, labels).temperature, rel=1e-9)


def test_strided_and_indexed_reads_match_numpy(tmp_path):
    rng = np.random.default_rng(0)
    narrow = rng.standard_normal((1000, 7)).astype(np.float32)
    wide = rng.standard_normal((40, 20_000)).astype(np.float32)  # 80 kB rows: one read per row
    for array in (narrow, wide):
        np.save(tmp_path / "a.npy", array)
        stored = open_logits(tmp_path / "a.npy")
        assert len(stored) == len(array)
        np.testing.assert_array_equal(stored[3:29:5].numpy(), array[3:29:5])
        np.testing.assert_array_equal(stored[-1].numpy(), array[-1])
        np.testing.assert_array_equal(stored[::-3].numpy(), array[::-3])
        view = stored.every(16, 5).every(2, 1)
        np.testing.assert_array_equal(view.read(0, len(view)).numpy(), array[5::16][1::2])
        np.testing.assert_array_equal(view.read(1, 2).numpy(), array[5::16][1::2][1:2])
    assert "shape=(40, 20000)" in repr(stored)


def test_binary_logits_and_ignored_labels_from_a_file(tmp_path):
    generator = torch.Generator().manual_seed(2)
    binary = torch.randn(5_000, generator=generator) * 3
    targets = torch.bernoulli(torch.sigmoid(binary / 2), generator=generator).long()
    np.save(tmp_path / "binary.npy", binary.numpy())
    np.save(tmp_path / "column.npy", binary[:, None].numpy())
    expected = fit(binary, targets).temperature
    for name in ("binary.npy", "column.npy"):
        assert fit(open_logits(tmp_path / name), targets).temperature == pytest.approx(
            expected, 1e-9
        )
    logits, labels = tempered_logits(3_000, 6, seed=4)
    labels[::7] = -100
    save_file({"logits": logits}, tmp_path / "tokens.safetensors")
    kept = labels != -100
    expected = fit(logits[kept], labels[kept])
    from_file = fit(open_logits(tmp_path / "tokens.safetensors"), labels)
    assert from_file.temperature == pytest.approx(expected.temperature, rel=1e-9)
    assert from_file.fit_result.n_samples == int(kept.sum())


def test_nan_logits_in_a_file_are_found_in_the_chunks(tmp_path):
    logits, labels = tempered_logits(2_000, 10, seed=5)
    logits[1234, 3] = float("nan")
    np.save(tmp_path / "bad.npy", logits.numpy())
    with pytest.raises(ValueError, match=r"NaN or infinite values in 1 row, e\.g\. row 1234"):
        fit(open_logits(tmp_path / "bad.npy"), labels)
    with pytest.raises(ValueError, match="row 1234"):
        fit(np.load(tmp_path / "bad.npy", mmap_mode="r"), labels)


def test_unreadable_files_and_unsupported_layouts_are_named(tmp_path):
    np.save(tmp_path / "ints.npy", np.zeros((4, 3), dtype=np.int64))
    np.save(tmp_path / "fortran.npy", np.asfortranarray(np.zeros((4, 3), dtype=np.float32)))
    np.save(tmp_path / "maps.npy", np.zeros((4, 3, 2), dtype=np.float32))
    save_file({"a": torch.zeros(2, 2), "b": torch.zeros(2, 2)}, tmp_path / "two.safetensors")
    (tmp_path / "short.npy").write_bytes((tmp_path / "maps.npy").read_bytes()[:-8])
    labels = torch.zeros(4, dtype=torch.long)
    cases = [
        (lambda: open_logits(tmp_path / "x.pt"), ValueError, ".npy and .safetensors"),
        (lambda: open_logits(tmp_path / "none.npy"), ValueError, "no such file"),
        (lambda: open_logits(tmp_path / "ints.npy"), TypeError, "int64"),
        (lambda: open_logits(tmp_path / "fortran.npy"), ValueError, "Fortran"),
        (lambda: open_logits(tmp_path / "short.npy"), ValueError, "truncated"),
        (lambda: open_logits(tmp_path / "two.safetensors"), ValueError, "holds 2 tensors"),
        (lambda: open_logits(tmp_path / "two.safetensors", "c"), ValueError, "no tensor named"),
        (lambda: fit(open_logits(tmp_path / "maps.npy"), labels), ValueError, r"\(N, K\) rows"),
        (lambda: fit(np.zeros((4, 3), np.int32), labels), TypeError, "float16, float32"),
        (
            lambda: fit(np.zeros((4, 3), np.float32), labels, inputs="probs"),
            ValueError,
            "rows must sum to 1",
        ),
        (lambda: open_logits(tmp_path / "two.safetensors", "a")["x"], TypeError, "int or a slice"),
    ]
    for action, error, message in cases:
        with pytest.raises(error, match=message):
            action()


def test_the_cli_fit_reads_npy_and_safetensors_in_chunks(problem, tmp_path, monkeypatch):
    from torchcal.cli import main

    logits, labels = problem
    np.save(tmp_path / "logits.npy", logits.numpy())
    save_file({"logits": logits.bfloat16()}, tmp_path / "logits.safetensors")
    np.save(tmp_path / "labels.npy", labels.numpy())
    reads = []
    original = LogitsFile.read
    monkeypatch.setattr(
        LogitsFile, "read", lambda self, a, b: reads.append(b - a) or original(self, a, b)
    )
    for name, expected in [
        ("logits.npy", fit(logits, labels).temperature),
        ("logits.safetensors", fit(logits.bfloat16(), labels).temperature),
    ]:
        reads.clear()
        assert (
            main(
                [
                    "fit",
                    str(tmp_path / name),
                    str(tmp_path / "labels.npy"),
                    "-o",
                    str(tmp_path / "s.pt"),
                ]
            )
            == 0
        )
        assert load_scaler(tmp_path / "s.pt").temperature == pytest.approx(expected, rel=1e-9)
        assert reads and max(reads) <= CPU_CHUNK_ELEMENTS // K


@pytest.mark.slow  # a script in a subprocess, end to end; pytest -m slow runs it
def test_the_benchmark_script_runs_on_a_small_file(tmp_path):
    script = [sys.executable, str(ROOT / "benchmarks" / "fit_mapped.py"), "--rows", "3000"]
    script += ["--classes", "64"]
    result = subprocess.run(
        [*script, "--folder", str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "safetensors" in result.stdout and "peak RSS" in result.stdout
