"""The ``torchcal`` command end to end: in a subprocess, and in this process through ``main``
where a fresh interpreter (about 3 s of imports each) would prove nothing more."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import tempered_logits

from torchcal import TemperatureScaler
from torchcal.cli import main
from torchcal.io.files import load_scaler
from torchcal.metrics import expected_calibration_error


def torchcal(*args: str, cwd=None, **options) -> subprocess.CompletedProcess:
    """Run the command line in a fresh process (``options`` go to ``subprocess.run``)."""
    return subprocess.run(
        [sys.executable, "-m", "torchcal", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env={**os.environ},
        **options,
    )


def in_process(capsys, *args: object) -> subprocess.CompletedProcess:
    """Run the command line through ``main`` in this process, with its captured output."""
    returncode = main([str(arg) for arg in args])
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, returncode, captured.out, captured.err)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    logits, labels = tempered_logits(2000, 10, temperature=2.0, seed=3)
    torch.save(logits, folder / "logits.pt")
    np.save(folder / "labels.npy", labels.numpy())
    np.savez(folder / "both.npz", logits=logits.numpy(), labels=labels.numpy())
    from safetensors.torch import save_file

    save_file({"logits": logits}, folder / "logits.safetensors")
    return folder, logits, labels


def test_help_lists_the_commands():
    result = torchcal("--help")
    assert result.returncode == 0
    for command in ("demo", "fit", "report", "compare"):
        assert command in result.stdout


def test_fit_then_report(files, tmp_path, capsys):
    folder, logits, labels = files
    fitted = in_process(
        capsys, "fit", folder / "logits.pt", folder / "labels.npy", "-o", tmp_path / "s.pt"
    )
    assert fitted.returncode == 0, fitted.stderr
    expected = TemperatureScaler().fit(logits, labels, progress=False).temperature
    assert load_scaler(tmp_path / "s.pt").temperature == pytest.approx(expected, rel=1e-9)
    assert fitted.stdout.startswith(f"T = {expected:.6g} on 2000 samples")
    out = tmp_path / "report"
    report = in_process(
        capsys,
        "report", folder / "logits.safetensors", folder / "both.npz", "--labels-key", "labels",
        "--scaler", tmp_path / "s.pt", "--output-dir", out, "--resamples", "200",
    )  # fmt: skip
    assert report.returncode == 0, report.stderr
    assert "uncalibrated" in report.stdout and "calibrated" in report.stdout
    data = json.loads((out / "report.json").read_text())
    assert data["temperature"] == pytest.approx(expected, rel=1e-9)
    ece = data["metrics"]["uncalibrated"]["ECE"]
    probs = torch.softmax(logits.double(), dim=1)
    assert ece["value"] == pytest.approx(float(expected_calibration_error(probs, labels)), 1e-9)
    assert ece["low"] <= ece["value"] <= ece["high"]
    assert (out / "reliability.png").read_bytes()[:4] == b"\x89PNG"


def one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.slow  # about 30 s of subprocess runs
def test_bad_inputs_end_in_one_clear_line(files, tmp_path):
    folder, _, labels = files
    np.save(tmp_path / "short.npy", labels[:10].numpy())
    np.save(tmp_path / "float.npy", labels.double().numpy())
    (tmp_path / "junk.pt").write_bytes(b"not a tensor")
    (tmp_path / "x.csv").write_text("1,2")
    out = ["-o", tmp_path / "s.pt"]
    one_line_error(torchcal("fit", folder / "logits.pt", tmp_path / "short.npy", *out), "10")
    one_line_error(torchcal("fit", folder / "logits.pt", tmp_path / "float.npy", *out), "integer")
    one_line_error(torchcal("fit", tmp_path / "junk.pt", folder / "labels.npy", *out), "junk.pt")
    one_line_error(torchcal("fit", tmp_path / "x.csv", folder / "labels.npy", *out), ".csv")
    one_line_error(torchcal("fit", tmp_path / "nope.pt", folder / "labels.npy", *out), "no such")
    one_line_error(
        torchcal("fit", folder / "both.npz", folder / "labels.npy", *out),
        "both.npz holds 2 arrays (labels, logits); name one with --logits-key",
    )
    one_line_error(
        torchcal("fit", folder / "logits.pt", folder / "both.npz", "--labels-key", "y", *out),
        "no array named 'y'; it holds labels, logits: name one with --labels-key",
    )
    report = torchcal(
        "report",
        folder / "logits.pt",
        folder / "labels.npy",
        "--scaler",
        tmp_path / "junk.pt",
        cwd=tmp_path,
    )
    one_line_error(report, "not a saved calibrator")
    # probabilities without --inputs probs: the advice names the option, not the Python keyword
    np.save(tmp_path / "probs.npy", torch.softmax(files[1], dim=1).numpy())
    probs = (tmp_path / "probs.npy", folder / "labels.npy")
    one_line_error(torchcal("fit", *probs, *out), "look like probabilities", "--inputs probs")
    one_line_error(
        torchcal("report", *probs, cwd=tmp_path), "looks like probabilities", "--inputs probs"
    )
    # a report that fails leaves no empty output folder behind (made before the data are read)
    assert not (tmp_path / "torchcal-report").exists()
    nested = tmp_path / "new" / "deeper"
    failed = torchcal("report", *probs, "--output-dir", nested)
    one_line_error(failed, "looks like probabilities")
    assert not (tmp_path / "new").exists()


def test_compare_prints_one_row_per_method_with_the_library_values(files, capsys):
    folder, logits, labels = files
    np.save(folder / "val_labels.npy", labels[:1000].numpy())
    np.save(folder / "test_labels.npy", labels[1000:].numpy())
    torch.save(logits[:1000], folder / "val_logits.pt")
    torch.save(logits[1000:], folder / "test_logits.pt")
    result = in_process(
        capsys,
        "compare",
        *(folder / name for name in ("val_logits.pt", "val_labels.npy")),
        *(folder / name for name in ("test_logits.pt", "test_labels.npy")),
        "--methods", "temperature", "isotonic", "--resamples", "50", "--markdown",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ")][1:]
    assert [row.split("|")[1].strip() for row in rows] == [
        "uncalibrated",
        "temperature",
        "isotonic",
    ]
    from torchcal import compare

    expected = compare(logits[:1000], labels[:1000], logits[1000:], labels[1000:],
                       ["temperature", "isotonic"], n_resamples=50)  # fmt: skip
    for row, (name, summary) in zip(rows, expected.summaries.items(), strict=True):
        assert f"| {summary['NLL']} |" in row and f"| {summary['ECE']} |" in row, name
    val = (folder / "val_logits.pt", folder / "val_labels.npy")
    unknown = in_process(capsys, "compare", *val * 2, "--methods", "bogus")
    assert unknown.returncode == 1 and "unknown calibration method 'bogus'" in unknown.stderr


def test_main_leaves_the_callers_warning_settings_as_they_were(tmp_path, capsys):
    """In a Python process, the command's one-line warning format and filter stay its own."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        shown, formatted, filters = (
            warnings.showwarning,
            warnings.formatwarning,
            warnings.filters[:],
        )
        result = in_process(
            capsys, "fit", tmp_path / "nope.pt", tmp_path / "no.npy", "-o", tmp_path / "s.pt"
        )
        assert result.returncode == 1 and "no such" in result.stderr
        assert warnings.showwarning is shown and warnings.formatwarning is formatted
        assert warnings.filters == filters
