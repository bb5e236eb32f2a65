"""fit(..., distributed=True) on 2 gloo processes equals the single-process fit on all the data."""

from __future__ import annotations

import datetime
import pickle
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import tempered_logits
from torch import nn

from torchcal import CalibrationWarning, TemperatureScaler

WORLD_SIZE = 2
# Guards against a hang only: on a busy machine starting the processes alone can take minutes,
# and a deadline that a slow start can miss is a flaky test.
TIMEOUT_S = 600


def _shard(values, rank: int, fraction: float = 0.35):
    """Rank 0 gets the first 35% of the rows, rank 1 the rest: unequal shards."""
    split = int(len(values) * fraction)
    return values[:split] if rank == 0 else values[split:]


def _linear_problem():
    torch.manual_seed(0)
    model = nn.Linear(8, 5)
    inputs = torch.randn(3000, 8) * 2
    with torch.no_grad():
        labels = torch.distributions.Categorical(logits=model(inputs) / 2).sample()
    return model, inputs, labels


def scenario(name: str, rank: int | None):
    """(data, labels, options) of a scenario, for one rank's shard or (rank None) for all of it."""

    def part(values):
        return values if rank is None else _shard(values, rank)

    if name in ("softmax", "newton"):
        logits, labels = tempered_logits(20_000, 20, temperature=2.0, seed=21)
        options = {"method": "newton"} if name == "newton" else {}
        return part(logits), part(labels), options
    if name == "bfloat16":
        logits, labels = tempered_logits(10_000, 30, temperature=1.5, seed=22)
        return part(logits.bfloat16()), part(labels), {}
    if name == "tokens":  # (B, L, V) with ignored positions
        logits, labels = tempered_logits(300 * 16, 12, seed=23)
        labels[::5] = -100
        return part(logits.reshape(300, 16, 12)), part(labels.reshape(300, 16)), {}
    if name in ("binary", "per_class"):
        generator = torch.Generator().manual_seed(24)
        logits = torch.randn(8_000, 3, generator=generator) * 3
        temperatures = torch.tensor([0.8, 1.5, 3.0])
        targets = torch.bernoulli(torch.sigmoid(logits / temperatures), generator=generator)
        if name == "binary":
            return part(logits[:, 1]), part(targets[:, 1].long()), {}
        return part(logits), part(targets), {"activation": "sigmoid", "per_class": True}
    if name == "loader":
        model, inputs, labels = _linear_problem()
        dataset = torch.utils.data.TensorDataset(part(inputs), part(labels))
        return torch.utils.data.DataLoader(dataset, batch_size=256), None, {"model": model}
    if name == "nan":  # rank 1's shard holds a NaN
        logits, labels = tempered_logits(2_000, 5, seed=25)
        logits[1500, 2] = float("nan")
        return part(logits), part(labels), {}
    if name == "labels":  # rank 0 passes one label too few: it fails before any exchange
        logits, labels = tempered_logits(2_000, 5, seed=26)
        return part(logits), part(labels)[: -1 if rank == 0 else None], {}
    if name == "classes":  # the ranks disagree on the number of classes
        logits, labels = tempered_logits(2_000, 5 if rank == 0 else 6, seed=26)
        return part(logits), part(labels), {}
    raise ValueError(name)


SCENARIOS = ["softmax", "newton", "bfloat16", "tokens", "binary", "per_class", "loader"]
FAILING = ["nan", "labels", "classes"]


def _fit(name: str, rank: int | None, **fit_options):
    data, labels, options = scenario(name, rank)
    model = options.pop("model", None)
    scaler = TemperatureScaler(model, **options)
    if labels is None:
        return scaler.fit(data, progress=False, **fit_options)
    return scaler.fit(data, labels, progress=False, **fit_options)


def _summary(scaler: TemperatureScaler) -> dict:
    results = scaler.fit_result
    results = results if isinstance(results, tuple) else (results,)
    return {
        "temperatures": scaler.temperatures.reshape(-1).tolist(),
        "results": [result.to_dict() for result in results],
    }


