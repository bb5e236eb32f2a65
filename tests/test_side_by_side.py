"""Counting cells in two halves side by side: the same counts and sums as one count, whatever
the thread count; a process forked after the worker started makes its own."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torchcal._side_by_side import SPLIT_MIN_CELLS, side_by_side, tally


def _cells_and_weights(n: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    cells = torch.randint(0, size, (n,), generator=generator, dtype=torch.int16)
    return cells, torch.rand(n, generator=generator, dtype=torch.float64)


@pytest.mark.parametrize("n", [10, SPLIT_MIN_CELLS - 1, SPLIT_MIN_CELLS, 3 * SPLIT_MIN_CELLS + 7])
def test_tally_matches_one_count(n):
    cells, weights = _cells_and_weights(n, 150)
    counts, sums = tally(cells, weights, 150)
    reference = np.bincount(cells.numpy(), weights.numpy(), minlength=150)
    assert counts.tolist() == np.bincount(cells.numpy(), minlength=150).tolist()
    np.testing.assert_allclose(sums.numpy(), reference, rtol=1e-13)
    # dyadic weights sum exactly in any order
    dyadic = (weights * 64).floor() / 64
    assert torch.equal(tally(cells, dyadic, 150)[1], torch.bincount(cells, dyadic, minlength=150))
    no_counts, same_sums = tally(cells, weights, 150, counts=False)
    assert no_counts is None
    assert torch.equal(same_sums, sums)


def test_tally_does_not_depend_on_the_thread_count():
    cells, weights = _cells_and_weights(4 * SPLIT_MIN_CELLS, 300, seed=1)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = tally(cells, weights, 300)
        torch.set_num_threads(2)
        paired = tally(cells, weights, 300)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(alone[0], paired[0]) and torch.equal(alone[1], paired[1])


def test_side_by_side_returns_both_in_order_and_raises_the_first_error():
    assert side_by_side(lambda: 1, lambda: 2) == (1, 2)
    with pytest.raises(ZeroDivisionError):
        side_by_side(lambda: 1, lambda: 1 / 0)


def test_a_forked_process_makes_its_own_worker(monkeypatch):
    """A process forked after the worker started has no worker thread: the pool recorded for
    another process id is not used (stood in for here by a shut-down pool under another id)."""
    from concurrent.futures import ThreadPoolExecutor

    import torchcal._side_by_side as module

    stale = ThreadPoolExecutor(1)
    stale.shutdown()  # submitting to it would raise
    monkeypatch.setattr(module, "_worker", (-1, stale))
    cells, weights = _cells_and_weights(2 * SPLIT_MIN_CELLS, 10)
    counts, _ = tally(cells, weights, 10)
    assert int(counts.sum()) == 2 * SPLIT_MIN_CELLS
    assert module._worker is not None and module._worker[1] is not stale
    module._worker[1].shutdown()  # the one made here (monkeypatch restores the one before)


def test_weights_that_require_grad_get_the_same_sums_and_a_gradient():
    cells, weights = _cells_and_weights(3 * SPLIT_MIN_CELLS, 40, seed=2)
    leaf = weights.clone().requires_grad_()
    counts, sums = tally(cells, leaf, 40)
    plain_counts, plain_sums = tally(cells, weights, 40)
    assert torch.equal(counts, plain_counts) and torch.equal(sums.detach(), plain_sums)
    sums[3].backward()
    assert torch.equal(leaf.grad, (cells == 3).to(torch.float64))
