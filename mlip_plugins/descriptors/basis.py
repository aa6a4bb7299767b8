"""Per element pair radial coefficients shared by the radial, angular and EAM descriptors.

The basis they multiply (NEP's Chebyshev basis times the cosine cutoff) is
:func:`mlip_plugins.nn.chebyshev_basis`.
"""

from __future__ import annotations

import torch


class PairCoefficients(torch.nn.Module):
    """Learnable c[n, k] for every ordered element pair (centre, neighbour), as in NEP.

    g_n(r_ij) = sum_k c[s_i, s_j, n, k] f_k(r_ij),  initially c ~ scale * U(-0.5, 0.5).

    The initial values come from torch's global RNG, so the run's seed (``L.seed_everything``,
    ``torch.manual_seed``) decides them: different seeds, different initialisations.
    """

    def __init__(self, num_species: int, n_max: int, basis_size: int, scale: float = 1.0):
        super().__init__()
        shape = (num_species, num_species, n_max + 1, basis_size + 1)
        init = torch.rand(shape, dtype=torch.get_default_dtype()) - 0.5
        self.coefficients = torch.nn.Parameter(scale * init)
        self.num_species = num_species

    def forward(self, basis: torch.Tensor, center_species: torch.Tensor, neighbor_species: torch.Tensor) -> torch.Tensor:
        """basis [E, K+1] -> radial functions g [E, n_max+1]."""
        pair = center_species * self.num_species + neighbor_species
        coeff = self.coefficients.flatten(0, 1)[pair]  # [E, n_max+1, K+1]
        return torch.einsum("ek,enk->en", basis, coeff)
