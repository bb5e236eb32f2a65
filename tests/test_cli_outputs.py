"""The command line with probabilities, (N, 1) labels, compare's outputs, and write failures.

Each case runs ``python -m torchcal`` in a fresh process (about two seconds of imports each), so
several checks share one run where they can.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import stat

import numpy as np
import pytest
import torch
from conftest import tempered_logits
from test_cli import one_line_error, torchcal

from torchcal import TemperatureScaler, compare
from torchcal.io.files import load_scaler
from torchcal.metrics import expected_calibration_error, negative_log_likelihood

# Each test runs the command several times in subprocesses (about 20 s each).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def probs_files(tmp_path_factory):
    """Softmax probabilities (float32 .npy) with labels saved as (N, 1) columns."""
    folder = tmp_path_factory.mktemp("probs")
    logits, labels = tempered_logits(1200, 6, temperature=2.0, seed=5)
    probs = torch.softmax(logits, dim=1)
    for split, rows in (("val", slice(0, 600)), ("test", slice(600, None))):
        np.save(folder / f"{split}_probs.npy", probs[rows].numpy())
        np.save(folder / f"{split}_labels.npy", labels[rows, None].numpy())  # (N, 1)
    np.savez(folder / "val_labels.npz", y=labels[:600, None].numpy())
    return folder, probs, labels


def test_probabilities_and_column_labels_in_fit_report_and_compare(probs_files, tmp_path):
    folder, probs, labels = probs_files
    val, test = (probs[:600], labels[:600]), (probs[600:], labels[600:])
    scaler_path = tmp_path / "scaler.pt"
    fitted = torchcal(
        "fit", folder / "val_probs.npy", folder / "val_labels.npz", "--labels-key", "y",
        "--inputs", "probs", "-o", scaler_path,
    )  # fmt: skip
    assert fitted.returncode == 0, fitted.stderr
    expected = TemperatureScaler(inputs="probs").fit(*val, progress=False)
    scaler = load_scaler(scaler_path)
    assert scaler.inputs == "probs"
    assert scaler.temperature == pytest.approx(expected.temperature, rel=1e-9)

    out = tmp_path / "report"
    report = torchcal(
        "report", folder / "test_probs.npy", folder / "test_labels.npy", "--inputs", "probs",
        "--scaler", scaler_path, "--output-dir", out, "--resamples", "20",
    )  # fmt: skip
    assert report.returncode == 0, report.stderr
    data = json.loads((out / "report.json").read_text())
    assert data["inputs"] == "probs" and data["n_samples"] == 600
    before = float(expected_calibration_error(test[0].double(), test[1]))
    after = float(negative_log_likelihood(expected.predict_proba(test[0]).double(), test[1]))
    assert data["metrics"]["uncalibrated"]["ECE"]["value"] == pytest.approx(before, rel=1e-9)
    assert data["metrics"]["calibrated"]["NLL"]["value"] == pytest.approx(after, rel=1e-6)
    assert (out / "reliability.png").read_bytes()[:4] == b"\x89PNG"

    best_path, json_path = tmp_path / "best.safetensors", tmp_path / "compare.json"
    compared = torchcal(
        "compare", *(folder / f"{name}.npy" for name in ("val_probs", "val_labels")),
        *(folder / f"{name}.npy" for name in ("test_probs", "test_labels")),
        "--inputs", "probs", "--methods", "temperature", "isotonic", "--resamples", "20",
        "--save-best", best_path, "--best-by", "ece", "--json", json_path,
    )  # fmt: skip
    assert compared.returncode == 0, compared.stderr
    reference = compare(*val, *test, ["temperature", "isotonic"], inputs="probs", n_resamples=20)
    report = json.loads(json_path.read_text())
    assert list(report["metrics"]) == ["uncalibrated", "temperature", "isotonic"]
    for metric, names in report["best"].items():
        values = {name: summary[metric].value for name, summary in reference.summaries.items()}
        best = (max if metric == "accuracy" else min)(values.values())
        assert names == [name for name, value in values.items() if value == best], metric
        assert f"  {metric + ':':<10}{', '.join(names)}" in compared.stdout.splitlines()
    ece = {name: reference.summaries[name]["ECE"].value for name in ("temperature", "isotonic")}
    chosen = min(ece, key=ece.get)
    assert report["saved_best"] == {"method": chosen, "best_by": "ECE", "path": str(best_path)}
    saved = load_scaler(best_path)
    assert saved.kind == chosen and saved.inputs == "probs"
    # the saved calibrator takes probabilities and reproduces the compared one exactly
    log_probs = test[0].clamp_min(torch.finfo(torch.float32).tiny).log()
    torch.testing.assert_close(
        saved.predict_proba(test[0]),
        reference.calibrators[chosen].predict_proba(log_probs),
        rtol=0,
        atol=1e-6,
    )


def drop_file_permission_override() -> None:
    """In the child, before exec: give up the capabilities that let root ignore permissions."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def limit_file_size() -> None:
    """In the child: files may grow to 1 KiB, as if the disk filled up (Python ignores SIGXFSZ,
    so a write past the limit fails with EFBIG)."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))


def no_temporary_files(folder) -> bool:
    return not [path for path in folder.iterdir() if path.name.endswith(".tmp")]


def test_write_failures_end_in_one_line_and_keep_earlier_files(tmp_path):
    logits, labels = tempered_logits(300, 4, temperature=2.0, seed=1)
    data = tmp_path / "data"
    data.mkdir()
    torch.save(logits, data / "logits.pt")
    np.save(data / "labels.npy", labels.numpy())
    inputs = (data / "logits.pt", data / "labels.npy")

    one_line_error(torchcal("fit", *inputs, "-o", data), "cannot write", "is a folder")
    one_line_error(
        torchcal("fit", *inputs, "-o", tmp_path / "missing" / "s.pt"),
        "cannot write", "missing' does not exist",
    )  # fmt: skip
    one_line_error(torchcal("fit", *inputs, "-o", "/dev/full"), "/dev/full", "not a regular file")
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)  # refused, not replaced
    refused = torchcal("compare", *inputs, *inputs, "--save-best", "/dev/full", "--json", data)
    one_line_error(refused, "cannot write /dev/full", "not a regular file")  # before any fit
    assert refused.stdout == ""
    one_line_error(
        torchcal("report", *inputs, "--output-dir", data / "logits.pt"),
        "cannot create the folder", "logits.pt",
    )  # fmt: skip

    # a full disk: the earlier report survives a write that fails part-way
    out = tmp_path / "report"
    out.mkdir()
    (out / "report.json").write_text("earlier report")
    (out / "reliability.png").write_bytes(b"earlier diagram")
    full = torchcal(
        "report", *inputs, "--output-dir", out, "--resamples", "10", preexec_fn=limit_file_size
    )
    one_line_error(full, "cannot write", "reliability.png", "File too large")
    assert (out / "report.json").read_text() == "earlier report"
    assert (out / "reliability.png").read_bytes() == b"earlier diagram"
    assert no_temporary_files(out)


def test_a_read_only_folder_ends_in_one_line(tmp_path):
    logits, labels = tempered_logits(300, 4, temperature=2.0, seed=1)
    torch.save(logits, tmp_path / "logits.pt")
    np.save(tmp_path / "labels.npy", labels.numpy())
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "s.pt").write_bytes(b"earlier scaler")
    locked.chmod(0o555)
    # root ignores permission bits; the child gives up that privilege before it starts
    as_root = os.geteuid() == 0
    try:
        result = torchcal(
            "fit", tmp_path / "logits.pt", tmp_path / "labels.npy", "-o", locked / "s.pt",
            preexec_fn=drop_file_permission_override if as_root else None,
        )  # fmt: skip
    except OSError as error:  # only where root may not drop capabilities (no CAP_SETPCAP)
        pytest.skip(f"running as root and cannot drop CAP_DAC_OVERRIDE: {error}")
    finally:
        locked.chmod(0o755)
    one_line_error(result, "cannot write", "s.pt", "Permission denied")
    assert (locked / "s.pt").read_bytes() == b"earlier scaler"
    assert no_temporary_files(locked)
