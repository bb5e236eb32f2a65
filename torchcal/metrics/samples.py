"""Per-sample statistics of probabilities against labels, the one place they are computed.

Every metric of top-label probabilities is a function of a few numbers per sample: the top-label
confidence ``max_k p_k``, whether the label has it (a tie for the top counts as correct), the
label's probability ``p_y`` and, for the Brier score, ``sum_k p_k^2``. They are read from the
(N, K) probabilities once, into float64 vectors of length N; the metrics, the streaming meter and
the bootstrap (which resamples these vectors instead of the probabilities) all start from here.
The NLL and Brier terms made of them are those of :mod:`torchcal._terms`.

Example:
    >>> import torch
    >>> stats = sample_statistics(torch.tensor([[0.9, 0.1], [0.6, 0.4]]), torch.tensor([0, 1]))
    >>> stats.correct.tolist(), [round(v, 4) for v in stats.nll_terms().tolist()]
    ([True, False], [0.1054, 0.9163])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from torchcal._terms import brier_terms, nll_terms, squared_norms
from torchcal.metrics._inputs import check_probs_and_labels

__all__ = ["SampleStatistics", "sample_statistics", "statistics_of_rows"]


@dataclass(frozen=True)
class SampleStatistics:
    """Per-sample vectors (M,) of validated probability rows.

    Attributes:
        confidences: the top-label confidence ``max_k p_k``, float64.
        correct: bool, whether the label's probability equals the maximum.
        label_probs: ``p_y``, in the probabilities' dtype (exact; widened where used).
        squared_norms: ``sum_k p_k^2``, or ``None`` when not asked for.
    """

    confidences: Tensor
    correct: Tensor
    label_probs: Tensor
    squared_norms: Tensor | None = None

    @property
    def n_samples(self) -> int:
        """How many samples the statistics describe."""
        return self.confidences.numel()

    def nll_terms(self) -> Tensor:
        """``-log p_y`` per sample (``inf`` where ``p_y = 0``)."""
        return nll_terms(self.label_probs)

    def brier_terms(self) -> Tensor:
        """``sum_k (p_k - 1[k = y])^2`` per sample; needs ``squared_norms``."""
        if self.squared_norms is None:
            raise ValueError("these statistics were computed without squares=True")
        return brier_terms(self.squared_norms, self.label_probs)


def statistics_of_rows(rows: Tensor, labels: Tensor, *, squares: bool = False) -> SampleStatistics:
    """:class:`SampleStatistics` of already validated (M, K) rows and (M,) int64 labels.

    One reduction over the rows (``amax``) and one gather of the labels' column; ``squares``
    adds one more read for the Brier score.

    Args:
        rows: (M, K) probabilities, validated.
        labels: (M,) int64 labels in [0, K), on the rows' device.
        squares: also read ``sum_k p_k^2`` of each row (for the Brier score).
    """
    confidences = rows.amax(dim=1)
    label_probs = rows.gather(1, labels[:, None]).squeeze(1)
    return SampleStatistics(
        confidences=confidences.to(torch.float64),
        correct=label_probs == confidences,
        label_probs=label_probs,
        squared_norms=squared_norms(rows) if squares else None,
    )


def sample_statistics(
    probs: Tensor,
    labels: Tensor,
    class_dim: int | None = None,
    ignore_index: int | None = -100,
    *,
    squares: bool = False,
) -> SampleStatistics:
    """Validate ``probs`` and ``labels`` (any shape the metrics take) and read their statistics.

    Args:
        probs, labels, class_dim, ignore_index: as in
            :func:`~torchcal.metrics.expected_calibration_error`.
        squares: also read ``sum_k p_k^2`` of each row (for the Brier score).
    """
    rows, labels = check_probs_and_labels(probs, labels, class_dim, ignore_index)
    return statistics_of_rows(rows, labels, squares=squares)
