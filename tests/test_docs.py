"""The README's code runs, every block on its own, and the demo and the examples print the
README's figures to within what their computation can promise on any CPU.

The digits network behind the demo and the examples is trained by 1000 full-batch Adam steps.
Another CPU kernel (AVX-512, AVX2 or none) or thread count rounds the sums differently, so the
trained weights, and every figure computed from them, move in their last digits: the fitted T has
been seen at 1.83012, 1.83020, 1.83022 and 1.83023. The printed numbers are therefore parsed and
compared with tolerances, never as text: T to ``T_RELATIVE``; every other decimal figure to
``FIGURE_ABSOLUTE`` beyond half a unit of its last printed digit, except the ends of MCE's
bootstrap intervals (``MCE_INTERVAL_ABSOLUTE``). Counts (samples, images, evaluations) are exact.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()

T_RELATIVE = 1e-3
# Accuracies, NLL, ECE, MCE, Brier, margins and coverages of 359-360 digits images, and their
# bootstrap intervals: one image is 1/360 = 0.0028 of a split, and the kernels have moved none of
# these figures by more than 7e-4.
FIGURE_ABSOLUTE = 2e-3
# MCE is the largest gap of any one bin, and some bins hold a handful of images: when one image
# changes bins a resample's MCE jumps, and a percentile of the resamples can land on a
# neighbouring resample's value (the vector map's upper end has read 0.9288 and 0.8562).
MCE_INTERVAL_ABSOLUTE = 0.1
# A guard against a hang only: a subprocess on a busy machine may take minutes.
TIMEOUT_S = 900

NUMBER = re.compile(r"(?<![\w.])-?(?:\d+\.\d+|\d+|inf)(?![\w])")


def run_stdout(*command: str, cwd: Path | None = None) -> str:
    """Run a command with this checkout importable and return what it printed; a failure shows
    the command's stderr."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": path},
    )
    assert result.returncode == 0, f"{command} exited {result.returncode}:\n{result.stderr}"
    return result.stdout


def skeleton(line: str) -> str:
    """The line with every number replaced by ``#``."""
    return NUMBER.sub("#", line)


def is_mce_interval_end(line: str, position: int) -> bool:
    """Whether the number at ``position`` ends an MCE interval: in the demo's ``MCE`` row or in
    the MCE column (the fifth cell) of a markdown table row."""
    before = line[:position]
    in_interval = before.rfind("[") > before.rfind("]")
    in_mce = line.startswith("MCE ") or (line.startswith("| ") and before.count("|") == 5)
    return in_interval and in_mce


def assert_figures_match(found: str, expected: str) -> None:
    """``found`` reads like ``expected``, each number within its tolerance (module docstring)."""
    assert skeleton(found) == skeleton(expected), (found, expected)
    for match, wanted in zip(NUMBER.finditer(found), NUMBER.findall(expected), strict=True):
        value = match.group()
        if "." not in wanted:  # a count, or inf
            assert value == wanted, (found, expected)
            continue
        decimals = len(wanted.split(".")[1])
        if found[: match.start()].endswith("T = "):
            tolerance = T_RELATIVE * float(wanted)
        elif is_mce_interval_end(found, match.start()):
            tolerance = MCE_INTERVAL_ABSOLUTE
        else:
            tolerance = FIGURE_ABSOLUTE + 0.5 * 10.0**-decimals
        assert abs(float(value) - float(wanted)) <= tolerance, (value, wanted, found)


def assert_printed_in_readme(stdout: str) -> None:
    """Every non-empty printed line matches the README line of the same form."""
    readme_lines = README.splitlines()
    for line in filter(None, stdout.strip().splitlines()):
        same_form = [known for known in readme_lines if skeleton(known) == skeleton(line)]
        assert len(same_form) == 1, (line, same_form)
        assert_figures_match(line, same_form[0])


def test_figures_are_compared_with_their_tolerances():
    assert_figures_match("T = 1.83012 on 359", "T = 1.83023 on 359")
    assert_figures_match("ECE 0.0194 [inf, 1]", "ECE 0.0178 [inf, 1]")
    assert_figures_match("MCE      0.4548 [0.3446, 0.9206]", "MCE      0.4551 [0.3400, 0.9206]")
    assert_figures_match(
        "| vector | 1 | 2 | 3 | 0.6982 [0.5093, 0.8562] |",
        "| vector | 1 | 2 | 3 | 0.6982 [0.5094, 0.9288] |",
    )
    for found, expected in [
        ("T = 1.8330 on 359", "T = 1.8302 on 359"),  # T off by 1.5e-3 relative
        ("ECE 0.0204", "ECE 0.0178"),  # 0.0026 off
        ("T = 1.83023 on 358", "T = 1.83023 on 359"),  # a count differs
        ("ECE 0.0178 (2 runs)", "ECE 0.0178 (2 tries)"),  # the words differ
        ("MCE      0.4611 [0.34, 0.92]", "MCE      0.4551 [0.34, 0.92]"),  # MCE itself is not loose
        (
            "| vector | 1 | 2 | 3 | 0.6982 [0.5093, 0.9800] |",
            "| vector | 1 | 2 | 3 | 0.6982 [0.5094, 0.8562] |",
        ),
    ]:
        with pytest.raises(AssertionError):
            assert_figures_match(found, expected)


# ------------------------------------------------------------------ README code blocks
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.DOTALL)


