"""Exact fitting of an affine calibration map ``softmax(x W^T + b)`` on transformed inputs.

The inputs ``x`` are the logits (vector and matrix scaling) or the log-probabilities
``log_softmax(z)`` (Dirichlet calibration). The weight is a (K, K) matrix or, for a diagonal map,
a (K,) vector of per-class scales. The objective is the mean negative log-likelihood plus the ODIR
penalty of Kull et al. (2019)::

    F(W, b) = mean_i [ logsumexp_k(s_ik) - s_iy ]
              + off_diagonal_penalty * sum_{i != j} W_ij^2 + bias_penalty * sum_j b_j^2,
    s_i = x_i W^T + b .

It is convex (softmax regression plus a ridge). Its gradient is that of softmax regression,
``G^T [x, 1] / M`` with ``G = softmax(s) - onehot(y)``, and its Hessian
``sum_i (diag(p_i) - p_i p_i^T) (x) [x_i, 1][x_i, 1]^T / M``, plus the penalty's; all are computed
analytically in float64, in row chunks, without autograd.

Both solvers work on standardised inputs, an exact change of variables that makes the problem far
better conditioned: ``(x - m) * s`` per class (``s`` = 1/std) for a diagonal map, ``(x - m) A``
with ``A`` the inverse square root of the inputs' covariance (whitening) for a full matrix. The
parameters are laid out as a (K, P) matrix ``theta``: ``[W | b]`` (P = K + 1) or ``[w, b]`` per
class (P = 2).

Both are minimised by :func:`torchcal._optim.affine.fit_affine` (the one Newton routine),
from the fitted temperature's map (or from the uniform map, ``theta = 0``, if that is better),
until every partial derivative with respect to the standardised parameters is at most ``tol``:

* with the exact Hessian, solved by Cholesky, when the Hessian is cheap (few parameters): a
  handful of steps, however ill-conditioned the problem (rare classes, near-collinear
  log-probabilities), to a gradient near float64 rounding;
* otherwise by Newton-CG: each Newton system is solved inexactly by conjugate gradients on
  Hessian-vector products ``H v = sum_i [(diag(p_i) - p_i p_i^T) (V f_i)] f_i^T / M`` (two
  products with the inputs; float32 products accumulated in float64, since they only shape the
  step, while the objective and gradient that decide acceptance and convergence are float64),
  preconditioned by the Hessian's per-class blocks (its diagonal for very large K).

A separable problem (the infimum is approached as the unpenalised parameters run off to
infinity) is recognised while it runs: see :meth:`AffineObjective.recedes`.

Identifiability. Softmax is unchanged when the same vector is added to every row's scores, so
``b + c 1`` and, for a full matrix, ``W + 1 v^T`` give the same probabilities as ``(W, b)``. The
penalty is taken at :func:`canonical`'s representative of the map, the one whose bias and
columns' off-diagonal entries sum to zero, which is the least penalised of them: the objective is
then constant along those directions (in the standardised parameters: adding the same vector to
every class's row of ``theta``), its minimum and canonical minimiser are those of the plain ODIR
objective, and the solver's result is mapped to that representative. With both penalties
positive it is unique; without a penalty it is the limit of the penalised optimum as the penalty
goes to 0.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch
from torch import Tensor

from torchcal._inputs.chunks import RowChunks
from torchcal._objectives.curvature import CHOLESKY_RCOND, Curvature

#: Transformed float64 rows are kept in memory up to this many elements (256 MiB); beyond it
#: every pass recomputes them chunk by chunk from the caller's rows.
CACHE_ELEMENTS = 1 << 25
#: Elements per chunk of the kept float64 rows (by default): the evaluations' matrix products
#: run faster on chunks of a few thousand rows than on cache-sized ones (10-15% at 20,000 x
#: 1,000), and their (rows, K) temporaries stay at 8 MiB.
CACHED_CHUNK_ELEMENTS = 1 << 20
#: Newton-CG is preconditioned by the Hessian's per-class blocks up to this many values in them
#: ...
BLOCK_MAX_ELEMENTS = 1 << 24
#: ... and while computing them costs at most this many multiply-adds (rows x K x P^2).
BLOCK_MAX_WORK = 4e10
#: Elements of the (rows, parameters) matrix behind one Hessian update.
HESSIAN_CHUNK_ELEMENTS = 1 << 20
#: Elements per chunk of the float32 rows behind Hessian-vector products (large chunks keep the
#: matrix products efficient).
PRODUCT_CHUNK_ELEMENTS = 1 << 22


def canonical(weight: Tensor, bias: Tensor, *, diagonal: bool) -> tuple[Tensor, Tensor]:
    """The representative of ``(W, b)`` whose bias and columns' off-diagonals sum to zero.

    Adding a constant to every score leaves softmax unchanged, so ``b - mean(b)`` and, for a full
    matrix, ``W + 1 v^T`` with ``v_j = -mean_{i != j} W_ij`` give the same probabilities; neither
    raises the penalty (each is the minimum of the penalty over the representatives). Leading
    batch dimensions are allowed.
    """
    bias = bias - bias.mean(dim=-1, keepdim=True)
    if diagonal:
        return weight, bias
    k = weight.shape[-1]
    off_diagonal_sums = weight.sum(dim=-2) - torch.diagonal(weight, dim1=-2, dim2=-1)
    return weight - off_diagonal_sums[..., None, :] / (k - 1), bias


class AffineObjective:
    """The penalised mean NLL of ``softmax(x W^T + b)`` on standardised float64 inputs.

    Args:
        rows: (M, K) logits in any floating dtype and device (not modified).
        labels: (M,) class indices.
        log_probs: use ``x = log_softmax(rows)`` instead of ``x = rows``.
        diagonal: a (K,) weight (``x * w + b``) instead of a (K, K) matrix.
        off_diagonal_penalty: coefficient of ``sum_{i != j} W_ij^2`` (full matrix only).
        bias_penalty: coefficient of ``sum_j b_j^2``.
        chunk_elements: elements per chunk of rows.
    """

    def __init__(
        self,
        rows: Tensor,
        labels: Tensor,
        *,
        log_probs: bool,
        diagonal: bool,
        off_diagonal_penalty: float,
        bias_penalty: float,
        chunk_elements: int | None = None,
    ) -> None:
        self.rows = rows
        self.labels = labels.to(rows.device)
        self.log_probs = log_probs
        self.diagonal = diagonal
        self.off_diagonal_penalty = 0.0 if diagonal else float(off_diagonal_penalty)
        self.bias_penalty = float(bias_penalty)
        self.n_samples, self.n_classes = rows.shape
        self.width = 2 if diagonal else self.n_classes + 1  # P: parameters per class
        self.n_parameters = self.n_classes * self.width
        self.device = rows.device
        cached = self.n_samples * self.n_classes <= CACHE_ELEMENTS
        if chunk_elements is None and cached and self.device.type == "cpu":
            chunk_elements = CACHED_CHUNK_ELEMENTS
        self.chunks = RowChunks.fitting(
            self.n_samples,
            row_width=self.n_classes,
            device=self.device,
            chunk_elements=chunk_elements,
        )
        #: Newton systems: "newton" forms the Hessian, "newton-cg" uses products with it.
        self.method = "newton"
        self._float32_rows: list[Tensor] | None = None
        self._float32_maps: tuple[Tensor, ...] | None = None
        self._correction_inputs: list[tuple[Tensor, Tensor]] = []
        self._correction_weights: tuple[Tensor, Tensor] | None = None
        self._penalty_matrix: Tensor | None = None
        self._penalty_products: Tensor | None = None
        #: Newton-CG with the rows kept: the float32 probabilities at the last point evaluated,
        #: which is usually where the next curvature is wanted.
        self._kept_probabilities: tuple[Tensor, Tensor] | None = None
        #: The point, value and gradient of the last :meth:`value_and_gradient`.
        self._last_evaluation: tuple[Tensor, float, Tensor] | None = None
        moments = self._moments()
        self.mean, self.scale, self.whitening, self.unwhitening, self.mean_squares = moments
        # b = sum_a theta_ia * U_ia: the bias in terms of the standardised parameters.
        if diagonal:
            self.bias_map = torch.stack([-self.mean * self.scale, torch.ones_like(self.mean)], 1)
        else:
            one = torch.ones(1, dtype=torch.float64, device=self.device)
            self.bias_map = torch.cat([-self.mean @ self.whitening, one]).expand(self.n_classes, -1)
        self._cache: list[Tensor] | None = None
        if cached:
            self._cache = [self._standardise(chunk) for _, _, chunk in self._raw_chunks()]

    # ------------------------------------------------------------------ inputs
    def _raw_chunks(self) -> Iterator[tuple[int, int, Tensor]]:
        for start, stop in self.chunks:
            chunk = self.rows[start:stop].to(torch.float64)
            if self.log_probs:
                chunk = torch.log_softmax(chunk, dim=1)
            yield start, stop, chunk

    def _moments(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Mean of the transformed inputs, the maps that standardise them, and each standardised
        input's mean square (1 but where a variance or eigenvalue was raised to its floor).

        Diagonal maps scale each class by ``1 / std`` (``scale``). Full matrices whiten:
        ``(x - m) A`` with ``A = C^(-1/2)``, ``C`` the covariance (eigenvalues below 1e-12 of the
        largest raised to it), so that correlated inputs such as log-probabilities become
        uncorrelated; ``unwhitening`` is ``A^(-1)``. The mean squares are the diagonal of
        ``A C A``, from the eigenvalues, without a pass over the inputs.
        """
        k, dtype = self.n_classes, torch.float64
        total = torch.zeros(k, dtype=dtype, device=self.device)
        for _, _, chunk in self._raw_chunks():
            total += chunk.sum(dim=0)
        mean = total / self.n_samples
        floor = 1e-24 * (1 + mean.abs().max()) ** 2
        if self.diagonal:  # the variances alone
            squares = torch.zeros(k, dtype=dtype, device=self.device)
            for _, _, chunk in self._raw_chunks():
                squares += (chunk - mean).square_().sum(dim=0)
            variance = squares / self.n_samples
            scale = torch.where(variance > floor, variance, torch.ones_like(variance)).rsqrt()
            return mean, scale, torch.empty(0), torch.empty(0), variance * scale.square()
        covariance = torch.zeros(k, k, dtype=dtype, device=self.device)
        for _, _, chunk in self._raw_chunks():
            centred = chunk - mean
            covariance.addmm_(centred.T, centred)
        covariance /= self.n_samples
        eigenvalues, vectors = torch.linalg.eigh(covariance)
        if float(eigenvalues.max()) <= floor:
            eye = torch.eye(k, dtype=dtype, device=self.device)
            return mean, torch.ones_like(mean), eye, eye, covariance.diagonal().clone()
        raised = eigenvalues.clamp_min(1e-12 * float(eigenvalues.max()))
        whitening = (vectors * raised.rsqrt()) @ vectors.T
        unwhitening = (vectors * raised.sqrt()) @ vectors.T
        mean_squares = (vectors.square() * (eigenvalues / raised)).sum(dim=1)
        return mean, torch.ones_like(mean), whitening, unwhitening, mean_squares

    def separated_classes(self) -> Tensor:
        """(K,) bool: for a diagonal map, the classes whose own input separates them from the
        rest, so that their parameters have no finite optimum (all False for a full matrix).

        Class ``i`` is separated when its samples' own input ``x_i`` exceeds every other
        sample's: raising its weight while moving its bias to keep the score at a threshold
        between the two groups narrows no margin and widens some, so the NLL falls forever along
        its own two parameters. With a bias penalty only the threshold 0 is free, so the groups
        must then lie on either side of 0. A class with no samples is separated too (its score
        can sink forever); so is one that all samples have.
        """
        k = self.n_classes
        if not self.diagonal:
            return torch.zeros(k, dtype=torch.bool, device=self.device)
        lowest_own = torch.full((k,), torch.inf, dtype=torch.float64, device=self.device)
        highest_other = torch.full((k,), -torch.inf, dtype=torch.float64, device=self.device)
        for start, stop, x in self._raw_chunks():
            labels = self.labels[start:stop, None]
            lowest_own.scatter_reduce_(0, labels[:, 0], x.gather(1, labels)[:, 0], "amin")
            others = x.scatter(1, labels, -torch.inf)
            torch.maximum(highest_other, others.amax(dim=0), out=highest_other)
        separated = lowest_own > highest_other
        if self.bias_penalty:
            separated &= (lowest_own >= 0) & (highest_other <= 0)
        return separated

    def receding_parameters(self) -> Tensor:
        """(K, P) bool: the parameters of :meth:`separated_classes`, along which alone the
        objective falls forever (see :func:`torchcal._optim.newton.minimise`)."""
        return self.separated_classes()[:, None].expand(self.n_classes, self.width)

    def _standardised_chunks(self) -> Iterator[tuple[int, int, Tensor]]:
        if self._cache is not None:
            start = 0
            for chunk in self._cache:
                yield start, start + chunk.shape[0], chunk
                start += chunk.shape[0]
            return
        for start, stop, chunk in self._raw_chunks():
            yield start, stop, self._standardise(chunk)

    def _standardise(self, chunk: Tensor) -> Tensor:
        if self.diagonal:
            return (chunk - self.mean) * self.scale
        return (chunk - self.mean) @ self.whitening

    # ------------------------------------------------------------------ parameters
    def to_original(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        """(W, b) acting on the transformed inputs, from the standardised (..., K, P) ``theta``
        (float64, or float32 for the penalty's part of Hessian-vector products)."""
        scale, whitening, bias_map = self._maps(theta.dtype)
        weight = theta[..., 0] * scale if self.diagonal else theta[..., :-1] @ whitening.T
        return weight, (theta * bias_map).sum(dim=-1)

    def _maps(self, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
        """``scale``, ``whitening`` and ``bias_map`` in ``dtype`` (float32 copies made once)."""
        if dtype == torch.float64:
            return self.scale, self.whitening, self.bias_map
        if self._float32_maps is None:
            maps = (self.scale, self.whitening, self.bias_map)
            self._float32_maps = tuple(m.to(torch.float32) for m in maps)
        return self._float32_maps

    def to_standardised(self, weight: Tensor, bias: Tensor) -> Tensor:
        """Inverse of :meth:`to_original`: the (K, P) standardised parameters."""
        weight = weight.to(device=self.device, dtype=torch.float64)
        bias = bias.to(device=self.device, dtype=torch.float64)
        if self.diagonal:
            columns = (weight / self.scale)[:, None]
            bias = bias + weight * self.mean
        else:
            columns = weight @ self.unwhitening.T
            bias = bias + weight @ self.mean
        return torch.cat([columns, bias[:, None]], dim=1)

    # ------------------------------------------------------------------ objective
    def _scores(self, x: Tensor, theta: Tensor) -> Tensor:
        if self.diagonal:
            return torch.addcmul(theta[:, 1], x, theta[:, 0])
        return torch.addmm(theta[:, -1], x, theta[:, :-1].T)

    def value(self, theta: Tensor) -> float:
        """The objective at ``theta`` (one pass, no derivatives)."""
        nll = torch.zeros((), dtype=torch.float64, device=self.device)
        for start, stop, x in self._standardised_chunks():
            scores = self._scores(x, theta)
            labels = self.labels[start:stop, None]
            nll += (torch.logsumexp(scores, dim=1, keepdim=True) - scores.gather(1, labels)).sum()
        return float(nll) / self.n_samples + self._penalty(theta)[0]

    def evaluate(
        self, theta: Tensor, *, hessian: bool = False
    ) -> tuple[float, Tensor, Tensor | None]:
        """Objective, gradient (K, P) and, if asked, Hessian (n, n) at ``theta``."""
        k, width = self.n_classes, self.width
        grad = torch.zeros_like(theta)
        hess = None
        if hessian:
            hess = torch.zeros(k * width, k * width, dtype=torch.float64, device=self.device)
            blocks = torch.zeros(k, width, width, dtype=torch.float64, device=self.device)
        nll = torch.zeros((), dtype=torch.float64, device=self.device)
        kept = None
        if self.method == "newton-cg" and self._cache is not None:
            kept = torch.empty(self.n_samples, k, dtype=torch.float32, device=self.device)
        for start, stop, x in self._standardised_chunks():
            labels = self.labels[start:stop, None]
            scores = self._scores(x, theta)
            label_scores = scores.gather(1, labels)
            top = scores.amax(dim=1, keepdim=True)
            probs = scores.sub_(top).exp_()  # in place: one (M, K) temporary per chunk
            total = probs.sum(dim=1, keepdim=True)
            nll += (top + total.log() - label_scores).sum()  # logsumexp - score of the label
            probs /= total
            if kept is not None:
                kept[start:stop] = probs
            if hess is not None:
                self._add_hessian(hess, blocks, x, probs)
            residual = probs.scatter_add_(1, labels, torch.full_like(probs[:, :1], -1.0))
            grad[:, -1] += residual.sum(dim=0)
            if self.diagonal:
                grad[:, 0] += residual.mul_(x).sum(dim=0)
            else:
                grad[:, :-1] += residual.T @ x
        n = self.n_samples
        grad /= n
        penalty, penalty_grad = self._penalty(theta)
        if hess is not None:
            hess /= n
            view = hess.view(k, width, k, width)
            if self.diagonal:
                blocks[:, 1, 0] = blocks[:, 0, 1]
            view.diagonal(dim1=0, dim2=2).add_(blocks.permute(1, 2, 0) / n)
            hess += self._penalty_hessian()
        if kept is not None:
            self._kept_probabilities = (theta, kept)
        return float(nll) / n + penalty, grad + penalty_grad, hess

    def recedes(self, direction: Tensor) -> bool:
        """Whether the objective falls forever along ``direction``'s unpenalised part.

        That part is the diagonal weights, the bias if ``bias_penalty`` is 0, and all weights if
        ``off_diagonal_penalty`` is 0. If moving along it widens no sample's gap between its
        label's score and another class's and widens some, the NLL keeps falling along it while
        the penalty stays put, from any point: the infimum is not attained (for an unpenalised
        map: the classes are separable). ``direction`` is in the standardised parameters (a
        point is a direction from 0).
        """
        weight, bias = canonical(*self.to_original(direction), diagonal=self.diagonal)
        if not self.diagonal and self.off_diagonal_penalty:
            weight = torch.diagonal(weight)
        if self.bias_penalty:
            bias = torch.zeros_like(bias)
        narrowest, widest, largest = float("inf"), 0.0, 0.0
        for start, stop, x in self._raw_chunks():
            scores = x * weight + bias if weight.dim() == 1 else x @ weight.T + bias
            gaps = scores.gather(1, self.labels[start:stop, None]) - scores
            narrowest = min(narrowest, float(gaps.min()))
            widest = max(widest, float(gaps.max()))
            largest = max(largest, float(scores.abs().max()))
        resolution = 1e-9 * largest
        return narrowest >= -resolution and widest > resolution

    # ------------------------------------------------------------------ for torchcal._optim.newton
    def value_and_gradient(self, theta: Tensor) -> tuple[float, Tensor]:
        """The objective and its (K, P) gradient at ``theta`` (one pass; asked again at the
        point of the previous call, the same values without a pass)."""
        last = self._last_evaluation
        if last is not None and torch.equal(last[0], theta):
            return last[1], last[2]
        value, grad, _ = self.evaluate(theta)
        self._last_evaluation = (theta.clone(), value, grad)
        return value, grad

    def curvature(self, theta: Tensor) -> Curvature:
        """The Hessian at ``theta``: formed (``method="newton"``), or as float32 products with
        float64 accumulation and an approximation of the inverse of its per-class blocks as
        preconditioner (``"newton-cg"``)."""
        if self.method == "newton":
            _, _, hess = self.evaluate(theta, hessian=True)
            return Curvature(matrix=hess)
        kept = list(self._probabilities(theta)) if self._cache is not None else None
        return Curvature(
            product=self._hessian_product(theta, kept),
            precondition=self._precondition(theta, kept),
        )

    def _probabilities(self, theta: Tensor, kept: list[Tensor] | None = None) -> Iterator[Tensor]:
        """The float32 probabilities at ``theta`` for each chunk of :meth:`_product_rows`: those
        given, those kept by the last evaluation if it was at ``theta``, or computed."""
        if kept is not None:
            yield from kept
            return
        last = self._kept_probabilities
        if last is not None and torch.equal(last[0], theta):
            start = 0
            for x in self._product_rows():
                yield last[1][start : start + x.shape[0]]
                start += x.shape[0]
            return
        theta32 = theta.to(torch.float32)
        for x in self._product_rows():
            yield torch.softmax(self._scores(x, theta32), dim=1)

    def _product_rows(self) -> Iterator[Tensor]:
        """The standardised rows in float32, in large chunks (kept if the float64 ones are)."""
        if self._float32_rows is not None:
            yield from self._float32_rows
            return
        rows = max(1, PRODUCT_CHUNK_ELEMENTS // self.n_classes)
        chunks, pending, count = [], [], 0
        for _, _, x in self._standardised_chunks():
            pending.append(x.to(torch.float32))
            count += x.shape[0]
            if count >= rows:
                chunks.append(torch.cat(pending))
                pending, count = [], 0
                if self._cache is None:
                    yield chunks.pop()
        if pending:
            chunks.append(torch.cat(pending))
        if self._cache is not None:
            self._float32_rows = chunks
        yield from chunks

    def _hessian_product(
        self, theta: Tensor, kept: list[Tensor] | None = None
    ) -> Callable[[Tensor], Tensor]:
        """``v -> H v`` at ``theta``: the NLL's part from float32 products summed in float64,
        the penalty's as its gradient at ``v`` (it is quadratic), also in float32. ``kept``: the
        probabilities at ``theta`` per chunk, if known."""

        def product(v: Tensor) -> Tensor:
            v32 = v.to(torch.float32)
            out = torch.zeros_like(v)
            for x, probs in zip(
                self._product_rows(), self._probabilities(theta, kept), strict=True
            ):
                # (diag(p) - p p^T) applied to each row's change of scores, in place
                weighted = self._scores(x, v32).mul_(probs)
                weighted.addcmul_(probs, weighted.sum(dim=1, keepdim=True), value=-1)
                # float32 column sums (cascaded, so within a few ulp), summed in float64
                out[:, -1] += weighted.sum(dim=0)
                if self.diagonal:
                    out[:, 0] += weighted.mul_(x).sum(dim=0)
                else:
                    out[:, :-1] += weighted.T @ x
            # the penalty's part (its gradient at v, two K x K products) in float32 as well
            return out / self.n_samples + self._penalty_gradient(v32).to(torch.float64)

        return product

    def _precondition(
        self, theta: Tensor, kept: list[Tensor] | None = None
    ) -> Callable[[Tensor], Tensor]:
        """An approximate inverse of the Hessian's per-class blocks at ``theta``.

        Each class's own block captures what makes these problems ill-conditioned: rare classes
        (little curvature) and correlated inputs weighted by where the class is likely. The
        blocks are inverted exactly while they are small enough; otherwise their diagonal is,
        corrected exactly along a few directions per class for a full matrix on log-probabilities
        (:meth:`_corrected_diagonal`; whitened logits leave the blocks near enough to diagonal
        that the correction costs more passes than it saves).
        """
        k, width = self.n_classes, self.width
        size = k * width * width
        if size <= BLOCK_MAX_ELEMENTS and self.n_samples * size <= BLOCK_MAX_WORK:
            blocks = self.hessian_blocks(theta, self._probabilities(theta, kept))
            eye = torch.eye(width, dtype=blocks.dtype, device=blocks.device)
            largest = blocks.diagonal(dim1=1, dim2=2).abs().amax(dim=1).clamp_min(1e-300)
            factors, info = torch.linalg.cholesky_ex(
                blocks + CHOLESKY_RCOND * largest[:, None, None] * eye
            )
            if not bool((info != 0).any()):
                return lambda q: torch.cholesky_solve(q[:, :, None], factors).squeeze(2)
        if self.log_probs and not self.diagonal:
            corrected = self._corrected_diagonal(theta, kept)
            if corrected is not None:
                return corrected
        return _inverse_diagonal(self._curvature_pass(theta, kept)[0])

    def _corrected_diagonal(
        self, theta: Tensor, kept: list[Tensor] | None = None
    ) -> Callable[[Tensor], Tensor] | None:
        """The blocks' diagonal ``D_i``, corrected exactly along directions ``Z_i`` in each
        class's parameters: its own input's weight ``W_ii``, the inputs' common mode and the
        bias, along which the blocks of whitened log-probabilities are far from diagonal.

        The balancing preconditioner ``M_i = Z E^-1 Z^T + (I - Z E^-1 Z^T B) D^-1
        (I - B Z E^-1 Z^T)`` (``E = Z^T B Z``) is exact on ``span(Z_i)`` and symmetric
        positive definite; it needs only ``B_i Z_i``, one pass of float32 products, and ``D_i``
        with its weights' part approximated (see :meth:`_curvature_pass`). Measured on
        log-probabilities at 3,000 x 40: condition number 3.1 after it (2.9 with the exact
        diagonal), 117 after the diagonal, 1.25 after the exact blocks. None if ``E`` cannot be
        factorised.
        """
        directions = self._correction_directions()
        diagonal, products = self._curvature_pass(theta, kept, corrected=True)
        assert products is not None
        gram = directions.transpose(1, 2) @ products
        gram = (gram + gram.transpose(1, 2)) / 2
        eye = torch.eye(gram.shape[1], dtype=gram.dtype, device=gram.device)
        largest = gram.diagonal(dim1=1, dim2=2).abs().amax(dim=1).clamp_min(1e-300)
        factors, info = torch.linalg.cholesky_ex(
            gram + CHOLESKY_RCOND * largest[:, None, None] * eye
        )
        if bool((info != 0).any()):
            return None
        inverse_diagonal = _inverse_diagonal(diagonal)

        def precondition(q: Tensor) -> Tensor:
            coarse = torch.cholesky_solve((directions.transpose(1, 2) @ q[:, :, None]), factors)
            t = inverse_diagonal(q - (products @ coarse).squeeze(2))
            fine = torch.cholesky_solve(products.transpose(1, 2) @ t[:, :, None], factors)
            return t + (directions @ (coarse - fine)).squeeze(2)

        return precondition

    def _correction_directions(self) -> Tensor:
        """(K, P, 3) unit directions in each class's standardised parameters: the weight on its
        own input (``W_ii``: ``A^-1 e_i`` in the standardised weights; at K = 1,000 the whitened
        input ``e_i`` instead needs twice the products), the weight on the inputs' common mode
        (``sum_j W_ij``: ``A^-1 1``), the bias."""
        k, width = self.n_classes, self.width
        directions = torch.zeros(k, width, 3, dtype=torch.float64, device=self.device)
        own = self.unwhitening.T
        directions[:, :-1, 0] = own / own.norm(dim=1, keepdim=True).clamp_min(1e-300)
        directions[:, :-1, 1] = self._common_mode()
        directions[:, -1, 2] = 1
        return directions

    def _common_mode(self) -> Tensor:
        """``A^-1 1`` normalised: the standardised weights of the inputs' common mode."""
        mode = self.unwhitening.sum(dim=1)
        return mode / mode.norm().clamp_min(1e-300)

    def _add_hessian(self, hess: Tensor, blocks: Tensor, x: Tensor, probs: Tensor) -> None:
        """Add a chunk's sum of (diag(p) - p p^T) (x) f f^T, f the features of each parameter.

        ``blocks`` (K, P, P) collects the diag(p) part (block-diagonal over classes, see
        :meth:`_add_blocks`), ``hess`` the -p p^T part as ``-Z^T Z`` with
        ``Z[m, (i, a)] = p_mi f_mia``, in sub-chunks of rows.
        """
        k, width = self.n_classes, self.width
        step = max(1, HESSIAN_CHUNK_ELEMENTS // (k * width))
        for start in range(0, x.shape[0], step):
            xs, ps = x[start : start + step], probs[start : start + step]
            self._add_blocks(blocks, xs, ps)
            if self.diagonal:
                weighted = torch.stack([ps * xs, ps], dim=2)
            else:
                features = torch.cat([xs, torch.ones_like(xs[:, :1])], dim=1)
                weighted = ps[:, :, None] * features[:, None, :]
            flat = weighted.reshape(xs.shape[0], k * width)
            hess.addmm_(flat.T, flat, alpha=-1.0)

    def _add_blocks(self, blocks: Tensor, x: Tensor, weights: Tensor) -> None:
        """Add ``sum_m weights_mi f_mi f_mi^T`` to each class's (P, P) block of ``blocks``.

        For a diagonal map only the upper triangle is filled: the caller copies entry (0, 1) to
        (1, 0) once the sums are complete.
        """
        if self.diagonal:
            blocks[:, 1, 1] += weights.sum(dim=0)
            weighted = weights * x
            blocks[:, 0, 1] += weighted.sum(dim=0)
            blocks[:, 0, 0] += weighted.mul_(x).sum(dim=0)
        else:
            features = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
            outer = (features[:, :, None] * features[:, None, :]).reshape(x.shape[0], -1)
            blocks += (weights.T @ outer).view(self.n_classes, self.width, self.width)

    def _penalty(self, theta: Tensor) -> tuple[float, Tensor]:
        """The ODIR penalty of ``theta``'s map and its gradient in ``theta``.

        The penalty is taken at the :func:`canonical` representative of the map: the minimum of
        the ODIR penalty over all parameters giving the same probabilities (adding a constant to
        the bias, or a vector ``v`` to every row of ``W``). The NLL does not change along those
        directions, so the objective's minimum and canonical minimiser are those of the plain
        ODIR penalty; the Hessian loses the directions along which only the penalty curves,
        which are very flat after whitening log-probabilities (their common mode has a large
        variance) and made conjugate gradients slow.
        """
        weight, bias = canonical(*self.to_original(theta), diagonal=self.diagonal)
        value = self.bias_penalty * float(bias.square().sum())
        if self.off_diagonal_penalty:
            off_diagonal = weight - torch.diag(torch.diagonal(weight))
            value += self.off_diagonal_penalty * float(off_diagonal.square().sum())
        return value, self._penalty_gradient(theta)

    def _penalty_gradient(self, theta: Tensor) -> Tensor:
        """The penalty's gradient at the (..., K, P) ``theta``: the plain ODIR penalty's at the
        canonical representative (the minimum over the representatives is attained there)."""
        weight, bias = canonical(*self.to_original(theta), diagonal=self.diagonal)
        _, whitening, bias_map = self._maps(theta.dtype)
        grad = 2 * self.bias_penalty * bias[..., None] * bias_map
        if self.off_diagonal_penalty:
            off_diagonal = weight - torch.diag_embed(torch.diagonal(weight, dim1=-2, dim2=-1))
            grad = grad.clone()
            grad[..., :-1] += 2 * self.off_diagonal_penalty * off_diagonal @ whitening
        return grad

    def _penalty_hessian(self) -> Tensor:
        """The penalty's (n, n) Hessian, formed once (only for the exact Newton path): the
        penalty is quadratic, so column j is its gradient at the j-th unit vector."""
        if self._penalty_matrix is None:
            n = self.n_parameters
            units = torch.eye(n, dtype=torch.float64, device=self.device)
            columns = self._penalty_gradient(units.view(n, self.n_classes, self.width))
            self._penalty_matrix = columns.reshape(n, n).T.contiguous()
        return self._penalty_matrix

    def _penalty_factors(self) -> tuple[float, float]:
        """Within one class's parameters, the penalty's Hessian is the plain ODIR penalty's
        times these factors (off-diagonal weights, bias): the canonical representative takes
        a 1/(K - 1) share of each off-diagonal weight, a 1/K share of each bias."""
        k = self.n_classes
        return (k - 2) / (k - 1), (k - 1) / k

    def _penalty_blocks(self) -> Tensor:
        """The penalty's Hessian's (K, P, P) blocks of each class's own parameters: ``2 mu' u u^T``
        plus, for a full matrix, ``2 lambda' A^T O_i A`` (see :meth:`_penalty_factors`)."""
        k = self.n_classes
        weight_factor, bias_factor = self._penalty_factors()
        mu = self.bias_penalty * bias_factor
        blocks = 2 * mu * self.bias_map[:, :, None] * self.bias_map[:, None, :]
        if self.off_diagonal_penalty:
            a = self.whitening
            # A^T diag(1 - e_i) A = A^T A - a_i a_i^T, a_i the i-th row of A
            off = (a.T @ a)[None] - a[:, :, None] * a[:, None, :]
            blocks = blocks.clone()
            blocks[:, :k, :k] += 2 * self.off_diagonal_penalty * weight_factor * off
        return blocks

    def hessian_blocks(self, theta: Tensor, kept: Iterable[Tensor] | None = None) -> Tensor:
        """The Hessian's (P, P) blocks of each class's own parameters, (K, P, P), in one pass.

        The diag(p) - p p^T coupling between classes is left out; within a class the block is
        ``sum_m p_mi (1 - p_mi) f_mi f_mi^T`` plus the penalty's block. Exact in float64, or
        with ``kept`` (the float32 probabilities at ``theta`` per chunk of the float32 rows,
        :meth:`_probabilities`) from float32 products summed in float64, for preconditioning.
        """
        k, width = self.n_classes, self.width
        blocks = torch.zeros(k, width, width, dtype=torch.float64, device=self.device)
        step = max(1, HESSIAN_CHUNK_ELEMENTS // (width * width))
        if kept is None:
            pairs = (
                (chunk, torch.softmax(self._scores(chunk, theta), dim=1))
                for _, _, chunk in self._standardised_chunks()
            )
        else:
            pairs = zip(self._product_rows(), kept, strict=True)
        for chunk, chunk_probs in pairs:
            for start in range(0, chunk.shape[0], step):
                x, probs = chunk[start : start + step], chunk_probs[start : start + step]
                self._add_blocks(blocks, x, torch.addcmul(probs, probs, probs, value=-1))
        if self.diagonal:
            blocks[:, 1, 0] = blocks[:, 0, 1]
        blocks /= self.n_samples
        return blocks + self._penalty_blocks()

    def hessian_diagonal(self, theta: Tensor) -> Tensor:
        """The Hessian's diagonal (K, P) at ``theta``, in one pass of float32 products summed in
        float64 (for preconditioning)."""
        return self._curvature_pass(theta)[0]

    def _curvature_pass(
        self, theta: Tensor, kept: list[Tensor] | None = None, *, corrected: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """One pass of float32 products summed in float64: the Hessian's diagonal (K, P) and,
        if ``corrected``, each class's own block times its :meth:`_correction_directions`,
        ``B_i Z_i`` (K, P, 3). ``kept``: the probabilities at ``theta`` per chunk, if known.

        With ``corrected`` the weights' part of the diagonal is the bias entry (the class's total
        curvature) times each input's mean square, without the product that makes it exact: the
        corrections carry the directions along which the blocks are far from diagonal, and at
        20,000 x 1,000 the fit took the same Hessian-vector products with either diagonal.
        """
        k = self.n_classes
        diag = torch.zeros_like(theta)
        products = None
        if corrected:
            products = torch.zeros(k, self.width, 3, dtype=torch.float64, device=self.device)
        weighted = None
        chunks = zip(self._product_rows(), self._probabilities(theta, kept), strict=True)
        for index, (x, probs) in enumerate(chunks):
            spread = torch.addcmul(probs, probs, probs, value=-1)  # p (1 - p)
            # float32 column sums (cascaded, so within a few ulp), summed in float64
            diag[:, -1] += spread.sum(dim=0)
            if self.diagonal:
                diag[:, 0] += (spread * x).mul_(x).sum(dim=0)
            elif not corrected:
                diag[:, :-1] += spread.T @ x.square()
            if products is not None:
                # sum_m p_mi (1 - p_mi) f_m (f_m . z_id) for the directions' features f_m . z_id:
                # x_m . own_i, x_m . mode and 1, side by side in one reused buffer
                own, mode = self._correction_features(index, x)
                if weighted is None or weighted.shape[0] != x.shape[0]:
                    weighted = torch.empty(x.shape[0], 3 * k, dtype=x.dtype, device=x.device)
                torch.mul(spread, own, out=weighted[:, :k])
                torch.mul(spread, mode, out=weighted[:, k : 2 * k])
                weighted[:, 2 * k :] = spread
                products[:, :-1] += (weighted.T @ x).view(3, k, k).permute(1, 2, 0)
                products[:, -1] += weighted.sum(dim=0).view(3, k).T
        if corrected:
            diag[:, :-1] = diag[:, -1:] * self.mean_squares[None, :]
        diag /= self.n_samples
        diag += self._penalty_diagonal()
        if products is not None:
            products /= self.n_samples
            products += self._penalty_block_products()
        return diag, products

    def _correction_features(self, index: int, x: Tensor) -> tuple[Tensor, Tensor]:
        """For the ``index``-th chunk ``x`` of :meth:`_product_rows`, the float32 features of
        the correction directions' weights (:meth:`_correction_directions`): ``x_m . own_i``
        (M, K) and ``x_m . mode`` (M, 1). They do not depend on the parameters, so they are
        kept where the float32 rows are."""
        kept = self._correction_inputs
        if index < len(kept):
            return kept[index]
        if self._correction_weights is None:  # (K, K) own_i by column and (K, 1) mode, float32
            own = self._correction_directions()[:, :-1, 0].T
            mode = self._common_mode()[:, None]
            self._correction_weights = (own.to(torch.float32), mode.to(torch.float32))
        own, mode = self._correction_weights
        features = (x @ own, x @ mode)
        if self._cache is not None:  # the float32 rows are kept too
            kept.append(features)
        return features

    def _penalty_block_products(self) -> Tensor:
        """Each class's block of the penalty's Hessian times its correction directions (see
        :meth:`_penalty_blocks`), formed once without forming the blocks."""
        if self._penalty_products is not None:
            return self._penalty_products
        directions = self._correction_directions()
        weight_factor, bias_factor = self._penalty_factors()
        along_bias = (self.bias_map[:, :, None] * directions).sum(dim=1, keepdim=True)
        out = 2 * self.bias_penalty * bias_factor * self.bias_map[:, :, None] * along_bias
        if self.off_diagonal_penalty:
            # A^T diag(1 - e_i) A z for class i's weight part z
            a = self.whitening
            mapped = torch.einsum("jk,ikd->ijd", a, directions[:, :-1])
            mapped[torch.arange(self.n_classes), torch.arange(self.n_classes)] = 0
            out[:, :-1] += (
                2
                * self.off_diagonal_penalty
                * weight_factor
                * torch.einsum("jk,ijd->ikd", a, mapped)
            )
        self._penalty_products = out
        return out

    def _penalty_diagonal(self) -> Tensor:
        """The diagonal (K, P) of :meth:`_penalty_blocks`, without forming them."""
        weight_factor, bias_factor = self._penalty_factors()
        diag = 2 * self.bias_penalty * bias_factor * self.bias_map.square()
        if self.off_diagonal_penalty:
            a2 = self.whitening.square()
            diag = diag.clone()
            diag[:, :-1] += (
                2 * self.off_diagonal_penalty * weight_factor * (a2.sum(dim=0)[None] - a2)
            )
        return diag


def _inverse_diagonal(diagonal: Tensor) -> Callable[[Tensor], Tensor]:
    """``q -> q / diagonal``, with entries below 1e-12 of the largest raised to it."""
    floor = 1e-12 * max(float(diagonal.max()), 1e-300)
    diagonal = diagonal.clamp_min(floor)
    return lambda q: q / diagonal
