"""Top-k eigenpairs of a symmetric positive semi-definite operator given only ``v -> A v``.

The Lanczos iteration builds an orthonormal Krylov basis Q and the tridiagonal T = QᵀAQ;
the extreme eigenvalues of T (Ritz values) converge to those of A first. Sloppy spectra
span many decades, so orthogonality is kept by full re-orthogonalisation (twice, "twice is
enough"); the basis is small (a few times k vectors), so this costs little next to the
Jacobian-vector products of the Fisher operator.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class LanczosResult:
    """Ritz pairs, largest first.

    Attributes:
        eigenvalues: [k] Ritz values (descending).
        eigenvectors: [n, k] Ritz vectors (orthonormal columns).
        residual_norms: [k] ‖A x - θ x‖ of each Ritz pair (an a-posteriori error bound).
        iterations: Krylov dimension reached.
        converged: whether every returned pair meets the tolerance.
    """

    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor
    residual_norms: torch.Tensor
    iterations: int
    converged: bool


def lanczos_topk(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    dim: int,
    k: int,
    max_iter: int | None = None,
    tol: float = 1e-8,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> LanczosResult:
    """The ``k`` largest eigenpairs of a symmetric operator of size ``dim``.

    Args:
        matvec: ``v -> A v`` for a [dim] vector.
        max_iter: largest Krylov dimension (default ``min(dim, max(2k + 20, 40))``).
        tol: relative tolerance on the Ritz residual ‖A x - θ x‖ / θ_max, checked every few steps.
    """
    k = min(int(k), dim)
    if k <= 0:
        raise ValueError("k must be positive")
    max_iter = min(dim, max_iter or max(2 * k + 20, 40))
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(dim, generator=generator, dtype=dtype).to(device)
    q = q / q.norm()
    basis = [q]
    alphas: list[float] = []
    betas: list[float] = []
    ritz_values = ritz_vectors = residuals = None
    converged = False
    for step in range(max_iter):
        w = matvec(basis[-1])
        alpha = float(w @ basis[-1])
        alphas.append(alpha)
        Q = torch.stack(basis, 1)
        for _ in range(2):  # full re-orthogonalisation, twice
            w = w - Q @ (Q.T @ w)
        beta = float(w.norm())
        size = len(alphas)
        check = size >= k and (size % 5 == 0 or size == max_iter or beta < 1e-300)
        if check or step == max_iter - 1 or beta <= 1e-12 * max(abs(a) for a in alphas):
            T = torch.diag(torch.tensor(alphas, dtype=dtype))
            if size > 1:
                off = torch.tensor(betas[: size - 1], dtype=dtype)
                T = T + torch.diag(off, 1) + torch.diag(off, -1)
            theta, S = torch.linalg.eigh(T)
            order = torch.argsort(theta, descending=True)[:k]
            theta, S = theta[order], S[:, order]
            # residual of Ritz pair i is |beta * S[last, i]|
            residuals = (beta * S[-1, :]).abs()
            ritz_values = theta
            ritz_vectors = Q @ S.to(Q.device)
            scale = max(float(theta.abs().max()), 1e-300)
            if size >= k and bool((residuals <= tol * scale).all()):
                converged = True
                break
            if beta <= 1e-12 * scale or size == dim:  # invariant subspace found: exact
                converged = True
                break
        if beta <= 1e-300:
            break
        betas.append(beta)
        basis.append(w / beta)
    return LanczosResult(ritz_values, ritz_vectors, residuals, len(alphas), converged)
