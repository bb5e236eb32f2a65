"""The ``torchcal`` command: ``demo``, ``fit``, ``report`` and ``compare``.

Example:
    >>> main(["--version"])  # doctest: +ELLIPSIS
    torchcal ...
    0
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from torchcal._version import __version__
from torchcal.errors import NotFittedError

if TYPE_CHECKING:
    from torchcal.compare import Comparison
    from torchcal.io.mapped import LogitsFile

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

Logits are (N, K) float arrays (or probabilities with --inputs probs) and labels (N,) or
(N, 1) integer class indices, saved as .pt, .npy, .npz or .safetensors (use
--logits-key/--labels-key when a file holds several arrays). 'fit' reads .npy and .safetensors
logits in row chunks, so they may be larger than memory. Every output file is written in full
to a temporary file beside it and then renamed, so a failed write never destroys an earlier file.
"""


def _data_arguments(parser: argparse.ArgumentParser, splits: tuple[str, ...] = ("",)) -> None:
    for split in splits:
        name = {"val_": "validation ", "test_": "test "}.get(split, "")
        parser.add_argument(f"{split}logits", type=Path, help=f"(N, K) {name}logits file")
        parser.add_argument(
            f"{split}labels", type=Path, help=f"(N,) or (N, 1) integer {name}labels file"
        )
    parser.add_argument("--logits-key", help="array name inside the logits file(s)")
    parser.add_argument("--labels-key", help="array name inside the labels file(s)")
    parser.add_argument(
        "--inputs",
        choices=("logits", "probs"),
        default="logits",
        help="what the logits files hold: logits (default) or softmax probabilities",
    )


def _report_arguments(parser: argparse.ArgumentParser, folder: str, outputs: str) -> None:
    """The output folder (default ``./folder``) of a command that writes ``outputs``, and the
    number of bootstrap resamples of its intervals."""
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=Path(folder),
        help=f"where {outputs} go (default: ./{folder})",
    )
    _resamples_argument(parser)


def _resamples_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="torchcal", description=DESCRIPTION, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"torchcal {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo", help="calibrate a small network on the bundled digits and report before/after"
    )
    _report_arguments(demo, "torchcal-demo", "the diagram, report and scaler")

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
    _report_arguments(report, "torchcal-report", "the diagram and report")

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
    _resamples_argument(compare)
    compare.add_argument("--markdown", action="store_true", help="print a markdown table")
    compare.add_argument(
        "--save-best", type=Path, metavar="PATH", help="save the best calibrator (see --best-by)"
    )
    compare.add_argument(
        "--best-by",
        type=_metric_name,
        default="NLL",
        metavar="METRIC",
        help="the test-split metric that picks --save-best: " + ", ".join(_metric_names())
        + " (default: NLL)",
    )  # fmt: skip
    compare.add_argument("--json", type=Path, metavar="PATH", help="write the table as JSON")
    return parser


def _method_names() -> tuple[str, ...]:
    from torchcal.compare import DEFAULT_METHODS

    return DEFAULT_METHODS


def _metric_names() -> tuple[str, ...]:
    from torchcal._report import METRICS

    return tuple(METRICS)


def _metric_name(text: str) -> str:
    """``text`` as one of the report's metric names, in any letter case."""
    names = {name.lower(): name for name in _metric_names()}
    if text.lower() not in names:
        raise argparse.ArgumentTypeError(
            f"unknown metric {text!r}; choose from {', '.join(_metric_names())}"
        )
    return names[text.lower()]


def _load_data(
    args: argparse.Namespace, split: str = "", *, chunked: bool = False
) -> tuple[torch.Tensor | LogitsFile, torch.Tensor]:
    """A split's logits (or probabilities) and labels, checked. ``chunked=True`` opens .npy and
    .safetensors logits with :func:`~torchcal.open_logits`, to be read in row chunks rather than
    loaded whole. (N, 1) labels are taken as (N,)."""
    from torchcal._inputs.validation import (
        check_labels,
        check_logits_matrix,
        check_matrix_layout,
        check_probabilities_matrix,
    )
    from torchcal.io.files import load_tensor, safetensors_key
    from torchcal.io.mapped import open_logits

    logits_path, labels_path = getattr(args, f"{split}logits"), getattr(args, f"{split}labels")
    suffix = logits_path.suffix.lower()
    name = f"{'probabilities' if args.inputs == 'probs' else 'logits'} ({logits_path})"
    if chunked and suffix in (".npy", ".safetensors"):
        key = None
        if suffix == ".safetensors":
            key = safetensors_key(logits_path, args.logits_key, "--logits-key")
        logits = open_logits(logits_path, key)
        check_matrix_layout(logits.shape, logits.dtype, name)
    else:
        logits = check_logits_matrix(
            load_tensor(logits_path, args.logits_key, "--logits-key"), name
        )
        if args.inputs == "probs":
            check_probabilities_matrix(logits, name)
    labels = load_tensor(labels_path, args.labels_key, "--labels-key")
    if labels.ndim == 2 and labels.shape[1] == 1:  # one class index per row, as saved by many
        labels = labels[:, 0]
    labels = check_labels(labels, logits.shape[0], logits.shape[1], f"labels ({labels_path})")
    return logits, labels


