"""The README's code runs, and the quick-start example prints what the README says."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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


def test_digits_example_prints_the_readme_table():
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "digits.py")],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    readme = (ROOT / "README.md").read_text()
    for line in result.stdout.strip().splitlines()[-3:]:
        assert line in readme, line
