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

* Newton's method with the exact Hessian and a backtracking line search, when the Hessian is
  cheap (few parameters): a handful of steps, however ill-conditioned the problem (rare classes,
  near-collinear log-probabilities), to a gradient near float64 rounding.
* Otherwise L-BFGS, with the Hessian's per-class blocks as initial Hessian (its diagonal for very
  large K) and a line search that uses directional derivatives only (see :func:`_lbfgs`), on the
  penalty of the canonical representative (see below), which leaves no poorly curved directions
  to crawl along.

Both stop when every partial derivative with respect to the standardised parameters is at most
``tol``.

Identifiability. Softmax is unchanged when the same vector is added to every row's scores, so
``b + c 1`` and, for a full matrix, ``W + 1 v^T`` give the same probabilities as ``(W, b)``. With
both penalties positive the optimum is unique: at it the bias sums to zero and each column's
off-diagonal entries sum to zero (the NLL gradient sums to zero over the classes, so the penalty's
must too). Without a penalty the optimum is a set; :func:`canonical` returns its member with those
same properties, which is the limit of the penalised optimum as the penalty goes to 0. The Newton
solver's steps have no component along exactly flat directions (the gradient has none); L-BFGS
never moves along them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from torchcal._objective import default_chunk_elements

#: Transformed float64 rows are kept in memory up to this many elements (256 MiB); beyond it
#: every pass recomputes them chunk by chunk from the caller's rows.
CACHE_ELEMENTS = 1 << 25
#: Newton's method is used up to this many parameters ...
NEWTON_MAX_PARAMETERS = 1200
#: ... and while one Hessian costs at most this many multiply-adds (rows x parameters^2).
NEWTON_MAX_WORK = 4e9
#: Newton solves add this fraction of the Hessian's largest diagonal entry to its diagonal.
NEWTON_RCOND = 1e-13
#: L-BFGS is preconditioned by the Hessian's per-class blocks up to this many values in them ...
BLOCK_MAX_ELEMENTS = 1 << 24
#: ... and while computing them costs at most this many multiply-adds (rows x K x P^2).
BLOCK_MAX_WORK = 4e10
#: Elements of the (rows, parameters) matrix behind one Hessian update.
HESSIAN_CHUNK_ELEMENTS = 1 << 20