def _rank_main(rank: int, folder: Path) -> None:
    """One rank: every scenario's fit (or its error), pickled to ``folder/rank<rank>.pkl``.

    The ranks meet through a file in ``folder``, not a TCP port: a port picked free beforehand
    can be taken by another process before the store binds it. They leave together (a barrier
    before the teardown), so that no rank closes its connections while another is still reading
    the last exchange.
    """
    dist.init_process_group(
        "gloo",
        init_method=f"file://{folder / 'rendezvous'}",
        rank=rank,
        world_size=WORLD_SIZE,
        timeout=datetime.timedelta(seconds=TIMEOUT_S),
    )
    results = {}
    try:
        for name in SCENARIOS + FAILING:
            try:
                results[name] = _summary(_fit(name, rank, distributed=True))
            except Exception as error:
                results[name] = {"error": type(error).__name__, "message": str(error)}
        dist.barrier()
    finally:
        dist.destroy_process_group()
    (folder / f"rank{rank}.pkl").write_bytes(pickle.dumps(results))


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> dict:
    """Every scenario fitted by 2 gloo processes; fails instead of hanging past TIMEOUT_S.

    A rank that raises or dies fails the fixture with its traceback or signal (``mp.spawn``);
    what the ranks wrote to stderr is in pytest's captured output.
    """
    folder = tmp_path_factory.mktemp("two_ranks")
    context = mp.spawn(_rank_main, args=(folder,), nprocs=WORLD_SIZE, join=False)
    deadline = time.monotonic() + TIMEOUT_S
    while not context.join(timeout=max(1.0, deadline - time.monotonic())):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.terminate()
            pytest.fail(f"the 2-process fits did not finish within {TIMEOUT_S} s")
    return {
        (name, rank): found
        for rank in range(WORLD_SIZE)
        for name, found in pickle.loads((folder / f"rank{rank}.pkl").read_bytes()).items()
    }


@pytest.mark.parametrize("name", SCENARIOS)
def test_every_rank_gets_the_single_process_fit_of_all_shards(two_ranks, name):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        reference = _summary(_fit(name, None))
    for rank in range(WORLD_SIZE):
        found = two_ranks[(name, rank)]
        assert "error" not in found, found
        # The shards' chunks end elsewhere than the whole data's, so a few rows' float32 terms
        # differ by a rounding (the tails of vectorised loops) and the float64 sums by about
        # 1e-11; the fits take the same steps and stop within about 1e-9 of each other (both
        # within tol of the optimum): a float32 rounding of T, 1e-8 of the scores.
        assert found["temperatures"] == pytest.approx(reference["temperatures"], rel=2e-7)
        for result, expected in zip(found["results"], reference["results"], strict=True):
            assert result["n_samples"] == expected["n_samples"]
            assert result["data_passes"] == expected["data_passes"]
            for key in ("nll_before", "nll_after", "ece_before", "ece_after"):
                assert result[key] == pytest.approx(expected[key], rel=1e-8, abs=1e-12), key
    assert two_ranks[(name, 0)] == two_ranks[(name, 1)]  # bit for bit


def test_bad_data_on_one_rank_makes_every_rank_raise(two_ranks):
    own, other = two_ranks[("nan", 1)], two_ranks[("nan", 0)]
    assert own["error"] == "ValueError" and "NaN" in own["message"]
    assert other["error"] == "ValueError" and "failed on rank(s) [1]" in other["message"]
    assert "do not match logits of shape (700, 5)" in two_ranks[("labels", 0)]["message"]
    assert "failed on rank(s) [0]" in two_ranks[("labels", 1)]["message"]
    for rank in range(WORLD_SIZE):
        found = two_ranks[("classes", rank)]
        assert found["error"] == "ValueError" and "do not match" in found["message"]


def test_distributed_needs_an_initialised_process_group():
    logits, labels = tempered_logits(100, 3)
    with pytest.raises(RuntimeError, match="init_process_group"):
        TemperatureScaler().fit(logits, labels, distributed=True)
    with pytest.raises(ValueError, match="distributed=True"):
        TemperatureScaler().fit(logits, labels, process_group=object())


@pytest.mark.slow  # a script in a subprocess, end to end; pytest -m slow runs it
def test_the_sharded_example_prints_one_temperature_on_every_rank():
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, str(root / "examples" / "fit_sharded.py")],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert result.returncode == 0, f"exit {result.returncode}; stderr:\n{result.stderr}"
    lines = sorted(result.stdout.strip().splitlines())
    assert len(lines) == 3, result.stdout + result.stderr
    temperatures = {line.split("T = ")[1].split()[0] for line in lines}
    assert len(temperatures) == 1 and abs(float(temperatures.pop()) - 2.0) < 0.05
    assert all("30000 samples" in line for line in lines)
