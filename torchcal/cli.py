"""The ``torchcal`` command: ``demo``, ``fit``, ``report`` and ``compare``.

Example:
    >>> main(["--version"])  # doctest: +ELLIPSIS
    torchcal ...
    0
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from torchcal._version import __version__
from torchcal.errors import NotFittedError

if TYPE_CHECKING:
    from torchcal.mapped import LogitsFile

__all__ = ["main"]

DESCRIPTION = """\
Temperature scaling for classifiers: fit T so that softmax(logits / T) is calibrated, and
measure calibration (accuracy, NLL, ECE, MCE, Brier with 95% bootstrap intervals); compare it
with vector, matrix and Dirichlet scaling, ensemble temperature scaling, histogram binning and
isotonic regression.

  torchcal demo                             train, calibrate and report on bundled digits data
  torchcal fit val_logits.pt val_labels.pt -o scaler.pt
  torchcal report test_logits.npy test_labels.npy --scaler scaler.pt
  torchcal compare val_logits.npy val_labels.npy test_logits.npy test_labels.npy

Logits are (N, K) float arrays and labels (N,) integer class indices, saved as .pt, .npy,
.npz or .safetensors (use --logits-key/--labels-key when a file holds several arrays).
'fit' reads .npy and .safetensors logits in row chunks, so they may be larger than memory.
"""


def _data_arguments(parser: argparse.ArgumentParser, splits: tuple[str, ...] = ("",)) -> None:
    for split in splits:
        name = {"val_": "validation ", "test_": "test "}.get(split, "")
        parser.add_argument(f"{split}logits", type=Path, help=f"(N, K) {name}logits file")
        parser.add_argument(f"{split}labels", type=Path, help=f"(N,) integer {name}labels file")
    parser.add_argument("--logits-key", help="array name inside the logits file(s)")
    parser.add_argument("--labels-key", help="array name inside the labels file(s)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="torchcal", description=DESCRIPTION, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"torchcal {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo", help="calibrate a small network on the bundled digits and report before/after"
    )
    demo.add_argument(
        "--output-dir",
        type=Path,
        default=Path("torchcal-demo"),
        help="where the diagram, report and scaler go (default: ./torchcal-demo)",
    )
    demo.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples")

    fit = commands.add_parser("fit", help="fit a temperature on validation logits and labels")
    _data_arguments(fit)
    fit.add_argument("-o", "--output", type=Path, required=True, help="where to save the scaler")
    fit.add_argument(
        "--method",
        default="temperature",
        choices=_method_names(),
        help="the calibrator to fit (default: temperature)",
    )

    report = commands.add_parser(
        "report", help="calibration table, reliability diagram and JSON for logits and labels"
    )
    _data_arguments(report)
    report.add_argument(
        "--scaler", type=Path, help="a calibrator (temperature or another) saved by 'torchcal fit'"
    )
    report.add_argument(
        "--output-dir",
        type=Path,
        default=Path("torchcal-report"),
        help="where the diagram and report go (default: ./torchcal-report)",
    )
    report.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples")

    compare = commands.add_parser(
        "compare",
        help="fit every calibrator on a validation split and score each on a test split",
    )
    _data_arguments(compare, ("val_", "test_"))
    compare.add_argument(
        "--methods",
        nargs="+",
        metavar="METHOD",
        help="calibrators to compare (default: all of " + ", ".join(_method_names()) + ")",
    )
    compare.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples")
    compare.add_argument("--markdown", action="store_true", help="print a markdown table")
    return parser


def _method_names() -> tuple[str, ...]:
    from torchcal.compare import DEFAULT_METHODS

    return DEFAULT_METHODS


def _load_data(
    args: argparse.Namespace, split: str = "", *, chunked: bool = False
) -> tuple[torch.Tensor | LogitsFile, torch.Tensor]:
    """A split's logits and labels, checked. ``chunked=True`` opens .npy and .safetensors logits
    with :func:`~torchcal.open_logits`, to be read in row chunks rather than loaded whole."""
    from torchcal._validation import check_labels, check_logits_matrix, check_matrix_layout
    from torchcal.files import load_tensor
    from torchcal.mapped import open_logits

    logits_path, labels_path = getattr(args, f"{split}logits"), getattr(args, f"{split}labels")
    suffix = logits_path.suffix.lower()
    if chunked and suffix in (".npy", ".safetensors"):
        logits = open_logits(logits_path, args.logits_key if suffix == ".safetensors" else None)
        check_matrix_layout(logits.shape, logits.dtype, f"logits ({logits_path})")
    else:
        logits = check_logits_matrix(
            load_tensor(logits_path, args.logits_key), f"logits ({logits_path})"
        )
    labels = load_tensor(labels_path, args.labels_key)
    labels = check_labels(labels, logits.shape[0], logits.shape[1], f"labels ({labels_path})")
    return logits, labels


def _demo(args: argparse.Namespace) -> None:
    from torchcal.demo import run_digits_demo

    report = run_digits_demo(args.output_dir, n_resamples=args.resamples, progress=True)
    print(report.scaler.fit_result)
    print(f"\ntest split, 95% bootstrap intervals ({args.resamples} resamples)")
    print(report.table)
    print()
    for name, path in report.files.items():
        print(f"{name + ':':<9}{path}")


def _fit(args: argparse.Namespace) -> None:
    from torchcal.calibrator import Calibrator
    from torchcal.files import save_scaler

    # only temperature scaling streams its logits; the other calibrators fit in-memory rows
    logits, labels = _load_data(args, chunked=args.method == "temperature")
    try:
        scaler = Calibrator.registry[args.method]().fit(logits, labels, progress=False)
    finally:
        if hasattr(logits, "close"):
            logits.close()
    print(scaler.fit_result)
    print(f"saved:   {save_scaler(scaler, args.output)}")


def _report(args: argparse.Namespace) -> None:
    from torchcal.files import load_scaler
    from torchcal.metrics import reliability_bins
    from torchcal.plots import reliability_diagram
    from torchcal.report import calibration_summary, format_table, write_json
    from torchcal.temperature import TemperatureScaler

    logits, labels = _load_data(args)
    probs = {"uncalibrated": torch.softmax(logits.double(), dim=1)}
    extra: dict = {"n_samples": int(labels.numel())}
    if args.scaler is not None:
        scaler = load_scaler(args.scaler)
        with torch.no_grad():
            probs["calibrated"] = scaler.predict_proba(logits.double()).double()
        extra["calibrator"] = scaler.kind
        if isinstance(scaler, TemperatureScaler):
            extra["temperature"] = scaler.temperature
            print(f"T = {scaler.temperature:.6g} from {args.scaler}")
        else:
            print(f"{scaler.kind} calibration from {args.scaler}")
    from tqdm.auto import tqdm

    summaries = {
        name: calibration_summary(p, labels, n_resamples=args.resamples)
        for name, p in tqdm(probs.items(), desc="bootstrap", leave=False)
    }
    args.output_dir.mkdir(parents=True, exist_ok=True)
    diagram, json_path = args.output_dir / "reliability.png", args.output_dir / "report.json"
    reliability_diagram({name: reliability_bins(p, labels) for name, p in probs.items()},
                        path=diagram)  # fmt: skip
    write_json(json_path, summaries, **extra)
    print(f"{labels.numel()} samples, 95% bootstrap intervals ({args.resamples} resamples)")
    print(format_table(summaries))
    print(f"\ndiagram: {diagram}\nreport:  {json_path}")


def _compare(args: argparse.Namespace) -> None:
    from torchcal.compare import DEFAULT_METHODS, compare

    val_logits, val_labels = _load_data(args, "val_")
    test_logits, test_labels = _load_data(args, "test_")
    methods = args.methods or DEFAULT_METHODS
    comparison = compare(
        val_logits,
        val_labels,
        test_logits,
        test_labels,
        methods,
        n_resamples=args.resamples,
        progress=True,
    )
    print(
        f"fitted on {val_labels.numel()} validation samples, scored on {test_labels.numel()} "
        f"test samples, 95% bootstrap intervals ({args.resamples} resamples)"
    )
    print(comparison.to_markdown() if args.markdown else comparison)


COMMANDS = {"demo": _demo, "fit": _fit, "report": _report, "compare": _compare}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    warnings.simplefilter("default")
    warnings.formatwarning = lambda message, category, *_: f"warning: {message}\n"
    try:
        COMMANDS[args.command](args)
    except (ValueError, TypeError, OSError, ImportError, NotFittedError, RuntimeError) as error:
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"torchcal {args.command}: error: {message}", file=sys.stderr)
        return 1
    return 0