@dataclass(frozen=True)
class AffineFit:
    """Where the solver stopped, in the original (unstandardised) parameters, float64: the
    :func:`canonical` representative."""

    weight: Tensor  # (K, K) or (K,)
    bias: Tensor  # (K,)
    objective: float
    iterations: int
    converged: bool  # every partial derivative in the standardised parameters is <= tol
    method: str  # "newton" or "lbfgs"
    unbounded: bool  # the objective decreases without bound along the unpenalised parameters


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
        elements = chunk_elements or default_chunk_elements(rows.device)
        self.chunk_rows = max(1, elements // self.n_classes)
        #: Penalise the canonical representative (see :meth:`_penalty`).
        self.projected = False
        self.mean, self.scale, self.whitening, self.unwhitening = self._moments()
        # b = sum_a theta_ia * U_ia: the bias in terms of the standardised parameters.
        if diagonal:
            self.bias_map = torch.stack([-self.mean * self.scale, torch.ones_like(self.mean)], 1)
        else:
            one = torch.ones(1, dtype=torch.float64, device=self.device)
            self.bias_map = torch.cat([-self.mean @ self.whitening, one]).expand(self.n_classes, -1)
        self._cache: list[Tensor] | None = None
        if self.n_samples * self.n_classes <= CACHE_ELEMENTS:
            self._cache = [self._standardise(chunk) for _, _, chunk in self._raw_chunks()]

    # ------------------------------------------------------------------ inputs
    def _raw_chunks(self) -> Iterator[tuple[int, int, Tensor]]:
        for start in range(0, self.n_samples, self.chunk_rows):
            stop = min(start + self.chunk_rows, self.n_samples)
            chunk = self.rows[start:stop].to(torch.float64)
            if self.log_probs:
                chunk = torch.log_softmax(chunk, dim=1)
            yield start, stop, chunk

    def _moments(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Mean of the transformed inputs and the maps that standardise them.

        Diagonal maps scale each class by ``1 / std`` (``scale``). Full matrices whiten:
        ``(x - m) A`` with ``A = C^(-1/2)``, ``C`` the covariance (eigenvalues below 1e-12 of the
        largest raised to it), so that correlated inputs such as log-probabilities become
        uncorrelated; ``unwhitening`` is ``A^(-1)``.
        """
        k, dtype = self.n_classes, torch.float64
        total = torch.zeros(k, dtype=dtype, device=self.device)
        for _, _, chunk in self._raw_chunks():
            total += chunk.sum(dim=0)
        mean = total / self.n_samples
        covariance = torch.zeros(k, k, dtype=dtype, device=self.device)
        for _, _, chunk in self._raw_chunks():
            centred = chunk - mean
            covariance.addmm_(centred.T, centred)
        covariance /= self.n_samples
        variance = covariance.diagonal().clone()
        floor = 1e-24 * (1 + mean.abs().max()) ** 2
        if self.diagonal:
            scale = torch.where(variance > floor, variance, torch.ones_like(variance)).rsqrt()
            return mean, scale, torch.empty(0), torch.empty(0)
        eigenvalues, vectors = torch.linalg.eigh(covariance)
        if float(eigenvalues.max()) <= floor:
            eye = torch.eye(k, dtype=dtype, device=self.device)
            return mean, torch.ones_like(mean), eye, eye
        eigenvalues = eigenvalues.clamp_min(1e-12 * float(eigenvalues.max()))
        whitening = (vectors * eigenvalues.rsqrt()) @ vectors.T
        unwhitening = (vectors * eigenvalues.sqrt()) @ vectors.T
        return mean, torch.ones_like(mean), whitening, unwhitening

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
        """(W, b) acting on the transformed inputs, from the standardised (K, P) ``theta``."""
        weight = theta[:, 0] * self.scale if self.diagonal else theta[:, :-1] @ self.whitening.T
        return weight, (theta * self.bias_map).sum(dim=1)

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
            return x * theta[:, 0] + theta[:, 1]
        return x @ theta[:, :-1].T + theta[:, -1]

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
        for start, stop, x in self._standardised_chunks():
            labels = self.labels[start:stop, None]
            scores = self._scores(x, theta)
            lse = torch.logsumexp(scores, dim=1, keepdim=True)
            nll += (lse - scores.gather(1, labels)).sum()
            probs = torch.exp(scores - lse)
            residual = probs.scatter_add(1, labels, torch.full_like(probs[:, :1], -1.0))
            if self.diagonal:
                grad[:, 0] += (residual * x).sum(dim=0)
                grad[:, 1] += residual.sum(dim=0)
            else:
                grad[:, :-1] += residual.T @ x
                grad[:, -1] += residual.sum(dim=0)
            if hess is not None:
                self._add_hessian(hess, blocks, x, probs)
        n = self.n_samples
        grad /= n
        penalty, penalty_grad = self._penalty(theta)
        if hess is not None:
            hess /= n
            view = hess.view(k, width, k, width)
            if self.diagonal:
                blocks[:, 1, 0] = blocks[:, 0, 1]
            view.diagonal(dim1=0, dim2=2).add_(blocks.permute(1, 2, 0) / n)
            view.diagonal(dim1=0, dim2=2).add_(self._penalty_blocks().permute(1, 2, 0))
        return float(nll) / n + penalty, grad + penalty_grad, hess

    def unbounded(self, theta: Tensor) -> bool:
        """Whether the objective decreases without bound from ``theta``.

        Checks one direction: ``theta``'s unpenalised part (the diagonal weights, the bias if
        ``bias_penalty`` is 0, all weights if ``off_diagonal_penalty`` is 0). If moving along it
        widens no sample's gap between its label's score and another class's and widens some,
        the NLL keeps falling along it while the penalty stays put: the infimum is not attained
        (for an unpenalised map: every sample is classified correctly).
        """
        weight, bias = self.to_original(theta)
        if not self.diagonal and self.off_diagonal_penalty:
            weight = torch.diag(torch.diagonal(weight))
        if self.bias_penalty:
            bias = torch.zeros_like(bias)
        narrowest, widest, largest = float("inf"), 0.0, 0.0
        for start, stop, x in self._raw_chunks():
            scores = x * weight + bias if self.diagonal else x @ weight.T + bias
            gaps = scores.gather(1, self.labels[start:stop, None]) - scores
            narrowest = min(narrowest, float(gaps.min()))
            widest = max(widest, float(gaps.max()))
            largest = max(largest, float(scores.abs().max()))
        resolution = 1e-9 * largest
        return narrowest >= -resolution and widest > resolution

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
            wx = weights * x
            blocks[:, 0, 0] += (wx * x).sum(dim=0)
            blocks[:, 0, 1] += wx.sum(dim=0)
            blocks[:, 1, 1] += weights.sum(dim=0)
        else:
            features = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
            outer = (features[:, :, None] * features[:, None, :]).reshape(x.shape[0], -1)
            blocks += (weights.T @ outer).view(self.n_classes, self.width, self.width)

    def _penalty(self, theta: Tensor) -> tuple[float, Tensor]:
        """The ODIR penalty (on the original parameters) and its gradient in ``theta``.

        With :attr:`projected`, the penalty of the :func:`canonical` representative: the
        objective is then flat along the directions softmax ignores, which LBFGS otherwise
        crawls along (their only curvature is the small penalty's). The gradient is the same
        formula at the canonical point (its components along those directions sum to zero).
        """
        weight, bias = self.to_original(theta)
        if self.projected:
            weight, bias = canonical(weight, bias, diagonal=self.diagonal)
        value = self.bias_penalty * float(bias.square().sum())
        grad = 2 * self.bias_penalty * bias[:, None] * self.bias_map
        if self.off_diagonal_penalty:
            off_diagonal = weight - torch.diag(torch.diagonal(weight))
            value += self.off_diagonal_penalty * float(off_diagonal.square().sum())
            grad = grad.clone()
            grad[:, :-1] += 2 * self.off_diagonal_penalty * off_diagonal @ self.whitening
        return value, grad

    def _penalty_blocks(self) -> Tensor:
        """The penalty's Hessian, block-diagonal over classes: (K, P, P) blocks
        ``2 mu u u^T`` plus, for a full matrix, ``2 lambda A^T O_i A``."""
        k = self.n_classes
        blocks = 2 * self.bias_penalty * self.bias_map[:, :, None] * self.bias_map[:, None, :]
        if self.off_diagonal_penalty:
            a = self.whitening
            # A^T diag(1 - e_i) A = A^T A - a_i a_i^T, a_i the i-th row of A
            off = (a.T @ a)[None] - a[:, :, None] * a[:, None, :]
            blocks = blocks.clone()
            blocks[:, :k, :k] += 2 * self.off_diagonal_penalty * off
        return blocks

    def hessian_blocks(self, theta: Tensor) -> Tensor:
        """The Hessian's (P, P) blocks of each class's own parameters, (K, P, P), in one pass.

        The diag(p) - p p^T coupling between classes is left out; within a class the block is
        ``sum_m p_mi (1 - p_mi) f_mi f_mi^T`` plus the penalty's block.
        """
        k, width = self.n_classes, self.width
        blocks = torch.zeros(k, width, width, dtype=torch.float64, device=self.device)
        step = max(1, HESSIAN_CHUNK_ELEMENTS // (width * width))
        for _, _, chunk in self._standardised_chunks():
            for start in range(0, chunk.shape[0], step):
                x = chunk[start : start + step]
                probs = torch.softmax(self._scores(x, theta), dim=1)
                self._add_blocks(blocks, x, probs * (1 - probs))
        if self.diagonal:
            blocks[:, 1, 0] = blocks[:, 0, 1]
        blocks /= self.n_samples
        return blocks + self._penalty_blocks()

    def hessian_diagonal(self, theta: Tensor) -> Tensor:
        """The Hessian's diagonal (K, P) at ``theta``, in one pass (for preconditioning)."""
        diag = torch.zeros_like(theta)
        for _, _, x in self._standardised_chunks():
            probs = torch.softmax(self._scores(x, theta), dim=1)
            spread = probs * (1 - probs)
            if self.diagonal:
                diag[:, 0] += (spread * x.square()).sum(dim=0)
                diag[:, 1] += spread.sum(dim=0)
            else:
                diag[:, :-1] += spread.T @ x.square()
                diag[:, -1] += spread.sum(dim=0)
        diag /= self.n_samples
        diag += 2 * self.bias_penalty * self.bias_map.square()
        if self.off_diagonal_penalty:
            a2 = self.whitening.square()
            diag[:, :-1] += 2 * self.off_diagonal_penalty * (a2.sum(dim=0)[None] - a2)
        return diag


def canonical(weight: Tensor, bias: Tensor, *, diagonal: bool) -> tuple[Tensor, Tensor]:
    """The representative of ``(W, b)`` whose bias and columns' off-diagonals sum to zero.

    Adding a constant to every score leaves softmax unchanged, so ``b - mean(b)`` and, for a full
    matrix, ``W + 1 v^T`` with ``v_j = -mean_{i != j} W_ij`` give the same probabilities; neither
    raises the penalty.
    """
    bias = bias - bias.mean()
    if diagonal:
        return weight, bias
    k = weight.shape[0]
    off_diagonal_sums = weight.sum(dim=0) - torch.diagonal(weight)
    return weight - off_diagonal_sums / (k - 1), bias


def fit_affine(
    objective: AffineObjective,
    start_weight: Tensor,
    start_bias: Tensor,
    *,
    tol: float,
    max_iter: int,
    method: str = "auto",
) -> AffineFit:
    """Minimise ``objective`` from ``(start_weight, start_bias)``.

    ``method="auto"`` picks Newton's method when the Hessian is cheap (see
    :data:`NEWTON_MAX_PARAMETERS`, :data:`NEWTON_MAX_WORK`), else LBFGS.
    """
    theta = objective.to_standardised(start_weight, start_bias)
    if method == "auto":
        n = objective.n_parameters
        cheap = n <= NEWTON_MAX_PARAMETERS and objective.n_samples * n * n <= NEWTON_MAX_WORK
        method = "newton" if cheap else "lbfgs"
    solve = _newton if method == "newton" else _lbfgs
    theta, iterations = solve(objective, theta, tol=tol, max_iter=max_iter)
    value, grad, _ = objective.evaluate(theta)
    weight, bias = canonical(*objective.to_original(theta), diagonal=objective.diagonal)
    return AffineFit(
        weight=weight,
        bias=bias,
        objective=value,
        iterations=iterations,
        converged=float(grad.abs().max()) <= tol,
        method=method,
        unbounded=objective.unbounded(theta),
    )


def _newton(
    objective: AffineObjective, theta: Tensor, *, tol: float, max_iter: int
) -> tuple[Tensor, int]:
    """Damped Newton: Cholesky-solved steps, backtracking (Armijo) line search."""
    for iteration in range(max_iter):
        value, grad, hess = objective.evaluate(theta, hessian=True)
        if float(grad.abs().max()) <= tol:
            return theta, iteration
        assert hess is not None
        g = grad.flatten()
        step = -_solve_positive(hess, g).view_as(theta)
        slope = float((g * step.flatten()).sum())
        if not slope < 0:
            return theta, iteration
        size = 1.0
        for _ in range(60):
            trial = theta + size * step
            if objective.value(trial) <= value + 1e-4 * size * slope:
                break
            size /= 2
        else:
            return theta, iteration  # no decrease representable in float64: stop here
        theta = trial
    return theta, max_iter


def _solve_positive(matrix: Tensor, vector: Tensor) -> Tensor:
    """``matrix^-1 vector`` for a positive semi-definite matrix, by Cholesky with a jitter.

    The jitter starts at ``NEWTON_RCOND`` of the largest diagonal entry and grows until the
    factorisation succeeds; it only matters along (near-)flat directions, along which the
    gradient has no component. (Cholesky rather than an eigendecomposition: much cheaper, and
    multi-threaded ``eigh`` can be very slow on a busy CPU.)
    """
    eye = torch.eye(matrix.shape[0], dtype=matrix.dtype, device=matrix.device)
    jitter = NEWTON_RCOND * max(float(matrix.diagonal().abs().max()), 1e-300)
    for _ in range(12):
        factor, info = torch.linalg.cholesky_ex(matrix + jitter * eye)
        if int(info) == 0:
            return torch.cholesky_solve(vector[:, None], factor).squeeze(1)
        jitter *= 100.0
    raise RuntimeError("the Hessian could not be factorised; it is not positive semi-definite")


def _lbfgs(
    objective: AffineObjective, theta: Tensor, *, tol: float, max_iter: int, history: int = 20
) -> tuple[Tensor, int]:
    """L-BFGS preconditioned by the Hessian's per-class blocks, with a line search on
    directional derivatives only.

    Near the optimum the objective's decrease per step falls below float64 resolution long
    before the gradient reaches a tight tolerance, which stalls line searches that compare
    function values (Armijo). The objective is convex, so the derivative along the search
    direction, ``phi'(t) = grad(theta + t d) . d``, increases with ``t``: a step with
    ``0.9 phi'(0) <= phi'(t) <= 0`` (the curvature condition, short of the minimiser along the
    line) decreases the objective and keeps ``s . y > 0``, and can be found from gradients alone.
    """
    objective.projected = True
    precondition = _preconditioner(objective, theta)
    _, grad, _ = objective.evaluate(theta)
    pairs: list[tuple[Tensor, Tensor, float]] = []
    iterations = 0
    while iterations < max_iter and float(grad.abs().max()) > tol:
        direction = -_two_loop(grad, pairs, precondition)
        slope = float((grad * direction).sum())
        if not slope < 0:  # lost descent to rounding: restart from the preconditioned gradient
            pairs.clear()
            direction = -precondition(grad)
            slope = float((grad * direction).sum())
        step = _line_search(objective, theta, direction, slope)
        if step is None:
            break
        new_theta, new_grad = step
        s, y = new_theta - theta, new_grad - grad
        curvature = float((s * y).sum())
        if curvature > 0:
            pairs.append((s, y, 1.0 / curvature))
            del pairs[:-history]
        theta, grad = new_theta, new_grad
        iterations += 1
    objective.projected = False
    weight, bias = objective.to_original(theta)
    return objective.to_standardised(
        *canonical(weight, bias, diagonal=objective.diagonal)
    ), iterations


def _preconditioner(objective: AffineObjective, theta: Tensor) -> Callable[[Tensor], Tensor]:
    """The inverse of the Hessian's per-class blocks at ``theta`` (its diagonal if too large).

    Each class's own block captures what makes these problems ill-conditioned: rare classes
    (little curvature) and correlated inputs weighted by where the class is likely.
    """
    k, width = objective.n_classes, objective.width
    size = k * width * width
    if size <= BLOCK_MAX_ELEMENTS and objective.n_samples * size <= BLOCK_MAX_WORK:
        blocks = objective.hessian_blocks(theta)
        eye = torch.eye(width, dtype=blocks.dtype, device=blocks.device)
        largest = blocks.diagonal(dim1=1, dim2=2).abs().amax(dim=1).clamp_min(1e-300)
        factors, info = torch.linalg.cholesky_ex(
            blocks + NEWTON_RCOND * largest[:, None, None] * eye
        )
        if not bool((info != 0).any()):
            return lambda q: torch.cholesky_solve(q[:, :, None], factors).squeeze(2)
    diagonal = objective.hessian_diagonal(theta).clamp_min(1e-12)
    return lambda q: q / diagonal


def _two_loop(
    grad: Tensor,
    pairs: list[tuple[Tensor, Tensor, float]],
    precondition: Callable[[Tensor], Tensor],
) -> Tensor:
    """The L-BFGS inverse-Hessian approximation applied to ``grad``."""
    q = grad.clone()
    alphas = []
    for s, y, rho in reversed(pairs):
        alpha = rho * float((s * q).sum())
        q -= alpha * y
        alphas.append(alpha)
    if pairs:
        s, y, _ = pairs[-1]
        gamma = float((s * y).sum()) / float((y * precondition(y)).sum())
    else:
        gamma = 1.0
    r = gamma * precondition(q)
    for (s, y, rho), alpha in zip(pairs, reversed(alphas), strict=True):
        r += (alpha - rho * float((y * r).sum())) * s
    return r


def _line_search(
    objective: AffineObjective, theta: Tensor, direction: Tensor, slope: float
) -> tuple[Tensor, Tensor] | None:
    """A step along ``direction`` with ``0.9 slope <= phi'(t) <= 0`` (see :func:`_lbfgs`).

    Brackets the target by doubling ``t`` from 1, then narrows it by safeguarded secant steps
    on ``phi'``. Returns the new point and its gradient, or ``None`` if no step was found.
    """
    low, low_slope = 0.0, slope
    high, high_slope = float("inf"), 0.0
    t = 1.0
    best: tuple[Tensor, Tensor] | None = None
    for _ in range(60):
        point = theta + t * direction
        _, grad, _ = objective.evaluate(point)
        trial = float((grad * direction).sum())
        if 0.9 * slope <= trial <= 0:
            return point, grad
        if trial < 0:  # still descending steeply: the step may grow
            low, low_slope, best = t, trial, (point, grad)
        else:  # past the minimiser along the line
            high, high_slope = t, trial
        if high == float("inf"):
            t *= 2.0
        else:
            secant = low - low_slope * (high - low) / (high_slope - low_slope)
            margin = 0.1 * (high - low)
            t = min(max(secant, low + margin), high - margin)
    return best  # a shorter step that still descends, if any