def _demo(args: argparse.Namespace) -> None:
    from torchcal._demo import run_digits_demo

    report = run_digits_demo(args.output_dir, n_resamples=args.resamples, progress=True)
    print(report.scaler.fit_result)
    print(f"\ntest split, 95% bootstrap intervals ({args.resamples} resamples)")
    print(report.table)
    print()
    for name, path in report.files.items():
        print(f"{name + ':':<9}{path}")


def _fit(args: argparse.Namespace) -> None:
    from torchcal.calibrators.base import Calibrator
    from torchcal.io.files import check_output, save_scaler

    check_output(args.output)
    # only temperature scaling of logits streams them; the other fits take in-memory rows
    logits, labels = _load_data(
        args, chunked=args.method == "temperature" and args.inputs == "logits"
    )
    try:
        calibrator = Calibrator.registry[args.method](inputs=args.inputs)
        scaler = calibrator.fit(logits, labels, progress=False)
    finally:
        if hasattr(logits, "close"):
            logits.close()
    print(scaler.fit_result)
    print(f"saved:   {save_scaler(scaler, args.output)}")


@contextlib.contextmanager
def _output_folder(folder: Path) -> Iterator[None]:
    """Create ``folder`` (and its parents) before the work that fills it, so that a folder that
    cannot be made fails first; remove the folders made here again, if still empty, when the
    work fails."""
    made = [parent for parent in [folder, *folder.parents] if not parent.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        reason = error.strerror or str(error)
        raise OSError(f"cannot create the folder {folder}: {reason}") from error
    try:
        yield
    except BaseException:
        for path in made:  # the deepest first
            with contextlib.suppress(OSError):
                path.rmdir()  # only an empty folder goes
        raise


def _report(args: argparse.Namespace) -> None:
    with _output_folder(args.output_dir):
        _write_report(args)


def _write_report(args: argparse.Namespace) -> None:
    from torchcal._report import calibration_summary, format_table, write_json
    from torchcal.calibrators.temperature import TemperatureScaler
    from torchcal.io.files import check_output, load_scaler, output_file
    from torchcal.metrics import reliability_bins
    from torchcal.plots import reliability_diagram

    diagram, json_path = args.output_dir / "reliability.png", args.output_dir / "report.json"
    check_output(diagram), check_output(json_path)
    logits, labels = _load_data(args)
    if args.inputs == "probs":
        probs = {"uncalibrated": logits.double()}
    else:
        _refuse_probabilities(logits, args.logits)
        probs = {"uncalibrated": torch.softmax(logits.double(), dim=1)}
    extra: dict = {"n_samples": int(labels.numel()), "inputs": args.inputs}
    if args.scaler is not None:
        scaler = load_scaler(args.scaler)
        if scaler.inputs != args.inputs:
            raise ValueError(
                f"{args.scaler} was fitted on {scaler.inputs} (torchcal fit --inputs "
                f"{scaler.inputs}) but this report reads {args.inputs}: pass --inputs "
                f"{scaler.inputs} with {scaler.inputs} files"
            )
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
        for name, p in tqdm(probs.items(), desc="bootstrap", leave=False, disable=None)
    }
    with output_file(diagram, "wb") as file:
        reliability_diagram({name: reliability_bins(p, labels) for name, p in probs.items()},
                            path=file)  # fmt: skip
    write_json(json_path, summaries, **extra)
    print(f"{labels.numel()} samples, 95% bootstrap intervals ({args.resamples} resamples)")
    print(format_table(summaries))
    print(f"\ndiagram: {diagram}\nreport:  {json_path}")


