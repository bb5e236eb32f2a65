"""Per-sample statistics of probabilities against labels, the one place they are computed.

Every metric of top-label probabilities is a function of a few numbers per sample: the top-label
confidence ``max_k p_k``, whether the label has it (a tie for the top counts as correct), the
label's probability ``p_y`` and, for the Brier score, ``sum_k p_k^2``. They are read from the
(N, K) probabilities once, into float64 vectors of length N; the metrics, the streaming meter and
the bootstrap (which resamples these vectors instead of the probabilities) all start from here.

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

from torchcal.metrics._inputs import check_probs_and_labels, row_chunks


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
        return self.confidences.numel()

    def nll_terms(self) -> Tensor:
        """``-log p_y`` per sample (``inf`` where ``p_y = 0``)."""
        return nll_terms(self.label_probs)

    def brier_terms(self) -> Tensor:
        """``sum_k (p_k - 1[k = y])^2`` per sample; needs ``squared_norms``."""
        if self.squared_norms is None:
            raise ValueError("these statistics were computed without squares=True")
        return brier_terms(self.squared_norms, self.label_probs)


def nll_terms(label_probs: Tensor) -> Tensor:
    """The negative log-likelihood of each sample from its label's probability."""
    return -label_probs.to(torch.float64).log()


def brier_terms(squared_norms: Tensor, label_probs: Tensor) -> Tensor:
    """``sum_k p_k^2 - 2 p_y + 1``: the squared distance of each row from its one-hot label."""
    return squared_norms - 2 * label_probs.to(torch.float64) + 1


def squared_norms(rows: Tensor) -> Tensor:
    """``sum_k p_k^2`` of each row of (M, K) ``rows``, accumulated in float64 in one read."""
    # The float64 norm, squared: within a few ulp of the exact sum, with no float64 copy.
    return torch.linalg.vector_norm(rows, dim=1, dtype=torch.float64).square()


def nll_terms_from_logits(logits: Tensor, labels: Tensor) -> Tensor:
    """``logsumexp(z) - z_y`` per row of (M, K) logits in float64, a chunk of rows at a time."""
    terms = torch.empty(logits.shape[0], dtype=torch.float64, device=logits.device)
    chunks = row_chunks(logits)
    for start in chunks:
        wide = logits[start : start + chunks.step].to(torch.float64)
        label_logits = wide.gather(1, labels[start : start + chunks.step, None]).squeeze(1)
        terms[start : start + wide.shape[0]] = torch.logsumexp(wide, dim=1) - label_logits
    return terms


def statistics_of_rows(rows: Tensor, labels: Tensor, *, squares: bool = False) -> SampleStatistics:
    """:class:`SampleStatistics` of already validated (M, K) rows and (M,) int64 labels.

    One reduction over the rows (``amax``) and one gather of the labels' column; ``squares``
    adds one more read for the Brier score.
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
    """Validate ``probs`` and ``labels`` (any shape the metrics take) and read their statistics."""
    rows, labels = check_probs_and_labels(probs, labels, class_dim, ignore_index)
    return statistics_of_rows(rows, labels, squares=squares)
