"""Reading data files one array at a time, and writing outputs atomically."""

from __future__ import annotations

import os
import tracemalloc
import zipfile

import numpy as np
import pytest
import torch

from torchcal import TemperatureScaler
from torchcal.io.files import DataFileError, load_scaler, load_tensor, output_file, save_scaler

ZEROS_BYTES = 64 * 2**20  # the large member: 64 MiB of zeros, a few hundred KiB compressed


def write_npz_with_large_member(path) -> np.ndarray:
    """An .npz holding a 10-element array and a 64 MiB zero array, written without ever holding
    the zeros in memory; returns the small array."""
    small = np.arange(10, dtype=np.int64)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open("small.npy", "w") as member:
            np.lib.format.write_array(member, small)
        with archive.open("zeros.npy", "w", force_zip64=True) as member:
            header = {"descr": "<f8", "fortran_order": False, "shape": (ZEROS_BYTES // 8,)}
            np.lib.format.write_array_header_1_0(member, header)
            chunk = bytes(2**20)
            for _ in range(ZEROS_BYTES // len(chunk)):
                member.write(chunk)
    return small


def test_one_npz_member_is_read_without_decompressing_the_others(tmp_path):
    path = tmp_path / "mixed.npz"
    small = write_npz_with_large_member(path)
    assert path.stat().st_size < ZEROS_BYTES / 100  # the zeros compress well
    tracemalloc.start()  # numpy reports its array buffers to tracemalloc
    try:
        loaded = load_tensor(path, "small")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert torch.equal(loaded, torch.from_numpy(small))
    # reading every member first, as before, peaked above 64 MiB; one member needs kilobytes
    assert peak < ZEROS_BYTES / 16, f"peak {peak / 2**20:.1f} MiB while reading 80 bytes"
    with np.load(path) as archive:  # the file is sound: the large member reads back too
        assert archive["zeros"].shape == (ZEROS_BYTES // 8,)


def test_key_errors_name_the_option(tmp_path):
    np.savez(tmp_path / "both.npz", logits=np.zeros((3, 2)), labels=np.zeros(3, dtype=np.int64))
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(2), "b": torch.ones(2)}, tmp_path / "two.safetensors")
    for name in ("both.npz", "two.safetensors"):
        with pytest.raises(DataFileError, match=r"holds 2 arrays .*; name one with --logits-key"):
            load_tensor(tmp_path / name, None, "--logits-key")
        with pytest.raises(DataFileError, match=r"no array named 'x'.*--labels-key"):
            load_tensor(tmp_path / name, "x", "--labels-key")
    assert torch.equal(load_tensor(tmp_path / "two.safetensors", "b"), torch.ones(2))
    assert load_tensor(tmp_path / "both.npz", "labels").dtype == torch.int64


def test_output_file_refuses_what_it_cannot_replace(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")
    refusals = {
        tmp_path: r"cannot write .*: '.*' is a folder, not a file",
        tmp_path / "missing" / "report.json": r"the folder .*missing' does not exist",
        "/dev/full": r"/dev/full: .*not a regular file",
    }
    for path, message in refusals.items():
        with pytest.raises(OSError, match=message), output_file(path, "wb"):
            pass
    assert os.path.exists("/dev/full") and not os.path.isfile("/dev/full")
    full = r"cannot write .*report.json: No space left on device"
    with pytest.raises(OSError, match=full), output_file(target) as file:
        file.write("new, half written")
        raise OSError(28, "No space left on device", str(tmp_path / ".report.json.x.tmp"))
    assert target.read_text() == "old"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["report.json"]


def test_save_scaler_keeps_the_earlier_file_when_the_write_fails(tmp_path, monkeypatch):
    logits = torch.randn(200, 3, generator=torch.Generator().manual_seed(0)) * 3
    labels = torch.distributions.Categorical(logits=logits / 2).sample()
    scaler = TemperatureScaler().fit(logits, labels, progress=False)
    path = save_scaler(scaler, tmp_path / "scaler.pt")
    before = path.read_bytes()
    mode = 0o640
    path.chmod(mode)

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("torchcal.io._atomic.os.fsync", fail)
    with pytest.raises(OSError, match=r"cannot write .*scaler.pt: No space left on device"):
        save_scaler(TemperatureScaler().fit(logits * 2, labels, progress=False), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scaler.pt"]
    monkeypatch.undo()
    refitted = TemperatureScaler().fit(logits * 2, labels, progress=False)
    save_scaler(refitted, path)
    assert load_scaler(path).temperature == refitted.temperature
    assert path.stat().st_mode & 0o777 == mode  # the rewritten file keeps the earlier mode
