"""Fit one temperature with torchcal and with every installed peer, on the same logits.

Prints, per problem size: time (median of --repeats), ratio to torchcal, fitted T, |T/T* - 1|
against the float64 optimum T* (scipy bounded Brent, xatol 1e-10), the passes over the logits
(torchcal only), the time in units of one pass of ``exp`` over the logits (``torch.logsumexp``
over the classes, median of --repeats: the physical floor of a fit is a few of these), and peak
memory beyond the logits: in a fresh subprocess per fit, after a warm-up
fit on 256 rows (imports, kernels and thread pools are not the fit's memory), the growth of peak
RSS during the fit over the RSS just before it, as a multiple of the logits' size and in MB. The
peak is reset with Linux's /proc/self/clear_refs; elsewhere RSS is sampled every millisecond
(needs psutil).

Peers run if installed (``pip install ".[bench]"``): scikit-learn's temperature calibration
(the calibrator ``CalibratedClassifierCV(method="temperature")`` fits), netcal's
``TemperatureScaling``, torch-uncertainty's ``TemperatureScaler``, and the reference recipe of
Guo et al. 2017 written out as a baseline (LBFGS lr=0.01, max_iter=50 on T, start 1.5).

Usage:
    python benchmarks/fit_temperature.py                 # all sizes
    python benchmarks/fit_temperature.py --sizes 10000x10 --repeats 3 --no-memory
    python benchmarks/fit_temperature.py --sizes 50000x1000 --dtype bfloat16 --fitters torchcal
    python benchmarks/fit_temperature.py --device cuda --sizes 50000x1000 4096x131072
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import math
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import numpy as np
import scipy.optimize
import torch

import torchcal

SIZES = ["10000x10", "10000x100", "50000x1000", "2000x32000"]


def make_logits(
    n: int, k: int, seed: int = 0, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits 3 * randn (stored in ``dtype``) with labels drawn from softmax(logits / 2): T* ~ 2.

    Filled in row blocks so that making them needs no temporary as large as the logits.
    """
    generator = torch.Generator().manual_seed(seed)
    logits = torch.empty(n, k, dtype=dtype)
    labels = torch.empty(n, dtype=torch.long)
    block = max(1, (1 << 20) // k)
    for start in range(0, n, block):
        rows = torch.randn(min(block, n - start), k, generator=generator) * 3
        logits[start : start + len(rows)] = rows
        probs = torch.softmax(rows / 2, 1)
        labels[start : start + len(rows)] = torch.multinomial(probs, 1, generator=generator)[:, 0]
    return logits, labels


def exact_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """T* by scipy's bounded Brent on log T over the float64 NLL, in row chunks."""
    z_label = logits.gather(1, labels[:, None]).squeeze(1).double()

    def nll(log_t: float) -> float:
        beta = math.exp(-log_t)
        total = 0.0
        for start in range(0, len(labels), 4096):
            chunk = logits[start : start + 4096].double() * beta
            total += float(torch.logsumexp(chunk, 1).sum())
        return total / len(labels) - beta * float(z_label.mean())

    result = scipy.optimize.minimize_scalar(
        nll, bounds=(math.log(1e-2), math.log(1e2)), method="bounded", options={"xatol": 1e-10}
    )
    return math.exp(result.x)


# ------------------------------------------------------------------------------- the fitters
def fit_torchcal(logits, labels):
    scaler = torchcal.TemperatureScaler().fit(logits, labels, progress=False)
    return scaler.temperature, scaler.fit_result.data_passes


def fit_torchcal_newton(logits, labels):
    scaler = torchcal.TemperatureScaler(method="newton").fit(logits, labels, progress=False)
    return scaler.temperature, scaler.fit_result.data_passes


def fit_reference_recipe(logits, labels):
    """Guo et al.'s ModelWithTemperature.set_temperature, minus the model and the CUDA calls."""
    temperature = torch.nn.Parameter(torch.ones(1, device=logits.device) * 1.5)
    optimizer = torch.optim.LBFGS([temperature], lr=0.01, max_iter=50)
    criterion = torch.nn.CrossEntropyLoss()

    def closure():
        optimizer.zero_grad()
        loss = criterion(logits / temperature, labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(temperature.detach()), None


def fit_sklearn(logits, labels):
    """The calibrator that ``CalibratedClassifierCV(method="temperature")`` fits per fold."""
    from sklearn.calibration import _TemperatureScaling

    calibrator = _TemperatureScaling().fit(logits.numpy(), labels.numpy())
    return 1.0 / float(calibrator.beta_), None


def fit_netcal(logits, labels):
    from netcal.scaling import TemperatureScaling

    # netcal takes probabilities and works on their logarithm
    probs = torch.softmax(logits.double(), 1).numpy()
    model = TemperatureScaling()
    model.fit(probs, labels.numpy())
    weight = float(np.ravel(model.weights)[0])  # netcal scales log-probabilities by 1/T
    return 1.0 / weight, None


def fit_torch_uncertainty(logits, labels):
    from torch_uncertainty.post_processing import TemperatureScaler

    dataset = torch.utils.data.TensorDataset(logits, labels)
    loader = torch.utils.data.DataLoader(dataset, batch_size=len(labels))
    scaler = TemperatureScaler(model=torch.nn.Identity())
    scaler.fit(loader, progress=False)
    return float(scaler.temperature[0]), None


def peers(device: torch.device | None = None) -> dict[str, Callable]:
    """torchcal's own fitters first, then each peer whose package imports (on a CPU: the peers
    take numpy arrays or CPU tensors)."""
    fitters: dict[str, Callable] = {
        "torchcal (lbfgs)": fit_torchcal,
        "torchcal (newton)": fit_torchcal_newton,
        "reference recipe": fit_reference_recipe,
    }
    if device is not None and device.type != "cpu":
        return fitters
    for name, module, fitter in [
        ("scikit-learn", "sklearn.calibration", fit_sklearn),
        ("netcal", "netcal.scaling", fit_netcal),
        ("torch-uncertainty", "torch_uncertainty.post_processing", fit_torch_uncertainty),
    ]:
        try:
            __import__(module)
        except Exception as error:
            print(f"# {name}: not run ({type(error).__name__}: {error})", file=sys.stderr)
        else:
            fitters[name] = fitter
    return fitters


# ------------------------------------------------------------------------------- measurement
def synchronise(device: torch.device) -> None:
    """Wait for the device's queued work (a CUDA call returns before its kernels finish)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fit(fitter: Callable, logits, labels, repeats: int) -> tuple[float, float, int | None]:
    fitter(logits[:256], labels[:256])  # warm-up: imports, allocator, thread pool
    times, temperature, passes = [], math.nan, None
    for _ in range(repeats):
        synchronise(logits.device)
        start = time.perf_counter()
        temperature, passes = fitter(logits, labels)
        synchronise(logits.device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), temperature, passes


def time_one_pass(logits: torch.Tensor, repeats: int) -> float:
    """Median time of ``torch.logsumexp(logits, 1)``: one pass of ``exp`` over the logits."""
    torch.logsumexp(logits[:256], 1)
    times = []
    for _ in range(repeats):
        synchronise(logits.device)
        start = time.perf_counter()
        torch.logsumexp(logits, 1)
        synchronise(logits.device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def device_peak_memory(fitter: Callable, logits, labels) -> tuple[float, float]:
    """Growth of the CUDA allocator's peak during one fit, over the logits' size and in bytes."""
    synchronise(logits.device)
    torch.cuda.reset_peak_memory_stats(logits.device)
    before = torch.cuda.memory_allocated(logits.device)
    fitter(logits, labels)
    synchronise(logits.device)
    grown = torch.cuda.max_memory_allocated(logits.device) - before
    return grown / (logits.numel() * logits.element_size()), grown


def peak_memory(name: str, size: str, dtype: str) -> tuple[float, float] | None:
    """Growth of peak RSS during one fit, over the logits' size and in bytes, in a new process."""
    command = [sys.executable, __file__, "--memory-probe", name, "--sizes", size, "--dtype", dtype]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    try:
        measured = json.loads(result.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        print(f"# memory probe of {name} failed: {result.stderr.strip()[-300:]}", file=sys.stderr)
        return None
    return None if measured["ratio"] is None else (measured["ratio"], measured["bytes"])


def _proc_status(key: str) -> int | None:
    """A memory line of /proc/self/status (VmRSS, VmHWM) in bytes, or None off Linux."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class PeakRSS:
    """Peak resident memory during a ``with`` block, beyond the resident memory just before it.

    ``ru_maxrss`` cannot be reset, so any earlier peak (imports, making the logits) would hide the
    block's growth. On Linux writing "5" to /proc/self/clear_refs resets the peak (VmHWM) to the
    current RSS; elsewhere a thread samples the RSS every millisecond with psutil.
    """

    def __enter__(self) -> PeakRSS:
        self.growth: int | None = None
        self._sampled: list[int] = []
        self._stop = threading.Event()
        self._thread = None
        self.baseline = _proc_status("VmRSS")
        try:
            with open("/proc/self/clear_refs", "w") as clear_refs:
                clear_refs.write("5")
            self._reset = self.baseline is not None
        except OSError:
            self._reset = False
        if not self._reset:
            try:
                import psutil
            except ImportError:
                return self
            process = psutil.Process()
            self.baseline = process.memory_info().rss

            def sample() -> None:
                while not self._stop.is_set():
                    self._sampled.append(process.memory_info().rss)
                    time.sleep(0.001)

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._reset:
            peak = _proc_status("VmHWM")
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()
            peak = max(self._sampled, default=self.baseline)
        else:
            return
        self.growth = max(0, peak - self.baseline)


def release_free_memory() -> None:
    """Collect garbage and hand the C heap's free pages back, so that they are not reused unseen."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # glibc only
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def memory_probe(name: str, size: str, dtype: str) -> None:
    n, k = map(int, size.split("x"))
    logits, labels = make_logits(n, k, dtype=getattr(torch, dtype))
    fitter = peers()[name]
    fitter(logits[:256], labels[:256])  # imports, kernels, thread pools: not the fit's memory
    release_free_memory()
    with PeakRSS() as peak:
        fitter(logits, labels)
    size_bytes = logits.numel() * logits.element_size()
    ratio = None if peak.growth is None else peak.growth / size_bytes
    print(json.dumps({"ratio": ratio, "bytes": peak.growth}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=SIZES, help="N x K problems, e.g. 10000x10")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16", "float16", "float64"]
    )
    parser.add_argument("--fitters", nargs="+", help="run only fitters whose name contains one")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-RSS probes")
    parser.add_argument(
        "--device",
        default="cpu",
        help="where the logits live and the fits run, e.g. cuda (peers that need a CPU are "
        "left out there; peak memory is then the CUDA allocator's)",
    )
    parser.add_argument("--memory-probe", help=argparse.SUPPRESS)
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    args = parser.parse_args()
    if args.memory_probe:
        memory_probe(args.memory_probe, args.sizes[0], args.dtype)
        return

    torch.manual_seed(0)
    device = torch.device(args.device)
    fitters = {
        name: fitter
        for name, fitter in peers(device).items()
        if not args.fitters or any(part in name for part in args.fitters)
    }
    where = f"{torch.get_num_threads()} threads"
    if device.type == "cuda":
        where = f"on {torch.cuda.get_device_name(device)}"
    elif device.type != "cpu":
        where = f"on {device}"
    print(f"# torch {torch.__version__}, {where}, {args.dtype} logits, median of {args.repeats}")
    header = [
        "N x K",
        "method",
        "time",
        "x torchcal",
        "T",
        "error of T vs T*",
        "passes",
        "x one pass",
        "peak mem",
    ]
    rows = []
    for size in args.sizes:
        n, k = map(int, size.split("x"))
        logits, labels = make_logits(n, k, dtype=getattr(torch, args.dtype))
        logits, labels = logits.to(device), labels.to(device)
        reference = exact_temperature(logits, labels)  # on the device: float64 there too
        one_pass = time_one_pass(logits, args.repeats)
        print(f"# {n:,} x {k:,}: one pass of exp (logsumexp) {one_pass * 1000:.1f} ms")
        fitter_times = {}
        for name, fitter in fitters.items():
            if name == "torch-uncertainty" and n * k > 5e7:
                continue
            try:
                seconds, temperature, passes = time_fit(fitter, logits, labels, args.repeats)
            except Exception as error:  # a peer that cannot take this dtype, say
                print(f"# {name} on {size}: failed ({type(error).__name__})", file=sys.stderr)
                continue
            fitter_times[name] = seconds
            if args.no_memory:
                memory = None
            elif device.type == "cuda":
                memory = device_peak_memory(fitter, logits, labels)
            else:
                memory = peak_memory(name, size, args.dtype)
            rows.append(
                [
                    f"{n:,} x {k:,}",
                    name,
                    seconds,
                    None,
                    temperature,
                    abs(temperature / reference - 1),
                    passes,
                    seconds / one_pass,
                    memory,
                ]
            )
        base = fitter_times.get("torchcal (lbfgs)")
        for row in rows:
            if base and row[0] == f"{n:,} x {k:,}":
                row[3] = row[2] / base
    print_table(header, rows, args.markdown)


def print_table(header, rows, markdown: bool) -> None:
    def cell(value, column):
        if value is None:
            return "-"
        if column == 2:
            return f"{value * 1000:.0f} ms" if value < 10 else f"{value:.1f} s"
        if column == 3:
            return f"{value:.1f}x"
        if column == 4:
            return f"{value:.6f}"
        if column == 5:
            return f"{value:.1e}"
        if column == 7:
            return f"{value:.1f}" if value < 100 else f"{value:.0f}"
        if column == 8:
            ratio, size = value
            return f"{ratio:.2f}x ({size / 1e6:.0f} MB)" if size >= 1e6 else f"{ratio:.2f}x (<1 MB)"
        return str(value)

    table = [[cell(v, c) for c, v in enumerate(row)] for row in rows]
    widths = [max(len(h), *(len(r[c]) for r in table)) for c, h in enumerate(header)]
    if markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "|".join("---" for _ in header) + "|")
        for r in table:
            print("| " + " | ".join(r) + " |")
        return
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    for r in table:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))


if __name__ == "__main__":
    main()
