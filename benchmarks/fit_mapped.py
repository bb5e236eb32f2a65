"""Fit a temperature on logits in a file, read in row chunks: time, passes and peak memory.

Writes N x K logits (3 * randn, labels drawn at T = 2) block by block, never holding them whole,
as a bfloat16 ``.safetensors`` file and a float16 ``.npy`` file of the same size, then fits:

* ``open_logits(safetensors)`` and ``open_logits(npy)``: positioned file reads, one chunk at a time;
* ``numpy.load(npy, mmap_mode="r")``: the same chunks read through a memory map;
* the bfloat16 logits loaded whole into memory, when they fit in ``--max-in-memory`` (a check that
  the chunked fit finds the same optimum).

For each route it prints the fit's time, the passes over the logits, T, and the growth during the
fit of peak RSS and of peak anonymous memory (the process's own allocations, without file pages
mapped into it), beyond the memory just before the fit. Pages of a memory map count in RSS as
reclaimable page cache; the anonymous peak is what the fit itself holds.

The files go to ``--folder`` (default: a temporary folder, removed afterwards).

Usage:
    python benchmarks/fit_mapped.py                           # 100,000 x 16,000 (3.2 GB each)
    python benchmarks/fit_mapped.py --rows 200000 --classes 32000 --folder /big/disk  # 12.8 GB
"""

from __future__ import annotations

import argparse
import json
import shutil
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

import torchcal

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fit_temperature import PeakRSS, release_free_memory

BLOCK_ELEMENTS = 1 << 24


def write_files(folder: Path, n: int, k: int, seed: int = 0) -> tuple[Path, Path, torch.Tensor]:
    """The same logits as bfloat16 safetensors and float16 .npy, written one row block at a time."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.empty(n, dtype=torch.long)
    safetensors_path, npy_path = folder / "val.safetensors", folder / "val.npy"
    header = {"logits": {"dtype": "BF16", "shape": [n, k], "data_offsets": [0, n * k * 2]}}
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)  # the format pads the header to 8 bytes
    block = max(1, BLOCK_ELEMENTS // k)
    with open(safetensors_path, "wb") as safetensors_file, open(npy_path, "wb") as npy_file:
        safetensors_file.write(struct.pack("<Q", len(encoded)) + encoded)
        header = {"descr": "<f2", "fortran_order": False, "shape": (n, k)}
        np.lib.format.write_array_header_1_0(npy_file, header)
        for start in range(0, n, block):
            rows = torch.randn(min(block, n - start), k, generator=generator) * 3
            probs = torch.softmax(rows / 2, dim=1)
            labels[start : start + len(rows)] = torch.multinomial(probs, 1, generator=generator)[
                :, 0
            ]
            safetensors_file.write(rows.bfloat16().view(torch.int16).numpy().tobytes())
            npy_file.write(rows.half().numpy().tobytes())
    return safetensors_path, npy_path, labels


def anonymous_rss() -> int | None:
    """RssAnon of this process in bytes (Linux), or None."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class PeakAnonymous:
    """The largest RssAnon seen by a thread sampling every 5 ms, beyond its value at the start."""

    def __enter__(self) -> PeakAnonymous:
        self.baseline = anonymous_rss()
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            value = anonymous_rss()
            if value is not None and self.peak is not None:
                self.peak = max(self.peak, value)
            time.sleep(0.005)

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth(self) -> int | None:
        return None if self.baseline is None else self.peak - self.baseline


def measure(name: str, logits, labels: torch.Tensor, file_bytes: int) -> dict:
    release_free_memory()
    with PeakRSS() as peak, PeakAnonymous() as anonymous:
        start = time.perf_counter()
        scaler = torchcal.TemperatureScaler().fit(logits, labels, progress=False)
        seconds = time.perf_counter() - start
    result = scaler.fit_result
    return {
        "route": name,
        "time": seconds,
        "passes": result.data_passes,
        "T": scaler.temperature,
        "rss": peak.growth,
        "anonymous": anonymous.growth,
        "file_bytes": file_bytes,
    }


def megabytes(value: int | None, file_bytes: int) -> str:
    if value is None:
        return "-"
    return f"{value / 1e6:,.0f} MB ({value / file_bytes:.3f}x)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--classes", type=int, default=16_000)
    parser.add_argument("--folder", type=Path, help="where to write the files (kept)")
    parser.add_argument(
        "--max-in-memory", type=float, default=4e9, help="bytes up to which to also fit in memory"
    )
    args = parser.parse_args()
    folder = args.folder or Path(tempfile.mkdtemp(prefix="fit_mapped_"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        start = time.perf_counter()
        safetensors_path, npy_path, labels = write_files(folder, args.rows, args.classes)
        file_bytes = safetensors_path.stat().st_size
        print(
            f"# torch {torch.__version__}, {torch.get_num_threads()} threads; "
            f"{args.rows:,} x {args.classes:,} logits, {file_bytes / 1e9:.2f} GB per file "
            f"(bfloat16 safetensors, float16 .npy), written in {time.perf_counter() - start:.0f} s"
        )
        routes = [
            ("open_logits(.safetensors), bfloat16", lambda: torchcal.open_logits(safetensors_path)),
            ("open_logits(.npy), float16", lambda: torchcal.open_logits(npy_path)),
            ("numpy.load(.npy, mmap_mode='r'), float16", lambda: np.load(npy_path, mmap_mode="r")),
        ]
        if file_bytes <= args.max_in_memory:
            routes.append(
                ("in memory, bfloat16", lambda: torchcal.open_logits(safetensors_path)[:])
            )
        rows = [measure(name, make(), labels, file_bytes) for name, make in routes]
        header = ["route", "time", "passes", "T", "peak RSS growth", "peak anonymous growth"]
        print("| " + " | ".join(header) + " |")
        print("|" + "|".join("---" for _ in header) + "|")
        for row in rows:
            cells = [
                row["route"],
                f"{row['time']:.1f} s",
                str(row["passes"]),
                f"{row['T']:.6f}",
                megabytes(row["rss"], file_bytes),
                megabytes(row["anonymous"], file_bytes),
            ]
            print("| " + " | ".join(cells) + " |")
    finally:
        if args.folder is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
