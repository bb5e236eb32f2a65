"""Calibration metrics on the same probabilities: torchcal against torchmetrics and netcal.

Prints, per problem size, the time of each metric (median of --repeats, the methods taking turns
within each repeat so that a busy machine slows them alike), the ratio of torchmetrics' top-label
ECE time to it, the ratio of its matching torchmetrics call's time to it (the same computation:
the top-label ECE for the ECE and the bins, torchmetrics' meter for the meter, and for the
class-wise ECE the mean of torchmetrics' binary ECE of each class against the rest, which is
how torchmetrics computes it; its columns are made contiguous once, untimed), and its value's
distance from a numpy float64 reference with the same bins (``edges[i] <= c < edges[i + 1]``,
15 equal-width bins, the last one closed; a tie for the top counts as correct). Peers run where
installed.

Rows:
    torchcal ECE                 ``expected_calibration_error(probs, labels)``
    torchcal reliability_bins    ``reliability_bins(probs, labels)`` (value: its ECE)
    torchcal classwise ECE       ``classwise_calibration_error(probs, labels)``
    torchcal meter update        ``CalibrationErrorMeter().update(probs, labels)``, ``compute()``
    torchmetrics ECE             ``multiclass_calibration_error(probs, labels, K, n_bins=15)``
    torchmetrics meter           ``MulticlassCalibrationError(K, 15).update(...)``, ``compute()``
    torchmetrics classwise ECE   mean over k of ``binary_calibration_error(p[:, k], labels == k)``
    netcal ECE                   ``ECE(bins=15).measure(probs.numpy(), labels.numpy())``

Usage:
    python benchmarks/metrics.py                      # 50,000 x 1,000 and 1,000,000 x 10
    python benchmarks/metrics.py --sizes 20000x100 --repeats 5 --markdown
    python benchmarks/metrics.py --device cuda        # netcal (numpy) left out there
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from fit_temperature import make_logits, synchronise

import torchcal
from torchcal.metrics import (
    CalibrationErrorMeter,
    classwise_calibration_error,
    expected_calibration_error,
    reliability_bins,
)

SIZES = ["50000x1000", "1000000x10"]
N_BINS = 15


def probabilities(n: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 softmax(3 * randn) probabilities, labels drawn from softmax(logits / 2)."""
    logits, labels = make_logits(n, k)
    torch.softmax(logits, dim=1, out=logits)  # in place: no second (N, K) tensor
    return logits, labels


def numpy_ece(confidences: np.ndarray, correct: np.ndarray) -> float:
    """The float64 ECE of per-sample confidences and 0/1 correctness, bins [e_i, e_{i+1})."""
    edges = np.linspace(0.0, 1.0, N_BINS + 1)
    index = np.clip(np.searchsorted(edges, confidences, side="right") - 1, 0, N_BINS - 1)
    counts = np.bincount(index, minlength=N_BINS)
    gaps = np.abs(
        np.bincount(index, correct, minlength=N_BINS) - np.bincount(index, confidences, N_BINS)
    )
    return float(gaps.sum() / counts.sum())


