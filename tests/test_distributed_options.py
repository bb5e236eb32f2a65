"""Ranks of a distributed fit that pass different options all stop with one clear ValueError.

Two gloo processes (started as subprocesses, rendezvous through a file so no TCP port is
reused) run every scenario in turn in one process group: in each, rank 1 passes one option
differently. Before the fix, a different ``n_bins`` or ``max_iter`` aborted both processes
inside gloo and a different ``temperature_bounds`` silently gave each rank its own T.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import scipy_temperature, tempered_logits
from hostile import expect_exact, expect_refused

import torchcal

ROOT = Path(torchcal.__file__).resolve().parents[1]  # the torchcal under test, for subprocesses
TESTS = Path(__file__).resolve().parent
TIMEOUT_S = 240

# name: (rank 0's options, rank 1's options, the words every rank's error must contain)
MISMATCHES = {
    "n_bins": ({"n_bins": 15}, {"n_bins": 10}, ("n_bins", "15 on rank 0", "10 on rank 1")),
    "max_iter": ({"max_iter": 100}, {"max_iter": 3}, ("max_iter", "100", "3 on rank 1")),
    "temperature_bounds": (
        {"temperature_bounds": (1e-3, 1e3)},
        {"temperature_bounds": (1e-3, 1.5)},
        ("temperature_bounds", "1.5"),
    ),
    "tol": ({"tol": 1e-6}, {"tol": 1e-3}, ("tol", "0.001 on rank 1")),
    "method": ({"method": "lbfgs"}, {"method": "newton"}, ("method", "'newton' on rank 1")),
    "ignore_index": ({}, {"ignore_index": -1}, ("ignore_index", "-100", "-1 on rank 1")),
    "dtype": ({}, {"dtype": "float64"}, ("dtype", "torch.float32", "torch.float64")),
}

WORKER = r"""
import json, sys, traceback
import torch
import torch.distributed as dist
from conftest import tempered_logits
from torchcal import TemperatureScaler

rank, store, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
cases = json.loads(sys.argv[4])
dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
results = {}
try:
    logits, labels = tempered_logits(3_000, 6, temperature=2.0, seed=31)
    half = slice(0, 1_300) if rank == 0 else slice(1_300, None)
    logits, labels = logits[half], labels[half]
    for name, options in cases:
        options = dict(options[rank])
        if "temperature_bounds" in options:
            options["temperature_bounds"] = tuple(options["temperature_bounds"])
        dtype = getattr(torch, options.pop("dtype", "float32"))
        try:
            scaler = TemperatureScaler(**options)
            scaler.fit(logits.to(dtype), labels, distributed=True)
            results[name] = {"temperature": scaler.temperature}
        except Exception as error:
            results[name] = {"error": type(error).__name__, "message": str(error)}
finally:
    dist.destroy_process_group()
    with open(out, "w") as file:
        json.dump(results, file)
"""


def _run_ranks(tmp_path: Path, cases: list) -> list[dict]:
    """Run the worker on ranks 0 and 1; their results by scenario (stderr shown on failure)."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env_path = f"{ROOT}:{TESTS}"
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                str(script),
                str(rank),
                str(tmp_path / "store"),
                str(tmp_path / f"rank{rank}.json"),
                json.dumps(cases),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": env_path, "OMP_NUM_THREADS": "1"},
        )
        for rank in (0, 1)
    ]
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=TIMEOUT_S))
    except subprocess.TimeoutExpired:
        for process in processes:
            process.kill()
        stderr = [process.communicate()[1] for process in processes]
        pytest.fail(f"the ranks did not finish within {TIMEOUT_S} s; stderr: {stderr}")
    for rank, (process, (_, stderr)) in enumerate(zip(processes, outputs, strict=True)):
        assert process.returncode == 0, f"rank {rank} exited {process.returncode}:\n{stderr}"
    return [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]


def _raise(result: dict) -> float:
    if "error" in result:
        error_type = {"ValueError": ValueError, "TypeError": TypeError}.get(result["error"])
        raise (error_type or RuntimeError)(result["message"])
    return result["temperature"]


def test_every_rank_refuses_options_that_differ_and_agrees_when_they_match(tmp_path):
    cases = [(name, [first, second]) for name, (first, second, _) in MISMATCHES.items()]
    cases.append(("same", [{"n_bins": 12}, {"n_bins": 12}]))
    per_rank = _run_ranks(tmp_path, cases)
    for name, (_, _, words) in MISMATCHES.items():
        for rank in (0, 1):  # each rank raises, naming the option and both values
            expect_refused(lambda r=rank, n=name: _raise(per_rank[r][n]), *words)
    temperatures = [_raise(per_rank[rank]["same"]) for rank in (0, 1)]

    reference = scipy_temperature(*tempered_logits(3_000, 6, temperature=2.0, seed=31))

    def same_on_both_ranks(values: list[float]) -> None:  # and the optimum on all the rows
        assert values[0] == values[1]
        assert values[0] == pytest.approx(reference, rel=1e-5)

    expect_exact(lambda: temperatures, same_on_both_ranks)
