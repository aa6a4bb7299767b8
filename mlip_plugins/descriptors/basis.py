"""Radial building blocks shared by descriptors: smooth cutoff and NEP's Chebyshev basis."""

from __future__ import annotations

import math

import torch


def cosine_cutoff(r: torch.Tensor, cutoff: float) -> torch.Tensor:
    """f_c(r) = (1 + cos(pi r / rc)) / 2 for r < rc, else 0: value and slope vanish at rc."""
    inside = r < cutoff
    value = 0.5 * (1.0 + torch.cos(math.pi * r / cutoff))
    return torch.where(inside, value, torch.zeros_like(r))


def chebyshev_basis(r: torch.Tensor, cutoff: float, basis_size: int) -> torch.Tensor:
    """NEP radial basis f_k(r) = (T_k(2 (r/rc - 1)^2 - 1) + 1) / 2 * f_c(r), k = 0..basis_size.

    Returns [E, basis_size + 1]. T_k are Chebyshev polynomials of the first kind.
    """
    x = 2.0 * (r / cutoff - 1.0) ** 2 - 1.0
    polys = [torch.ones_like(x), x]
    for _ in range(2, basis_size + 1):
        polys.append(2.0 * x * polys[-1] - polys[-2])
    t = torch.stack(polys[: basis_size + 1], dim=-1)
    return 0.5 * (t + 1.0) * cosine_cutoff(r, cutoff).unsqueeze(-1)


class PairCoefficients(torch.nn.Module):
    """Learnable c[n, k] for every ordered element pair (centre, neighbour), as in NEP.

    g_n(r_ij) = sum_k c[s_i, s_j, n, k] f_k(r_ij).
    """

    def __init__(self, num_species: int, n_max: int, basis_size: int, scale: float = 1.0):
        super().__init__()
        shape = (num_species, num_species, n_max + 1, basis_size + 1)
        generator = torch.Generator().manual_seed(0)
        init = torch.rand(shape, generator=generator, dtype=torch.get_default_dtype()) - 0.5
        self.coefficients = torch.nn.Parameter(scale * init)
        self.num_species = num_species

    def forward(self, basis: torch.Tensor, center_species: torch.Tensor, neighbor_species: torch.Tensor) -> torch.Tensor:
        """basis [E, K+1] -> radial functions g [E, n_max+1]."""
        pair = center_species * self.num_species + neighbor_species
        coeff = self.coefficients.flatten(0, 1)[pair]  # [E, n_max+1, K+1]
        return torch.einsum("ek,enk->en", basis, coeff)
