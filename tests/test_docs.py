"""The README's code runs, and the quick-start example prints what the README says."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_stdout(*command: str) -> str:
    """Run a command with this interpreter's environment and return what it printed."""
    result = subprocess.run(command, capture_output=True, text=True, check=True, timeout=300)
    return result.stdout


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.DOTALL)


def test_readme_python_blocks_run_in_order():
    blocks = python_blocks(ROOT / "README.md")
    assert len(blocks) >= 3
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)


def test_quick_start_commands_are_two_lines_and_match_ci():
    readme = (ROOT / "README.md").read_text()
    quick_start = re.search(r"## Quick start\n\n```bash\n(.*?)```", readme, flags=re.DOTALL)
    lines = quick_start.group(1).strip().splitlines()
    assert len(lines) == 2
    assert lines[1] in (ROOT / ".ci" / "run").read_text()


def test_demo_prints_the_readme_table(tmp_path):
    stdout = run_stdout(sys.executable, "-m", "torchcal", "demo", "--output-dir", str(tmp_path))
    readme = (ROOT / "README.md").read_text()
    lines = stdout.strip().splitlines()
    table = lines[lines.index("metric   uncalibrated            calibrated") :][:6]
    assert len(table) == 6
    for line in [lines[0], *table]:
        assert line in readme, line
    for name in ("reliability.png", "report.json", "scaler.pt"):
        assert (tmp_path / name).stat().st_size > 0


def test_digits_example_agrees_with_the_demo_table():
    stdout = run_stdout(sys.executable, str(ROOT / "examples" / "digits.py"))
    readme = (ROOT / "README.md").read_text()
    for row in stdout.strip().splitlines()[-2:]:
        name, *values = row.split()
        assert name in ("uncalibrated", "calibrated")
        for value in values:
            assert f"{value} [" in readme, (name, value)


def test_escalation_example_keeps_its_target_on_the_test_split():
    stdout = run_stdout(sys.executable, str(ROOT / "examples" / "escalation_digits.py"))
    lines = stdout.strip().splitlines()
    readme = (ROOT / "README.md").read_text()
    for line in lines:
        assert line in readme, line
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


def test_compare_example_prints_the_readme_table():
    stdout = run_stdout(sys.executable, str(ROOT / "examples" / "compare_digits.py"))
    readme = (ROOT / "README.md").read_text()
    lines = stdout.strip().splitlines()
    rows = [line for line in lines if line.startswith("| ")]
    assert len(rows) == 1 + 1 + 7  # header, uncalibrated and the seven methods
    for line in lines:
        assert line in readme, line
    methods = [row.split("|")[1].strip() for row in rows[1:]]
    assert methods[:2] == ["uncalibrated", "temperature"]
