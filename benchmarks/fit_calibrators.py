"""Fit every softmax calibrator kind on the same synthetic logits and compare with a peer.

Prints, per problem size and calibrator: fit time, solver iterations, whether the fit converged,
the calibrated NLL on the fitted data, the warnings it raised, and for each peer installed the
same figures (netcal's ``LogisticCalibration``, vector scaling of log-probabilities without a
penalty, is compared with torchcal's ``DirichletCalibrator(diagonal=True, reg_lambda=0,
reg_mu=0)``, the same model and objective).

The "x one product" column divides each fit's time by that of one float32 matrix product of the
(N, K) logits with a (K, K) matrix, timed in the fit's process right after it: the matrix and
Dirichlet fits are made of such products, so this ratio carries over between machines and loads
better than seconds do (a fit stopped by the timeout is divided by the product timed before the
size's fits).

Every fit runs in its own subprocess (a fresh interpreter, one warm-up fit on 256 x 10 logits
first, so imports and thread pools are not timed) and is stopped after ``--timeout`` seconds,
reported as ``> timeout``. Peers run only up to ``--peer-max-elements`` logits (netcal takes
seconds at 5,000 x 10 already).

The logits imitate a 1,000-class network: a standard normal bulk, the true class raised by a
margin drawn from N(4, 2) (about 60% top-1 accuracy at K = 1,000), and each class's logit
multiplied by its own scale in [0.7, 1.3] (a miscalibration that vector, matrix and Dirichlet
scaling can correct but one temperature cannot).

Usage:
    python benchmarks/fit_calibrators.py                       # 5,000 x 10 and 20,000 x 1,000
    python benchmarks/fit_calibrators.py --sizes 2000x10 --kinds vector,matrix
    python benchmarks/fit_calibrators.py --timeout 900 --markdown
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import warnings

import numpy as np
import torch

import torchcal

SIZES = ["5000x10", "20000x1000"]
KINDS = ["temperature", "ensemble", "vector", "dirichlet_diagonal", "matrix", "dirichlet"]
PEERS = {"netcal (vector on log p)": "dirichlet_unpenalised_diagonal"}


def make_logits(n: int, k: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 (n, k) logits and their labels (see the module docstring)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, k, (n,), generator=generator)
    logits = torch.randn(n, k, generator=generator)
    margin = 4.0 + 2.0 * torch.randn(n, generator=generator)
    logits[torch.arange(n), labels] += margin
    scales = 0.7 + 0.6 * torch.rand(k, generator=generator)
    return logits * scales, labels


def build(kind: str) -> torchcal.calibrators.base.SoftmaxCalibrator:
    if kind == "temperature":
        return torchcal.TemperatureScaler()
    if kind == "ensemble":
        return torchcal.EnsembleTemperatureScaler()
    if kind == "vector":
        return torchcal.VectorScaler()
    if kind == "matrix":
        return torchcal.MatrixScaler()
    if kind == "dirichlet":
        return torchcal.DirichletCalibrator()
    if kind == "dirichlet_diagonal":
        return torchcal.DirichletCalibrator(diagonal=True)
    if kind == "dirichlet_unpenalised_diagonal":
        return torchcal.DirichletCalibrator(diagonal=True, reg_lambda=0.0, reg_mu=0.0)
    raise ValueError(f"unknown calibrator kind {kind!r}")


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    picked = probs[np.arange(len(labels)), labels]
    return float(-np.log(np.clip(picked, 1e-300, None)).mean())


def fit_torchcal(kind: str, logits: torch.Tensor, labels: torch.Tensor) -> dict:
    with warnings.catch_warnings():  # warm-up on a small well-posed problem of the same kind
        warnings.simplefilter("ignore")
        build(kind).fit(*make_logits(256, 10, seed=1), progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.perf_counter()
        calibrator = build(kind).fit(logits, labels, progress=False)
        seconds = time.perf_counter() - start
    result = calibrator.fit_result
    return {
        "seconds": seconds,
        "iterations": result.iterations,
        "converged": result.converged,
        "nll": result.nll_after,
        "warnings": [str(w.message).split(":")[0][:60] for w in caught],
    }


def fit_netcal(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    from netcal.scaling import LogisticCalibration

    probs = torch.softmax(logits.double(), 1).numpy()
    LogisticCalibration(method="mle").fit(probs[:64], labels[:64].numpy())  # warm-up
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        model = LogisticCalibration(method="mle")
        model.fit(probs, labels.numpy())
        seconds = time.perf_counter() - start
        calibrated = model.transform(probs)
    return {
        "seconds": seconds,
        "iterations": None,
        "converged": None,
        "nll": nll(np.asarray(calibrated, dtype=np.float64), labels.numpy()),
        "warnings": [],
    }


def worker(name: str, size: str) -> None:
    """Run one fit and print its record as JSON (the subprocess side)."""
    n, k = (int(part) for part in size.split("x"))
    logits, labels = make_logits(n, k)
    record = fit_netcal(logits, labels) if name == "netcal" else fit_torchcal(name, logits, labels)
    record["product"] = product_seconds(n, k)
    print(json.dumps(record))


def run(name: str, size: str, timeout: float) -> dict | None:
    """One fit in a fresh subprocess; None if it ran past ``timeout``."""
    command = [sys.executable, __file__, "--worker", name, size]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return None
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {"error": done.stderr.strip()[-300:]}


def peer_available(module: str) -> bool:
    try:
        __import__(module)
    except Exception as error:  # a peer that fails to import is skipped, with the reason
        print(f"# {module}: not run ({type(error).__name__}: {error})", file=sys.stderr)
        return False
    return True


def product_seconds(n: int, k: int, repeats: int = 5) -> float:
    """The best time of one float32 (n, k) @ (k, k) matrix product."""
    generator = torch.Generator().manual_seed(0)
    rows, matrix = torch.randn(n, k, generator=generator), torch.randn(k, k, generator=generator)
    rows @ matrix  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        rows @ matrix
        times.append(time.perf_counter() - start)
    return min(times)


def row(
    size: str, name: str, record: dict | None, timeout: float, product: float, markdown: bool
) -> str:
    if record is None:
        cells = [f"> {timeout:.0f} s (stopped)", f"> {timeout / product:.0f}", "-", "-", "-", ""]
    elif "error" in record:
        cells = ["error", "-", "-", "-", "-", record["error"].splitlines()[-1][:80]]
    else:
        iterations = "-" if record["iterations"] is None else str(record["iterations"])
        converged = {None: "-", True: "yes", False: "no"}[record["converged"]]
        cells = [
            f"{record['seconds']:.2f} s",
            f"{record['seconds'] / record.get('product', product):.0f}",
            iterations,
            converged,
            f"{record['nll']:.6f}",
            "; ".join(record["warnings"]),
        ]
    n, k = (int(part) for part in size.split("x"))
    cells = [f"{n:,} x {k:,}", name, *cells]
    if markdown:
        return "| " + " | ".join(cells) + " |"
    return "  ".join(f"{cell:<22}" if i < 2 else f"{cell:<12}" for i, cell in enumerate(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(SIZES), help="comma-separated NxK")
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma-separated kinds")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per fit")
    parser.add_argument("--peer-max-elements", type=float, default=1e6)
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--worker", nargs=2, metavar=("NAME", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker)
        return
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, float32 logits")
    header = ["N x K", "calibrator", "time", "x one product", "iterations", "converged"]
    header += ["NLL after", "warnings"]
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
    else:
        print("  ".join(f"{h:<22}" if i < 2 else f"{h:<12}" for i, h in enumerate(header)))
    netcal = peer_available("netcal.scaling")
    for size in args.sizes.split(","):
        n, k = (int(part) for part in size.split("x"))
        product = product_seconds(n, k)
        shapes = f"({n:,} x {k:,}) @ ({k:,} x {k:,})"
        print(f"# {n:,} x {k:,}: one float32 {shapes} product {product:.3f} s")
        for kind in args.kinds.split(","):
            record = run(kind, size, args.timeout)
            print(row(size, kind, record, args.timeout, product, args.markdown))
            sys.stdout.flush()
        if netcal and n * k <= args.peer_max_elements and "dirichlet_diagonal" in args.kinds:
            ours = "dirichlet_unpenalised_diagonal"
            for name, who in ((ours, ours), ("netcal (vector on log p)", "netcal")):
                record = run(who, size, args.timeout)
                print(row(size, name, record, args.timeout, product, args.markdown))
                sys.stdout.flush()


if __name__ == "__main__":
    main()
