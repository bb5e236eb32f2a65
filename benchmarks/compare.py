"""``torchcal.compare`` and the bootstrap: what scoring costs on top of the fits.

Prints, for ``compare`` on N x K validation and test logits with its default methods and
resamples: the total time, the sum of the calibrators' own fit times (``fit_seconds``) and the
overhead ``(total - fits) / fits`` (median of --repeats). Then the time of ``bootstrap_interval``
for each metric of the comparison table against a naive recompute that calls the metric on every
resample's gathered (N, K) rows (the same draws: the intervals agree), on the same probabilities.

Usage:
    python benchmarks/compare.py                       # 5,000 x 100, 1,000 resamples
    python benchmarks/compare.py --size 2000x10 --resamples 200 --repeats 1
    python benchmarks/compare.py --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from fit_temperature import make_logits
from metrics import print_table

import torchcal
from torchcal._report import METRICS
from torchcal.metrics import bootstrap_interval


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="5000x100", help="N x K of each split")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--naive-resamples", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--markdown", action="store_true", help="print markdown tables")
    parser.add_argument("--device", default="cpu", help="where the logits live, e.g. cuda")
    args = parser.parse_args()
    n, k = (int(part) for part in args.size.split("x"))
    logits, labels = make_logits(2 * n, k)
    logits, labels = logits.to(args.device), labels.to(args.device)
    splits = logits[:n], labels[:n], logits[n:], labels[n:]
    print(
        f"# torch {torch.__version__}, {torch.get_num_threads()} threads, {n:,} x {k:,} logits "
        f"per split, {args.resamples} resamples, median of {args.repeats}; "
        f"torchcal from {torchcal.__file__}"
    )
    torchcal.compare(*splits, ["temperature"], n_resamples=10)  # imports and kernels
    totals, fits, overheads = [], [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        comparison = torchcal.compare(*splits, n_resamples=args.resamples)
        total = time.perf_counter() - start
        fit = sum(comparison.fit_seconds.values())
        totals.append(total)
        fits.append(fit)
        overheads.append((total - fit) / fit)
    header = ["N x K", "compare total", "sum of fit times", "(total - fits) / fits"]
    print_table(
        header,
        [
            [
                f"{n:,} x {k:,}",
                f"{statistics.median(totals):.2f} s",
                f"{statistics.median(fits):.2f} s",
                f"{statistics.median(overheads):.0%}",
            ]
        ],
        args.markdown,
    )
    print()
    probs = torch.softmax(splits[2].double(), dim=1)
    test_labels = splits[3]
    rows = []
    for name, metric in METRICS.items():
        fast, naive = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            interval = bootstrap_interval(
                metric, probs, test_labels, n_resamples=args.naive_resamples
            )
            fast.append(time.perf_counter() - start)
            start = time.perf_counter()
            slow = bootstrap_interval(
                lambda p, y, metric=metric: metric(p, y),
                probs,
                test_labels,
                n_resamples=args.naive_resamples,
            )
            naive.append(time.perf_counter() - start)
        difference = max(abs(interval.low - slow.low), abs(interval.high - slow.high))
        fast_time, naive_time = statistics.median(fast), statistics.median(naive)
        rows.append(
            [
                name,
                f"{fast_time * 1000:.0f} ms",
                f"{naive_time * 1000:.0f} ms",
                f"{naive_time / fast_time:.1f}x",
                f"{difference:.1e}",
            ]
        )
    header = [
        f"metric ({args.naive_resamples} resamples)",
        "bootstrap_interval",
        "naive recompute",
        "naive / bootstrap_interval",
        "|interval difference|",
    ]
    print_table(header, rows, args.markdown)


if __name__ == "__main__":
    main()
