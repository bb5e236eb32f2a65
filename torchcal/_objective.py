"""The temperature-scaling objective, streamed over row chunks without an autograd graph.

With ``beta = 1 / T`` the mean negative log-likelihood of ``softmax(beta * z)`` is

    NLL(beta) = mean_i [ logsumexp_j(beta * z_ij) - beta * z_iy ]

which is convex in ``beta``, with

    dNLL/dbeta   = mean_i ( E_p[z_i] - z_iy )
    d2NLL/dbeta2 = mean_i Var_p[z_i] >= 0 .

All three, and the top-label confidence of every row, come out of one pass over the logits.
Each chunk is shifted by its row maximum, computed in float32 (float64 for float64 logits) and
reduced in float64, so a fit needs no N x K temporary and no full-size copy of half-precision
logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from torchcal._validation import check_labels, check_logits_matrix

#: Elements per chunk: small enough for the temporaries to stay in cache on a CPU.
CPU_CHUNK_ELEMENTS = 1 << 18
#: On a GPU bigger chunks amortise kernel launches.
CUDA_CHUNK_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class Evaluation:
    """NLL and its derivatives in ``beta = 1/T`` at one ``beta``, averaged over the samples."""

    beta: float
    nll: float
    grad: float
    hess: float | None
    confidences: Tensor | None


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def default_chunk_elements(device: torch.device) -> int:
    """Elements per chunk for a device: cache-sized on CPU, large on accelerators."""
    return CPU_CHUNK_ELEMENTS if device.type == "cpu" else CUDA_CHUNK_ELEMENTS


class SoftmaxTemperatureNLL:
    """Mean NLL of ``softmax(beta * logits)`` and its derivatives, one streamed pass per call.

    Building the objective makes one validating pass over ``logits``: it rejects NaN/inf values
    and probability rows, stores the per-row maximum, the label's gap below it and whether the
    top-1 prediction is right (O(N) memory), and evaluates the objective at ``beta = 1``.

    Example:
        >>> logits = torch.tensor([[2.0, 1.0, 0.1], [0.5, 2.5, 0.0]])
        >>> objective = SoftmaxTemperatureNLL(logits, torch.tensor([0, 2]))
        >>> round(objective.evaluate(1.0).nll, 4)
        1.5569
    """

    def __init__(
        self,
        logits: Tensor,
        labels: Tensor,
        *,
        chunk_elements: int | None = None,
    ) -> None:
        self.logits = check_logits_matrix(logits)
        n_samples, n_classes = logits.shape
        self.labels = check_labels(labels, n_samples, n_classes).to(logits.device)
        self.n_samples = n_samples
        self.n_classes = n_classes
        self.compute_dtype = _compute_dtype(logits.dtype)
        elements = chunk_elements or default_chunk_elements(logits.device)
        self.chunk_rows = max(1, elements // n_classes)
        self.passes = 0
        self._prepare()

    def _chunks(self):
        for start in range(0, self.n_samples, self.chunk_rows):
            stop = min(start + self.chunk_rows, self.n_samples)
            yield start, stop, self.logits[start:stop].to(self.compute_dtype)

    def _prepare(self) -> None:
        """Validate, store row maxima, label gaps and top-1 correctness, evaluate at beta = 1."""
        n = self.n_samples
        device = self.logits.device
        self.row_max = torch.empty(n, dtype=self.compute_dtype, device=device)
        self.label_gap = torch.empty(n, dtype=self.compute_dtype, device=device)
        row_min = torch.empty(n, dtype=self.compute_dtype, device=device)
        sums = torch.zeros(3, dtype=torch.float64, device=device)
        confidences = torch.empty(n, dtype=self.compute_dtype, device=device)
        for start, stop, chunk in self._chunks():
            maxima = chunk.amax(dim=1)
            self.row_max[start:stop] = maxima
            labels = self.labels[start:stop, None]
            self.label_gap[start:stop] = chunk.gather(1, labels).squeeze(1) - maxima
            row_min[start:stop] = chunk.amin(dim=1)
            sums += self._chunk_sums(chunk, start, stop, 1.0, False, confidences)
        self.passes = 1
        self._check_values(row_min)
        # The label's score is the row's maximum: a tie for the top counts as correct.
        self.top1_correct = self.label_gap == 0
        self.initial = self._finish(1.0, sums, False, confidences)

    def _check_values(self, row_min: Tensor) -> None:
        finite = torch.isfinite(self.row_max) & torch.isfinite(row_min)
        if not bool(finite.all()):
            bad_rows = (~finite).nonzero().squeeze(1)
            raise ValueError(
                f"logits contain NaN or infinite values in {bad_rows.numel()} row(s), "
                f"e.g. row {int(bad_rows[0])}; check the model's outputs before calibrating"
            )
        in_unit_interval = bool((row_min >= 0).all()) and bool((self.row_max <= 1).all())
        if in_unit_interval and self._rows_sum_to_one():
            raise ValueError(
                "logits look like probabilities: every row lies in [0, 1] and sums to 1. "
                "Temperature scaling needs the raw scores before softmax; pass the model's logits, "
                "or pass probs.log() if only probabilities are available"
            )

    def _rows_sum_to_one(self) -> bool:
        return all(
            bool(((chunk.sum(dim=1) - 1).abs() <= 1e-3).all()) for *_, chunk in self._chunks()
        )

    def _chunk_sums(
        self,
        chunk: Tensor,
        start: int,
        stop: int,
        beta: float,
        hessian: bool,
        confidences: Tensor | None,
    ) -> Tensor:
        """Sums over the chunk's rows of the NLL, its gradient and (optionally) curvature."""
        shifted = chunk - self.row_max[start:stop, None]  # z - max(z) <= 0
        weights = torch.mul(shifted, beta).exp_()  # exp(beta (z - max)), the top entry is 1
        total = weights.sum(dim=1)
        mean_shifted = torch.linalg.vecdot(weights, shifted) / total  # E_p[z] - max(z)
        gap = self.label_gap[start:stop]
        nll = total.log() - beta * gap
        grad = mean_shifted - gap
        if confidences is not None:
            torch.reciprocal(total, out=confidences[start:stop])
        out = torch.zeros(3, dtype=torch.float64, device=chunk.device)
        out[0] = nll.sum(dtype=torch.float64)
        out[1] = grad.sum(dtype=torch.float64)
        if hessian:
            second = torch.linalg.vecdot(weights.mul_(shifted), shifted) / total
            out[2] = (second - mean_shifted.square()).sum(dtype=torch.float64)
        return out

    def _finish(
        self, beta: float, sums: Tensor, hessian: bool, confidences: Tensor | None
    ) -> Evaluation:
        nll, grad, hess = (sums / self.n_samples).tolist()
        return Evaluation(
            beta=beta,
            nll=nll,
            grad=grad,
            hess=hess if hessian else None,
            confidences=confidences,
        )

    def evaluate(
        self, beta: float, *, hessian: bool = False, confidences: bool = False
    ) -> Evaluation:
        """NLL, dNLL/dbeta (and d2NLL/dbeta2 if ``hessian``) at ``beta`` in one pass."""
        device = self.logits.device
        sums = torch.zeros(3, dtype=torch.float64, device=device)
        conf = (
            torch.empty(self.n_samples, dtype=self.compute_dtype, device=device)
            if confidences
            else None
        )
        for start, stop, chunk in self._chunks():
            sums += self._chunk_sums(chunk, start, stop, beta, hessian, conf)
        self.passes += 1
        return self._finish(beta, sums, hessian, conf)

    def subsample(self, n_rows: int) -> SoftmaxTemperatureNLL:
        """The same objective on ``n_rows`` evenly strided rows (a copy), for warm starts."""
        if n_rows >= self.n_samples:
            return self
        index = torch.linspace(0, self.n_samples - 1, n_rows, device=self.logits.device).long()
        return SoftmaxTemperatureNLL(self.logits[index], self.labels[index])
