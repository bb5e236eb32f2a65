"""The temperature-scaling objectives, streamed over row chunks without an autograd graph.

With ``beta = 1 / T`` the mean negative log-likelihood of ``softmax(beta * z)`` is

    NLL(beta) = mean_i [ logsumexp_j(beta * z_ij) - beta * z_iy ]

which is convex in ``beta``, with

    dNLL/dbeta   = mean_i ( E_p[z_i] - z_iy )
    d2NLL/dbeta2 = mean_i Var_p[z_i] >= 0 .

All three, and the top-label confidence of every row, come out of one pass over the logits.
For sigmoid models (binary, multi-label) the NLL is the binary cross-entropy of
``sigmoid(beta * z)``, convex in ``beta`` in the same way.
Each chunk is shifted by its row maximum, computed in float32 (float64 for float64 logits) and
reduced in float64, so a fit needs no N x K temporary and no full-size copy of half-precision
logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from torchcal._validation import check_labels, check_logits_matrix, check_tensor

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


class _StreamedNLL:
    """Shared machinery: chunked passes over the rows, float64 sums, pass counting."""

    def __init__(self, logits: Tensor, labels: Tensor, chunk_elements: int | None) -> None:
        self.logits = logits
        self.labels = labels
        self.n_samples = logits.shape[0]
        self.compute_dtype = _compute_dtype(logits.dtype)
        elements = chunk_elements or default_chunk_elements(logits.device)
        row_width = logits[0].numel() if logits.ndim > 1 else 1
        self.chunk_rows = max(1, elements // row_width)
        self.passes = 0
        self.top1_correct = torch.empty(0, dtype=torch.bool)
        sums, confidences = self._prepare()
        self.passes = 1
        self.initial = self._finish(1.0, sums, False, confidences)

    def _prepare(self) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _chunk_sums(
        self,
        chunk: Tensor,
        start: int,
        stop: int,
        beta: float,
        hessian: bool,
        confidences: Tensor | None,
    ) -> Tensor:
        raise NotImplementedError

    def _chunks(self):
        for start in range(0, self.n_samples, self.chunk_rows):
            stop = min(start + self.chunk_rows, self.n_samples)
            yield start, stop, self.logits[start:stop].to(self.compute_dtype)

    def _new_sums(self) -> Tensor:
        return torch.zeros(3, dtype=torch.float64, device=self.logits.device)

    def _new_confidences(self) -> Tensor:
        return torch.empty(self.n_samples, dtype=self.compute_dtype, device=self.logits.device)

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
        sums = self._new_sums()
        conf = self._new_confidences() if confidences else None
        for start, stop, chunk in self._chunks():
            sums += self._chunk_sums(chunk, start, stop, beta, hessian, conf)
        self.passes += 1
        return self._finish(beta, sums, hessian, conf)

    def subsample(self, n_rows: int) -> _StreamedNLL:
        """The same objective on ``n_rows`` evenly strided rows (a copy), for warm starts."""
        if n_rows >= self.n_samples:
            return self
        index = torch.linspace(0, self.n_samples - 1, n_rows, device=self.logits.device).long()
        return type(self)(self.logits[index], self.labels[index])

    def _raise_if_not_finite(self, finite: Tensor) -> None:
        if not bool(finite.all()):
            bad_rows = (~finite).nonzero().squeeze(1)
            raise ValueError(
                f"logits contain NaN or infinite values in {bad_rows.numel()} row(s), "
                f"e.g. row {int(bad_rows[0])}; check the model's outputs before calibrating"
            )


class SoftmaxTemperatureNLL(_StreamedNLL):
    """Mean NLL of ``softmax(beta * logits)`` and its derivatives, one streamed pass per call.

    Building the objective makes one validating pass over ``logits`` (N, K): it rejects NaN/inf
    values and probability rows, stores the per-row maximum, the label's gap below it and whether
    the top-1 prediction is right (O(N) memory), and evaluates the objective at ``beta = 1``.

    Example:
        >>> logits = torch.tensor([[2.0, 1.0, 0.1], [0.5, 2.5, 0.0]])
        >>> objective = SoftmaxTemperatureNLL(logits, torch.tensor([0, 2]))
        >>> round(objective.evaluate(1.0).nll, 4)
        1.5569
    """

    def __init__(
        self, logits: Tensor, labels: Tensor, *, chunk_elements: int | None = None
    ) -> None:
        logits = check_logits_matrix(logits)
        n_samples, n_classes = logits.shape
        labels = check_labels(labels, n_samples, n_classes).to(logits.device)
        self.n_classes = n_classes
        super().__init__(logits, labels, chunk_elements)

    def _prepare(self) -> tuple[Tensor, Tensor]:
        """Validate, store row maxima, label gaps and top-1 correctness, evaluate at beta = 1."""
        n, device = self.n_samples, self.logits.device
        self.row_max = torch.empty(n, dtype=self.compute_dtype, device=device)
        self.label_gap = torch.empty(n, dtype=self.compute_dtype, device=device)
        row_min = torch.empty(n, dtype=self.compute_dtype, device=device)
        sums, confidences = self._new_sums(), self._new_confidences()
        for start, stop, chunk in self._chunks():
            maxima = chunk.amax(dim=1)
            self.row_max[start:stop] = maxima
            labels = self.labels[start:stop, None]
            self.label_gap[start:stop] = chunk.gather(1, labels).squeeze(1) - maxima
            row_min[start:stop] = chunk.amin(dim=1)
            sums += self._chunk_sums(chunk, start, stop, 1.0, False, confidences)
        self._raise_if_not_finite(torch.isfinite(self.row_max) & torch.isfinite(row_min))
        in_unit_interval = bool((row_min >= 0).all()) and bool((self.row_max <= 1).all())
        if in_unit_interval and self._rows_sum_to_one():
            raise ValueError(
                "logits look like probabilities: every row lies in [0, 1] and sums to 1. "
                "Temperature scaling needs the raw scores before softmax; pass the model's logits, "
                "or inputs='probs' if only probabilities are available"
            )
        # The label's score is the row's maximum: a tie for the top counts as correct.
        self.top1_correct = self.label_gap == 0
        return sums, confidences

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
        out = self._new_sums()
        out[0] = (total.log() - beta * gap).sum(dtype=torch.float64)
        out[1] = (mean_shifted - gap).sum(dtype=torch.float64)
        if hessian:
            second = torch.linalg.vecdot(weights.mul_(shifted), shifted) / total
            out[2] = (second - mean_shifted.square()).sum(dtype=torch.float64)
        if confidences is not None:
            torch.reciprocal(total, out=confidences[start:stop])
        return out


class SigmoidTemperatureNLL(_StreamedNLL):
    """Mean binary cross-entropy of ``sigmoid(beta * logits)`` against 0/1 targets, streamed.

    ``logits`` and ``targets`` are (M,): one independent binary event per entry (a binary
    classifier's samples, or every (sample, label) pair of a multi-label model).

    Example:
        >>> logits, targets = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([1.0, 0.0, 0.0])
        >>> objective = SigmoidTemperatureNLL(logits, targets)
        >>> round(objective.evaluate(1.0).nll, 4)
        0.4714
    """

    def __init__(
        self, logits: Tensor, targets: Tensor, *, chunk_elements: int | None = None
    ) -> None:
        logits, targets = check_tensor(logits, "logits"), check_tensor(targets, "labels")
        if logits.ndim != 1 or targets.shape != logits.shape:
            raise ValueError(
                f"binary logits and targets must both be (M,), got {tuple(logits.shape)} and "
                f"{tuple(targets.shape)}"
            )
        if logits.numel() == 0:
            raise ValueError("logits are empty: at least 1 sample is needed")
        super().__init__(
            logits, targets.to(logits.device, _compute_dtype(logits.dtype)), chunk_elements
        )

    def _prepare(self) -> tuple[Tensor, Tensor]:
        low, high = self.logits.aminmax()
        self._raise_if_not_finite(torch.isfinite(torch.stack([low, high])).all()[None])
        if self.n_samples >= 16 and float(low) >= 0 and float(high) <= 1:
            raise ValueError(
                f"logits look like probabilities: all {self.n_samples} values lie in [0, 1]. "
                "Temperature scaling needs the raw scores before the sigmoid; pass the model's "
                "logits, or inputs='probs' if only probabilities are available"
            )
        self.top1_correct = (self.logits >= 0) == (self.labels == 1)
        sums, confidences = self._new_sums(), self._new_confidences()
        for start, stop, chunk in self._chunks():
            sums += self._chunk_sums(chunk, start, stop, 1.0, False, confidences)
        return sums, confidences

    def _chunk_sums(
        self,
        chunk: Tensor,
        start: int,
        stop: int,
        beta: float,
        hessian: bool,
        confidences: Tensor | None,
    ) -> Tensor:
        margin = chunk * (2 * self.labels[start:stop] - 1)  # positive when right
        scaled = margin * -beta
        out = self._new_sums()
        out[0] = torch.nn.functional.softplus(scaled).sum(dtype=torch.float64)
        wrong = torch.sigmoid(scaled)  # probability given to the wrong class
        out[1] = (-margin * wrong).sum(dtype=torch.float64)
        if hessian:
            out[2] = (margin.square() * wrong * (1 - wrong)).sum(dtype=torch.float64)
        if confidences is not None:
            torch.sigmoid(chunk.abs() * beta, out=confidences[start:stop])
        return out