def _refuse_probabilities(logits: torch.Tensor, path: Path) -> None:
    """Refuse logits that are probabilities (rows in [0, 1] summing to 1, as the fits refuse
    them): their softmax would be reported as the model's probabilities."""
    in_unit_interval = bool(((logits >= 0) & (logits <= 1)).all())
    if in_unit_interval and bool(((logits.double().sum(dim=1) - 1).abs() <= 1e-3).all()):
        raise ValueError(
            f"{path} looks like probabilities: every row lies in [0, 1] and sums to 1; "
            "pass --inputs probs"
        )


def _compare(args: argparse.Namespace) -> None:
    from torchcal.compare import DEFAULT_METHODS, compare

    _check_compare_outputs(args)
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
        inputs=args.inputs,
        progress=True,
    )
    print(
        f"fitted on {val_labels.numel()} validation samples, scored on {test_labels.numel()} "
        f"test samples, 95% bootstrap intervals ({args.resamples} resamples)"
    )
    print(comparison.to_markdown() if args.markdown else comparison)
    _compare_outputs(args, comparison, val_labels.numel(), test_labels.numel())


def _check_compare_outputs(args: argparse.Namespace) -> None:
    """Refuse unwritable --save-best and --json targets before the fits."""
    from torchcal.io.files import check_output

    for path in (args.save_best, args.json):
        if path is not None:
            check_output(path)


def _compare_outputs(
    args: argparse.Namespace, comparison: Comparison, n_validation: int, n_test: int
) -> None:
    """Print the best method per metric; write --save-best and --json."""
    from torchcal._report import METRICS, write_json
    from torchcal.compare import UNCALIBRATED
    from torchcal.io.files import save_scaler

    best = {metric: _best_methods(comparison, metric) for metric in METRICS}
    print("\nbest on the test split (point estimates; ties listed together):")
    for metric, names in best.items():
        print(f"  {metric + ':':<10}{', '.join(names)}")
    saved: dict[str, str] = {}
    if args.save_best is not None:
        chosen = _best_calibrator(comparison, args.best_by)
        if chosen not in best[args.best_by]:
            print(
                f"warning: no calibrator improves the test {args.best_by} of the {UNCALIBRATED} "
                f"model; saving the best calibrator, {chosen}, all the same",
                file=sys.stderr,
            )
        calibrator = comparison.calibrators[chosen]
        if args.inputs == "probs":
            # compare fitted it on log-probabilities; with inputs="probs" it takes the logs itself
            calibrator.inputs = "probs"
        save_scaler(calibrator, args.save_best)
        saved = {"method": chosen, "best_by": args.best_by, "path": str(args.save_best)}
        print(
            f"\nsaved:   {args.save_best} ({chosen}, best test {args.best_by} of the calibrators)"
        )
    if args.json is not None:
        extra = {"saved_best": saved} if saved else {}
        write_json(
            args.json,
            comparison.summaries,
            inputs=args.inputs,
            n_validation=n_validation,
            n_test=n_test,
            n_resamples=args.resamples,
            best=best,
            fit_seconds=comparison.fit_seconds,
            **extra,
        )
        print(f"report:  {args.json}")


def _best_methods(comparison: Comparison, metric: str) -> list[str]:
    """Every method whose test ``metric`` equals the best one's (in table order)."""
    value = comparison.summaries[comparison.best(metric)][metric].value
    return [
        name for name, summary in comparison.summaries.items() if summary[metric].value == value
    ]


def _best_calibrator(comparison: Comparison, metric: str) -> str:
    """The fitted calibrator (never the uncalibrated row) with the best test ``metric``."""
    from torchcal.compare import Comparison

    fitted = Comparison(
        {name: comparison.summaries[name] for name in comparison.calibrators},
        comparison.calibrators,
        comparison.fit_seconds,
    )
    return fitted.best(metric)


COMMANDS = {"demo": _demo, "fit": _fit, "report": _report, "compare": _compare}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status.

    Args:
        argv: the arguments after the program name; ``None`` reads ``sys.argv``.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    # Warnings as one line each (once per place, as by default); the caller's settings come back.
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = _show_warning
        try:
            COMMANDS[args.command](args)
        except (ValueError, TypeError, OSError, ImportError, NotFittedError, RuntimeError) as error:
            message = " ".join(str(error).split()) or type(error).__name__
            message = message.replace("inputs='probs'", "--inputs probs")  # the option's CLI name
            print(f"torchcal {args.command}: error: {message}", file=sys.stderr)
            return 1
    return 0


def _show_warning(
    message: Warning | str, category: type[Warning], *_: object, **__: object
) -> None:
    """Print a warning as ``warning: MESSAGE`` on standard error (no file, line or category)."""
    print(f"warning: {message}", file=sys.stderr)
