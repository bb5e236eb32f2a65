"""Two independent pieces of CPU work run side by side, one on a worker thread.

Some of PyTorch's CPU kernels run on one thread whatever :func:`torch.get_num_threads` says;
``torch.bincount`` is one (a counting loop). Counting a large tensor's cells is then split in
two halves counted at once, one on the calling thread and one on a worker thread (PyTorch's
operations release the interpreter lock): on two cores the count takes 0.65-0.75 of the time
(the threads share the memory bus, and ``bincount`` reads its input for its minimum and maximum
first). The split is the same whether or not the halves run at once, so the sums do not depend
on the thread count.

The worker is made on first use and made again in a process forked after it (a forked child has
no threads but the one that forked).

Example:
    >>> import torch
    >>> cells = torch.tensor([0, 1, 1, 2, 2, 2], dtype=torch.int16)
    >>> counts, sums = tally(cells, torch.ones(6, dtype=torch.float64), 4)
    >>> counts.tolist(), sums.tolist()
    ([1, 2, 3, 0], [1.0, 2.0, 3.0, 0.0])
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch
from torch import Tensor

__all__ = ["SPLIT_MIN_CELLS", "side_by_side", "tally"]

T = TypeVar("T")
U = TypeVar("U")

#: Cells counted in two halves from this many on (below it a hand-over costs more than it saves).
SPLIT_MIN_CELLS = 1 << 17

_WORKER_NAME = "torchcal-side-by-side"
_worker: tuple[int, ThreadPoolExecutor] | None = None


def _worker_pool() -> ThreadPoolExecutor:
    global _worker
    if _worker is None or _worker[0] != os.getpid():
        _worker = (os.getpid(), ThreadPoolExecutor(1, thread_name_prefix=_WORKER_NAME))
    return _worker[1]


def side_by_side(first: Callable[[], T], second: Callable[[], U]) -> tuple[T, U]:
    """``(first(), second())``, ``second`` on a worker thread while ``first`` runs on this one
    where PyTorch may use more than one CPU thread, one after the other otherwise (also on the
    worker itself, which would otherwise wait for itself)."""
    if torch.get_num_threads() < 2 or threading.current_thread().name.startswith(_WORKER_NAME):
        return first(), second()
    pending = _worker_pool().submit(second)
    return first(), pending.result()


def tally(
    cells: Tensor, weights: Tensor, size: int, *, counts: bool = True
) -> tuple[Tensor | None, Tensor]:
    """The count (int64; ``None`` if not ``counts``) and the float64 sum of ``weights`` in each
    of ``size`` cells; the sums by ``index_add`` where the weights require grad (a weighted
    bincount has no derivative), in the same order and so to the same bits.

    Args:
        cells: (M,) non-negative integer cells below ``size``.
        weights: (M,) float64 weights.
        size: the number of cells.
        counts: count the cells too.
    """
    differentiable = weights.requires_grad

    def count(part: slice) -> tuple[Tensor | None, Tensor]:
        found = torch.bincount(cells[part], minlength=size) if counts else None
        if differentiable:  # index_add takes int32 or int64 indices
            index = cells[part].to(torch.int64 if cells.dtype != torch.int32 else torch.int32)
            return found, weights.new_zeros(size).index_add(0, index, weights[part])
        return found, torch.bincount(cells[part], weights[part], minlength=size)

    if cells.numel() < SPLIT_MIN_CELLS or cells.device.type != "cpu":
        return count(slice(None))
    half = cells.numel() // 2
    low, high = slice(None, half), slice(half, None)
    if differentiable:  # on this thread, whose grad mode holds
        (counts_low, sums_low), (counts_high, sums_high) = count(low), count(high)
    else:
        (counts_low, sums_low), (counts_high, sums_high) = side_by_side(
            lambda: count(low), lambda: count(high)
        )
    if counts_low is not None and counts_high is not None:
        counts_low += counts_high
    return counts_low, sums_low + sums_high
