"""Combining a fit's statistics over ``torch.distributed`` ranks.

A fit's passes only produce small float64 vectors of sums (NLL, its derivatives, reliability-bin
sums, sample counts), so a rank's shard is summarised locally and the ranks exchange those
vectors. Each exchange is an ``all_gather`` followed by a sum in rank order, so every rank gets
bit-for-bit the same totals and the solvers take the same steps everywhere (an ``all_reduce`` may
round differently on different ranks, which could send one rank into an extra iteration and leave
the others waiting).

:class:`LocalReducer` is the single-process case: every method returns its input.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor


def sum_in_rank_order(parts: Tensor) -> Tensor:
    """The sum of gathered ``parts`` (one per rank, stacked), added rank by rank in order."""
    total = parts[0].clone()
    for part in parts[1:]:
        total += part
    return total


def options_fingerprint(options: Mapping[str, Any]) -> float:
    """A 48-bit hash of ``options`` (as sorted JSON), exact in a float64, for ranks to compare.

    Example:
        >>> options_fingerprint({"n_bins": 15}) == options_fingerprint({"n_bins": 15})
        True
        >>> options_fingerprint({"n_bins": 15}) == options_fingerprint({"n_bins": 10})
        False
    """
    text = json.dumps(dict(options), sort_keys=True, default=str)
    return float(int.from_bytes(hashlib.sha256(text.encode()).digest()[:6], "big"))


def describe_option_mismatch(per_rank: Sequence[Mapping[str, Any]]) -> str:
    """Name every option whose value differs between ranks, with each rank's value.

    Example:
        >>> describe_option_mismatch([{"n_bins": 15, "tol": 1e-6}, {"n_bins": 10, "tol": 1e-6}])
        'n_bins is 15 on rank 0 and 10 on rank 1'
    """
    keys = sorted({key for options in per_rank for key in options})
    parts = []
    for key in keys:
        values = [options.get(key, "(absent)") for options in per_rank]
        if any(value != values[0] for value in values):
            shown = [f"{value!r} on rank {rank}" for rank, value in enumerate(values)]
            parts.append(f"{key} is {', '.join(shown[:-1])} and {shown[-1]}")
    return "; ".join(parts)


class LocalReducer:
    """Statistics of one process: nothing to combine."""

    distributed = False
    rank = 0
    world_size = 1

    def gather(self, values: Tensor) -> Tensor:
        """Every rank's ``values`` stacked in rank order: shape (world_size, *values.shape)."""
        return values[None]

    def sum(self, values: Tensor) -> Tensor:
        """The sum over ranks of a float64 vector, identical on every rank (here ``values``)."""
        return values

    def gather_objects(self, value: Any) -> list[Any]:
        """Every rank's picklable ``value``, in rank order."""
        return [value]

    def check(
        self,
        error: Exception | None,
        agree: Sequence[int] = (),
        options: Mapping[str, Any] | None = None,
    ) -> None:
        """Raise ``error``, on every rank if any rank has one; ``agree`` and ``options`` must
        match on all ranks.

        Every rank learns whether any rank failed before any of them raises.

        Without this a rank that raised (NaN logits, say) would leave the others waiting forever
        in the fit's next collective. ``options`` are the fit's options that shape the
        computation (bins, iterations, bounds, ...): ranks that differ would exchange vectors of
        different sizes or stop after different iterations (a crash or a hang) or end with
        different results, so a mismatch is an error on every rank that names each differing
        option and its value on every rank. ``agree`` holds numbers every rank's data must share
        (the number of classes, ...); a mismatch is an error on every rank.

        Args:
            error: this rank's failure, or ``None``.
            agree: numbers of this rank's data that every rank must share.
            options: the fit's options that shape the computation.
        """
        fingerprint = 0.0 if options is None else options_fingerprint(options)
        flags = torch.tensor([float(error is not None), fingerprint, *agree], dtype=torch.float64)
        gathered = self.gather(flags)
        failed = [rank for rank in range(self.world_size) if gathered[rank, 0] != 0]
        if error is not None:
            raise error
        if failed:
            raise ValueError(
                f"the fit failed on rank(s) {failed} of {self.world_size}; see the error raised "
                "there. Every rank stops so that none waits for the others"
            )
        if not bool((gathered[:, 1] == gathered[0, 1]).all()):
            # every rank sees the same gathered flags, so all of them take this branch together
            per_rank = self.gather_objects(dict(options or {}))
            raise ValueError(
                f"the ranks called fit with different options: {describe_option_mismatch(per_rank)}"
                ". Every rank of a distributed fit must pass the same options (and logits of the "
                "same dtype) so that all of them compute the same temperature"
            )
        if not bool((gathered[:, 2:] == gathered[0, 2:]).all()):
            raise ValueError(
                f"the ranks' data do not match: {gathered[:, 2:].long().tolist()} (per rank: "
                "activation, classes per row, temperatures); every rank must pass logits of the "
                "same kind and number of classes"
            )


class ProcessGroupReducer(LocalReducer):
    """Statistics summed over the ranks of a ``torch.distributed`` process group.

    The vectors travel on the current CUDA device for the NCCL backend and on the CPU otherwise.
    """

    distributed = True

    def __init__(self, group: object | None = None) -> None:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                "distributed=True needs an initialised torch.distributed process group: call "
                "torch.distributed.init_process_group(...) on every rank before fit, or leave "
                "distributed=False to fit on this process's data alone"
            )
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        if self.rank < 0:
            raise RuntimeError("this process is not a member of the process_group given to fit")
        backend = str(dist.get_backend(group)).lower()
        self.device = (
            torch.device("cuda", torch.cuda.current_device())
            if "nccl" in backend
            else torch.device("cpu")
        )

    def gather(self, values: Tensor) -> Tensor:
        import torch.distributed as dist

        local = values.detach().to(self.device, torch.float64).contiguous()
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(parts, local, group=self.group)
        return torch.stack(parts).to(values.device)

    def sum(self, values: Tensor) -> Tensor:
        """The sum over ranks of a float64 vector, added in rank order: identical on every rank
        (an all-reduce may add in any order)."""
        return sum_in_rank_order(self.gather(values))

    def gather_objects(self, value: Any) -> list[Any]:
        import torch.distributed as dist

        per_rank: list[Any] = [None] * self.world_size
        dist.all_gather_object(per_rank, value, group=self.group)
        return per_rank
