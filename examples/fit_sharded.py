"""One temperature fitted on a validation set sharded over torch.distributed ranks.

Each rank holds only its own shard of the logits; ``fit(..., distributed=True)`` sums the fit's
statistics over the ranks, and every rank ends with the T that one process would fit on all the
shards together.

Run:  python examples/fit_sharded.py                         # 2 gloo processes on this machine
      torchrun --nproc-per-node 4 examples/fit_sharded.py    # or any launcher that sets RANK
"""

import datetime
import os
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from torchcal import TemperatureScaler

N_SAMPLES, N_CLASSES = 30_000, 100
# Only a guard against a hang: a slow start on a busy machine must not end the run.
TIMEOUT = datetime.timedelta(minutes=10)


def validation_set() -> tuple[torch.Tensor, torch.Tensor]:
    """Logits twice too confident: labels drawn from softmax(logits / 2)."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(N_SAMPLES, N_CLASSES, generator=generator) * 3
    labels = torch.multinomial(torch.softmax(logits / 2, dim=1), 1, generator=generator)
    return logits, labels.squeeze(1)


def fit_my_shard() -> None:
    """Run on every rank of an initialised process group."""
    rank, world_size = dist.get_rank(), dist.get_world_size()
    logits, labels = validation_set()
    shard = slice(rank * N_SAMPLES // world_size, (rank + 1) * N_SAMPLES // world_size)
    scaler = TemperatureScaler().fit(logits[shard], labels[shard], distributed=True)
    result = scaler.fit_result
    line = f"rank {rank}: T = {scaler.temperature:.6f} on {result.n_samples} samples\n"
    print(line, end="", flush=True)  # one write, so that the ranks' lines do not interleave


def fit_and_leave_together() -> None:
    """Fit, then wait for every rank before closing the connections: a rank that tore its
    process group down while another was still reading the last exchange would break it."""
    try:
        fit_my_shard()
        dist.barrier()
    finally:
        dist.destroy_process_group()


def spawned_rank(rank: int, world_size: int, rendezvous: str) -> None:
    # A file rendezvous: no TCP port to pick, so no port another process can take first.
    dist.init_process_group(
        "gloo",
        init_method=f"file://{rendezvous}",
        rank=rank,
        world_size=world_size,
        timeout=TIMEOUT,
    )
    fit_and_leave_together()


if __name__ == "__main__":
    if "RANK" in os.environ:  # started by torchrun
        dist.init_process_group("gloo", timeout=TIMEOUT)
        fit_and_leave_together()
    else:
        with tempfile.TemporaryDirectory() as folder:
            rendezvous = str(Path(folder) / "rendezvous")
            mp.spawn(spawned_rank, args=(2, rendezvous), nprocs=2, join=True)
        single = TemperatureScaler().fit(*validation_set(), progress=False)
        print(f"one process on all {N_SAMPLES} samples: T = {single.temperature:.6f}")
