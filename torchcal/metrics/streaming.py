"""A streaming calibration meter: O(n_bins) memory, exact, synced across ``torch.distributed``.

With fixed equal-width bins a batch only adds to per-bin sums (count, sum of confidence, sum of
correctness), so the meter equals the one-shot :func:`expected_calibration_error` on all the data
seen, whatever the batching, and ranks combine with one ``all_reduce`` of the sums.
"""

from __future__ import annotations

import torch
from torch import Tensor

from torchcal._inputs import INPUTS, Inputs, check_choice, check_logits_matrix
from torchcal._terms import (
    brier_total,
    nll_terms_from_logits,
    nll_total,
    uniform_bin_sums,
    uniform_edges,
)
from torchcal.metrics._inputs import as_tensor, check_n_bins, probs_and_labels
from torchcal.metrics.calibration import NORMS, Norm, ReliabilityBins, bins_from_sums
from torchcal.metrics.samples import statistics_of_rows

__all__ = ["CalibrationErrorMeter", "Inputs"]

#: What a batch holds: probabilities or raw scores (logits).


class CalibrationErrorMeter:
    """Accumulate top-label reliability bins, NLL, Brier score and accuracy over batches.

    Args:
        n_bins: number of equal-width confidence bins.
        norm: ``"l1"`` (ECE), ``"l2"`` (RMS) or ``"max"`` (MCE), what :meth:`compute` returns.
        inputs: ``"probs"`` for rows of probabilities, ``"logits"`` for raw scores (softmax is
            applied in their dtype; the NLL comes from ``log_softmax``). Nothing is guessed.
        device: where the sums live (default: the device of the first batch).

    :meth:`compute`, :meth:`bins` and :meth:`summary` sum over all ranks when a
    ``torch.distributed`` process group is initialised (``sync=False`` to skip).

    Example:
        >>> from torchcal.metrics import expected_calibration_error
        >>> _ = torch.manual_seed(0)
        >>> probs = torch.softmax(torch.randn(1000, 5) * 2, dim=1)
        >>> labels = torch.multinomial(probs, 1).squeeze(1)
        >>> meter = CalibrationErrorMeter(n_bins=15)
        >>> for chunk in range(0, 1000, 128):
        ...     meter.update(probs[chunk : chunk + 128], labels[chunk : chunk + 128])
        >>> bool(torch.isclose(meter.compute(), expected_calibration_error(probs, labels)))
        True
        >>> meter.n_samples
        1000
    """

    def __init__(
        self,
        n_bins: int = 15,
        *,
        norm: Norm = "l1",
        inputs: Inputs = "probs",
        device: torch.device | str | None = None,
    ) -> None:
        self.n_bins = check_n_bins(n_bins)
        self.norm = check_choice(norm, "norm", NORMS)
        self.inputs = check_choice(inputs, "inputs", INPUTS)
        self.device = None if device is None else torch.device(device)
        self.reset()

    def reset(self) -> None:
        """Forget everything seen so far."""
        # Rows: count, sum of confidence, sum of correctness; then NLL, Brier, correct totals.
        self._bin_state: Tensor | None = None
        self._totals: Tensor | None = None

    def _allocate(self, device: torch.device) -> None:
        self.device = device if self.device is None else self.device
        self._bin_state = torch.zeros(3, self.n_bins, dtype=torch.float64, device=self.device)
        self._totals = torch.zeros(4, dtype=torch.float64, device=self.device)

    def update(self, inputs: Tensor, labels: Tensor) -> None:
        """Add a batch of probabilities or logits (N, K) with integer labels (N,).

        Tensors or numpy arrays; the probabilities are read once, a chunk at a time, never
        copied: the work of one :func:`expected_calibration_error` and O(n_bins) more.

        Args:
            inputs: (N, K) probabilities or logits, as given by ``inputs`` at construction.
            labels: (N,) integer labels.
        """
        logits = None
        if self.inputs == "logits":
            logits = check_logits_matrix(as_tensor(inputs, "inputs"), "inputs")
            inputs = torch.softmax(logits, dim=1)
        rows, labels, checked = probs_and_labels(inputs, labels)
        statistics = statistics_of_rows(rows, labels, square_total=True, check=not checked)
        if logits is None:
            nll_sum = nll_total(statistics.label_probs)
        else:
            nll_sum = nll_terms_from_logits(logits, labels).sum()
        if self._bin_state is None:
            self._allocate(rows.device)
        sums = uniform_bin_sums(statistics.confidences, statistics.correct, self.n_bins)
        self._bin_state += torch.stack([s.to(torch.float64) for s in sums]).to(self.device)
        label_total = statistics.label_probs.sum(dtype=torch.float64)
        n_samples = statistics.n_samples
        totals = torch.stack(
            [
                nll_sum,
                brier_total(statistics.square_total, label_total, n_samples),
                sums[2].sum(),
                nll_sum.new_tensor(float(n_samples)),
            ]
        )
        self._totals += totals.to(self.device)

    def _synced(self, sync: bool) -> tuple[Tensor, Tensor]:
        if self._bin_state is None or self._totals is None:
            raise RuntimeError("the meter has seen no data yet: call update(inputs, labels) first")
        state = torch.cat([self._bin_state.reshape(-1), self._totals])
        if sync and torch.distributed.is_available() and torch.distributed.is_initialized():
            state = state.clone()
            torch.distributed.all_reduce(state)
        return state[: 3 * self.n_bins].reshape(3, self.n_bins), state[3 * self.n_bins :]

    @property
    def n_samples(self) -> int:
        """Samples seen on this rank."""
        return 0 if self._totals is None else int(self._totals[3])

    @staticmethod
    def _bins_of(bin_state: Tensor) -> ReliabilityBins:
        counts = bin_state[0].round().to(torch.int64)
        edges = uniform_edges(bin_state.shape[1], bin_state.device)
        return bins_from_sums(edges, counts, bin_state[1], bin_state[2])

    def bins(self, sync: bool = True) -> ReliabilityBins:
        """The reliability bins of all data seen (on all ranks).

        Args:
            sync: sum over the ranks of an initialised ``torch.distributed`` process group.
        """
        return self._bins_of(self._synced(sync)[0])

    def compute(self, sync: bool = True) -> Tensor:
        """The calibration error (``norm`` given at construction) of all data seen.

        Args:
            sync: as in :meth:`bins`.
        """
        return self.bins(sync).calibration_error(self.norm)

    def summary(self, sync: bool = True) -> dict[str, float]:
        """Accuracy, NLL, Brier score, ECE, RMS error, MCE and the sample count, as floats.

        Args:
            sync: as in :meth:`bins`.
        """
        bin_state, totals = self._synced(sync)
        bins = self._bins_of(bin_state)
        n_samples = float(totals[3])
        return {
            "accuracy": float(totals[2]) / n_samples,
            "nll": float(totals[0]) / n_samples,
            "brier": float(totals[1]) / n_samples,
            "ece": float(bins.calibration_error("l1")),
            "rms": float(bins.calibration_error("l2")),
            "mce": float(bins.calibration_error("max")),
            "n_samples": int(n_samples),
        }