def references(probs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """numpy float64 top-label and class-wise ECE, one class at a time (no (N, K) float64)."""
    p, y = probs.numpy(), labels.numpy()
    confidences = p.max(axis=1).astype(np.float64)
    label_probs = p[np.arange(len(y)), y].astype(np.float64)
    top = numpy_ece(confidences, (label_probs == confidences).astype(np.float64))
    classwise = np.mean(
        [
            numpy_ece(p[:, k].astype(np.float64), (y == k).astype(np.float64))
            for k in range(p.shape[1])
        ]
    )
    return {"top": top, "classwise": float(classwise)}


#: Each torchcal method's matching torchmetrics call (the same computation).
MATCHING_PEER = {
    "torchcal ECE": "torchmetrics ECE",
    "torchcal reliability_bins": "torchmetrics ECE",
    "torchcal classwise ECE": "torchmetrics classwise ECE",
    "torchcal meter update": "torchmetrics meter",
}


def methods(probs: torch.Tensor, labels: torch.Tensor) -> dict[str, tuple[Callable, str]]:
    """name -> (a call returning the value, which reference it is compared with)."""
    k = probs.shape[1]

    def meter() -> float:
        meter = CalibrationErrorMeter(n_bins=N_BINS)
        meter.update(probs, labels)
        return float(meter.compute())

    found = {
        "torchcal ECE": (lambda: expected_calibration_error(probs, labels), "top"),
        "torchcal reliability_bins": (
            lambda: reliability_bins(probs, labels).calibration_error(),
            "top",
        ),
        "torchcal classwise ECE": (lambda: classwise_calibration_error(probs, labels), "classwise"),
        "torchcal meter update": (meter, "top"),
    }
    try:
        from torchmetrics.classification import MulticlassCalibrationError
        from torchmetrics.functional.classification import (
            binary_calibration_error,
            multiclass_calibration_error,
        )

        def torchmetrics_meter() -> float:
            metric = MulticlassCalibrationError(num_classes=k, n_bins=N_BINS)
            metric.update(probs, labels)
            return float(metric.compute())

        columns = probs.T.contiguous()  # given to it: torchmetrics copies strided columns

        def torchmetrics_classwise() -> float:
            errors = [
                binary_calibration_error(columns[c], labels == c, n_bins=N_BINS) for c in range(k)
            ]
            return float(torch.stack(errors).mean())

        found["torchmetrics ECE"] = (
            lambda: multiclass_calibration_error(probs, labels, num_classes=k, n_bins=N_BINS),
            "top",
        )
        found["torchmetrics meter"] = (torchmetrics_meter, "top")
        found["torchmetrics classwise ECE"] = (torchmetrics_classwise, "classwise")
    except ImportError:
        pass
    if probs.device.type != "cpu":  # netcal takes numpy arrays
        return found
    try:
        from netcal.metrics import ECE

        found["netcal ECE"] = (
            lambda: ECE(bins=N_BINS).measure(probs.numpy(), labels.numpy()),
            "top",
        )
    except ImportError:
        pass
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=SIZES, help="N x K problems, e.g. 20000x100")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    parser.add_argument("--device", default="cpu", help="where the probabilities live, e.g. cuda")
    args = parser.parse_args()
    device = torch.device(args.device)
    where = f"{torch.get_num_threads()} threads" if device.type == "cpu" else f"on {device}"
    print(
        f"# torch {torch.__version__}, {where}, float32 probabilities, "
        f"{N_BINS} bins, median of {args.repeats}; torchcal from {torchcal.__file__}"
    )
    header = [
        "N x K",
        "method",
        "time",
        "torchmetrics ECE time / this",
        "matching torchmetrics time / this",
        "|value - numpy|",
    ]
    rows = []
    for size in args.sizes:
        n, k = (int(part) for part in size.split("x"))
        probs, labels = probabilities(n, k)
        reference = references(probs, labels)  # numpy, from the CPU copies
        probs, labels = probs.to(device), labels.to(device)
        calls = methods(probs, labels)
        times: dict[str, list[float]] = {name: [] for name in calls}
        values: dict[str, float] = {}
        for _ in range(args.repeats):
            for name, (call, _) in calls.items():
                synchronise(device)
                start = time.perf_counter()
                values[name] = float(call())  # a host read: the device's work is done
                times[name].append(time.perf_counter() - start)
        medians = {name: statistics.median(seconds) for name, seconds in times.items()}
        peer = medians.get("torchmetrics ECE")
        for name, (_, which) in calls.items():
            ratio = None if peer is None else peer / medians[name]
            matching = medians.get(MATCHING_PEER.get(name, ""))
            matching_ratio = None if matching is None else matching / medians[name]
            error = abs(values[name] - reference[which])
            rows.append([f"{n:,} x {k:,}", name, medians[name], ratio, matching_ratio, error])
        del probs, labels
    print_rows(header, rows, args.markdown)


def print_rows(header: list[str], rows: list[list], markdown: bool) -> None:
    table = [
        [
            size,
            name,
            f"{seconds * 1000:.0f} ms",
            "-" if ratio is None else f"{ratio:.2f}x",
            "-" if matching is None else f"{matching:.2f}x",
            f"{error:.1e}",
        ]
        for size, name, seconds, ratio, matching, error in rows
    ]
    print_table(header, table, markdown)


def print_table(header: list[str], table: list[list[str]], markdown: bool) -> None:
    """Rows of strings as a markdown table or as aligned columns."""
    if markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "|".join("---" for _ in header) + "|")
        for row in table:
            print("| " + " | ".join(row) + " |")
        return
    widths = [max(len(h), *(len(r[c]) for r in table)) for c, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    for row in table:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


if __name__ == "__main__":
    main()