@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=lambda index: f"block{index + 1}")
def test_every_readme_block_runs_on_its_own(index):
    namespace = {"__name__": "readme"}
    exec(compile(BLOCKS[index], f"README.md python block {index + 1}", "exec"), namespace)


def test_readme_blocks_run_in_order_in_one_namespace():
    assert len(BLOCKS) >= 3
    namespace = {"__name__": "readme"}
    for index, block in enumerate(BLOCKS):
        exec(compile(block, f"README.md python block {index + 1}", "exec"), namespace)


# ------------------------------------------------------------------ the quick start
def quick_start_lines() -> list[str]:
    quick_start = re.search(r"## Quick start\n\n```bash\n(.*?)```", README, flags=re.DOTALL)
    return quick_start.group(1).strip().splitlines()


def test_ci_runs_both_quick_start_lines_verbatim():
    lines = quick_start_lines()
    assert lines == [
        'pip install torch==2.13.0 ".[demo]" && torchcal demo',
        'pip install torch==2.13.0 ".[test]" && pytest',
    ]
    ci_commands = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    for line in lines:
        assert line in ci_commands, line


def demo_output_in_readme() -> str:
    return re.search(r"Its output:\n\n```text\n(.*?)```", README, flags=re.DOTALL).group(1)


@pytest.mark.slow  # a subprocess that trains the digits network: about 12 s
def test_demo_prints_the_readme_output(tmp_path):
    stdout = run_stdout(sys.executable, "-m", "torchcal", "demo", cwd=tmp_path)
    printed = [line for line in stdout.strip().splitlines()]
    expected = demo_output_in_readme().strip().splitlines()
    assert len(printed) == len(expected), stdout
    for found, wanted in zip(printed, expected, strict=True):
        assert_figures_match(found, wanted)
    for name in ("reliability.png", "report.json", "scaler.pt"):
        assert (tmp_path / "torchcal-demo" / name).stat().st_size > 0


@pytest.mark.slow  # a subprocess that trains the digits network: about 12 s
def test_digits_example_agrees_with_the_demo_output():
    stdout = run_stdout(sys.executable, str(ROOT / "examples" / "digits.py"))
    lines = stdout.strip().splitlines()
    demo = demo_output_in_readme().splitlines()
    assert_figures_match(lines[0], demo[0])  # the same fit
    table = {line.split()[0]: NUMBER.findall(line) for line in demo if NUMBER.findall(line)}
    metrics = ["accuracy", "NLL", "ECE", "MCE", "Brier"]
    assert lines[-3].split() == metrics
    for row, column in zip(lines[-2:], (0, 3), strict=True):  # the value before each interval
        name, *values = row.split()
        assert name == ("uncalibrated", "calibrated")[column // 3]
        for metric, value in zip(metrics, values, strict=True):
            assert_figures_match(value, table[metric][column])


@pytest.mark.slow  # a subprocess that trains the digits network: about 12 s
def test_escalation_example_keeps_its_target_on_the_test_split():
    stdout = run_stdout(sys.executable, str(ROOT / "examples" / "escalation_digits.py"))
    assert_printed_in_readme(stdout)
    lines = stdout.strip().splitlines()
    validation = re.search(r"accuracy ([\d.]+) \(target ([\d.]+)\) at coverage ([\d.]+)", lines[1])
    accuracy, target, coverage = map(float, validation.groups())
    assert accuracy >= target == 0.995 and coverage > 0.8
    test = re.search(
        r"accepted (\d+) of (\d+) images \(coverage ([\d.]+)\) at accuracy ([\d.]+)", lines[2]
    )
    accepted, total, test_coverage, test_accuracy = test.groups()
    assert round(int(accepted) / int(total), 4) == float(test_coverage) >= 0.85
    assert float(test_accuracy) >= 0.995
    overall = float(lines[2].rsplit(" ", 1)[1])
    assert overall < float(test_accuracy)


def test_shapes_example_recovers_each_true_temperature():
    stdout = run_stdout(sys.executable, str(ROOT / "examples" / "shapes.py"))
    found = dict(line.split(maxsplit=1) for line in stdout.strip().splitlines())
    assert set(found) == {"binary", "multi-label", "segmentation", "tokens"}
    for name in ("binary", "segmentation", "tokens"):
        temperature = float(re.search(r"T = ([\d.]+)", found[name]).group(1))
        assert abs(temperature - 2.0) < 0.2, (name, temperature)
    per_label = [float(t) for t in re.findall(r"[\d.]+", found["multi-label"].split("=")[1])]
    assert [round(t) for t in per_label] == [1, 2, 3]
    assert "on 768 positions" in found["tokens"]


@pytest.mark.slow  # a subprocess that trains the digits network: about 12 s
def test_compare_example_prints_the_readme_table():
    stdout = run_stdout(sys.executable, str(ROOT / "examples" / "compare_digits.py"))
    assert_printed_in_readme(stdout)
    rows = [line for line in stdout.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + 1 + 7  # header, uncalibrated and the seven methods
    methods = [row.split("|")[1].strip() for row in rows[1:]]
    assert methods[:2] == ["uncalibrated", "temperature"]
    nll = {row.split("|")[1].strip(): float(row.split("|")[3].split()[0]) for row in rows[1:]}
    assert math.isinf(nll["vector"])  # the separated classes the README explains
