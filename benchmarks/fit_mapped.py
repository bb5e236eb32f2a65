"""Fit a temperature on logits in a file, read in row chunks: time, passes and peak memory.

Writes N x K logits (3 * randn, labels drawn at T = 2) block by block, never holding them whole,
as a bfloat16 ``.safetensors`` file and a float16 ``.npy`` file of the same size, then fits:

* ``open_logits(safetensors)`` and ``open_logits(npy)``: positioned file reads, one chunk at a time;
* ``numpy.load(npy, mmap_mode="r")``: the same chunks read through a memory map;
* the bfloat16 logits loaded whole into memory, when they fit in ``--max-in-memory`` (a check that
  the chunked fit finds the same optimum).

Each route is fitted in a new process, after a warm-up fit on its first 256 rows. For each it
prints the fit's time, the passes over the logits, T, and the growth during the fit of peak RSS and
of peak anonymous memory (the process's own allocations, without file pages mapped into it),
beyond the memory just before the fit. Pages of a memory map count in RSS as reclaimable page
cache; the anonymous peak is what the fit itself holds.

The files go to ``--folder`` (default: a temporary folder, removed afterwards).

Usage:
    python benchmarks/fit_mapped.py                           # 50,000 x 16,000 (1.6 GB each)
    python benchmarks/fit_mapped.py --rows 200000 --classes 32000 --no-npy  # 12.8 GB
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import struct
import subprocess
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


def write_files(
    folder: Path, n: int, k: int, with_npy: bool, seed: int = 0
) -> tuple[Path, Path | None, torch.Tensor]:
    """The logits as bfloat16 safetensors (and float16 .npy), written one row block at a time."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.empty(n, dtype=torch.long)
    safetensors_path = folder / "val.safetensors"
    npy_path = folder / "val.npy" if with_npy else None
    header = {"logits": {"dtype": "BF16", "shape": [n, k], "data_offsets": [0, n * k * 2]}}
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)  # the format pads the header to 8 bytes
    block = max(1, BLOCK_ELEMENTS // k)
    with contextlib.ExitStack() as files:
        safetensors_file = files.enter_context(open(safetensors_path, "wb"))
        safetensors_file.write(struct.pack("<Q", len(encoded)) + encoded)
        npy_file = None
        if npy_path is not None:
            npy_file = files.enter_context(open(npy_path, "wb"))
            header = {"descr": "<f2", "fortran_order": False, "shape": (n, k)}
            np.lib.format.write_array_header_1_0(npy_file, header)
        for start in range(0, n, block):
            rows = torch.randn(min(block, n - start), k, generator=generator) * 3
            probs = torch.softmax(rows / 2, dim=1)
            drawn = torch.multinomial(probs, 1, generator=generator)
            labels[start : start + len(rows)] = drawn[:, 0]
            safetensors_file.write(rows.bfloat16().view(torch.int16).numpy().tobytes())
            if npy_file is not None:
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


ROUTES = {
    "safetensors": "open_logits(.safetensors), bfloat16",
    "npy": "open_logits(.npy), float16",
    "mmap": "numpy.load(.npy, mmap_mode='r'), float16",
    "memory": "in memory, bfloat16",
}


def open_route(route: str, folder: Path):
    if route == "safetensors":
        return torchcal.open_logits(folder / "val.safetensors")
    if route == "npy":
        return torchcal.open_logits(folder / "val.npy")
    if route == "mmap":
        return np.load(folder / "val.npy", mmap_mode="r")
    return torchcal.open_logits(folder / "val.safetensors")[:]


def probe(route: str, folder: Path) -> None:
    """Fit once on ``route`` in this (fresh) process and print what it cost as JSON."""
    labels = torch.from_numpy(np.load(folder / "labels.npy"))
    logits = open_route(route, folder)
    # kernels, thread pools and per-dtype set-up (~80 MB once per process for a half dtype)
    torchcal.TemperatureScaler().fit(logits[:256], labels[:256], progress=False)
    release_free_memory()
    with PeakRSS() as peak, PeakAnonymous() as anonymous:
        start = time.perf_counter()
        scaler = torchcal.TemperatureScaler().fit(logits, labels, progress=False)
        seconds = time.perf_counter() - start
    measured = {
        "time": seconds,
        "passes": scaler.fit_result.data_passes,
        "T": scaler.temperature,
        "rss": peak.growth,
        "anonymous": anonymous.growth,
    }
    print(json.dumps(measured))


def measure(route: str, folder: Path) -> dict:
    """:func:`probe` in a new process, so that no earlier allocation hides or inflates its peak."""
    command = [sys.executable, __file__, "--probe", route, "--folder", str(folder)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def megabytes(value: int | None, file_bytes: int) -> str:
    if value is None:
        return "-"
    return f"{value / 1e6:,.0f} MB ({value / file_bytes:.3f}x)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--classes", type=int, default=16_000)
    parser.add_argument("--no-npy", action="store_true", help="only the safetensors file")
    parser.add_argument("--folder", type=Path, help="where to write the files (kept)")
    parser.add_argument(
        "--max-in-memory", type=float, default=4e9, help="bytes up to which to also fit in memory"
    )
    parser.add_argument("--probe", choices=ROUTES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        probe(args.probe, args.folder)
        return
    folder = args.folder or Path(tempfile.mkdtemp(prefix="fit_mapped_"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        start = time.perf_counter()
        safetensors_path, npy_path, labels = write_files(
            folder, args.rows, args.classes, not args.no_npy
        )
        np.save(folder / "labels.npy", labels.numpy())
        file_bytes = safetensors_path.stat().st_size
        files = "bfloat16 safetensors" + ("" if npy_path is None else ", float16 .npy")
        print(
            f"# torch {torch.__version__}, {torch.get_num_threads()} threads; "
            f"{args.rows:,} x {args.classes:,} logits, {file_bytes / 1e9:.2f} GB per file "
            f"({files}), written in {time.perf_counter() - start:.0f} s; each fit in a new process"
        )
        routes = ["safetensors"] + ([] if npy_path is None else ["npy", "mmap"])
        if file_bytes <= args.max_in_memory:
            routes.append("memory")
        header = ["route", "time", "passes", "T", "peak RSS growth", "peak anonymous growth"]
        print("| " + " | ".join(header) + " |")
        print("|" + "|".join("---" for _ in header) + "|")
        for route in routes:
            row = measure(route, folder)
            cells = [
                ROUTES[route],
                f"{row['time']:.1f} s",
                str(row["passes"]),
                f"{row['T']:.6f}",
                megabytes(row["rss"], file_bytes),
                megabytes(row["anonymous"], file_bytes),
            ]
            print("| " + " | ".join(cells) + " |", flush=True)
    finally:
        if args.folder is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
