"""Three-body angular descriptor (NEP's angular block) from per-atom neighbour moments.

For each centre i, radial channel n and degree l:

    A_nlm(i) = sum_{j in N(i)} g_n(r_ij) Y_lm(r_hat_ij)            (moments, O(neighbours))
    q_nl(i)  = sum_{m=-l..l} A_nlm(i)^2
             = (2l+1)/(4 pi) sum_{j,k in N(i)} g_n(r_ij) g_n(r_ik) P_l(cos theta_jik)

The second line is the addition theorem; the double sum includes j = k, as in NEP. Y_lm are the
orthonormal real harmonics of :mod:`mlip_plugins.descriptors.harmonics`, and
g_n(r) = sum_k c[s_i, s_j, n, k] f_k(r) uses NEP's Chebyshev basis with its own coefficients
(separate from a radial term's). ``normalization="nep"`` keeps the (2l+1)/(4pi) factor (NEP's
q_nl exactly); ``"legendre"`` removes it, so q_nl = sum_jk g g P_l. Cost: one pass over the edges
and one scatter, never a loop over triplets.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mlip_plugins.descriptors.basis import PairCoefficients
from mlip_plugins.descriptors.harmonics import harmonic_slices, real_spherical_harmonics
from mlip_plugins.graph import AtomicGraph
from mlip_plugins.nn import chebyshev_basis, sum_per_atom

NORMALIZATIONS = ("nep", "legendre")


class SpeciesRadialFunctions(nn.Module):
    """g_n(r_ij) = sum_k c[s_i, s_j, n, k] f_k(r_ij), per ordered element pair or shared by all pairs.

    ``per_pair=False`` uses one coefficient table for every pair (S^2 times fewer parameters), for
    models in the tens-of-parameters class.
    """

    def __init__(self, num_species: int, cutoff: float, n_max: int, basis_size: int, per_pair: bool = True):
        super().__init__()
        self.cutoff = float(cutoff)
        self.basis_size = int(basis_size)
        self.per_pair = bool(per_pair)
        self.coefficients = PairCoefficients(num_species if self.per_pair else 1, int(n_max), self.basis_size)

    def forward(self, graph: AtomicGraph) -> torch.Tensor:
        """[E, n_max + 1] radial functions of every edge."""
        basis = chebyshev_basis(graph.edge_len, self.cutoff, self.basis_size)
        if self.per_pair:
            src, dst = graph.edge_index[0], graph.edge_index[1]
            return self.coefficients(basis, graph.species[dst], graph.species[src])
        return basis @ self.coefficients.coefficients[0, 0].transpose(0, 1)


class AngularDescriptor(nn.Module):
    """Per-atom angular features q_nl, ordered l-major like NEP: column (l - l_min) * (n_max + 1) + n.

    Args:
        num_species: number of elements (injected by the builder).
        cutoff: angular cutoff in Å (may be smaller than the model cutoff).
        n_max: highest radial channel (n_max + 1 channels).
        basis_size: highest Chebyshev order of the radial basis.
        l_max: highest degree l (NEP allows up to 8).
        l_min: lowest degree; NEP starts at 1 (l = 0 gives (sum_j g_n)^2 / (4 pi)).
        normalization: ``"nep"`` (sum_m A^2) or ``"legendre"`` (4 pi / (2l + 1) sum_m A^2).
        per_pair: one coefficient table per ordered element pair (NEP) or one shared table.
    """

    def __init__(
        self,
        num_species: int,
        cutoff: float = 4.0,
        n_max: int = 3,
        basis_size: int = 7,
        l_max: int = 4,
        l_min: int = 1,
        normalization: str = "nep",
        per_pair: bool = True,
    ):
        super().__init__()
        if not 0 <= int(l_min) <= int(l_max):
            raise ValueError(f"angular descriptor: need 0 <= l_min <= l_max, got l_min={l_min}, l_max={l_max}")
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"angular descriptor: unknown normalization {normalization!r}; known: {', '.join(NORMALIZATIONS)}")
        self.cutoff = float(cutoff)
        self.n_max = int(n_max)
        self.l_max = int(l_max)
        self.l_min = int(l_min)
        self.normalization = normalization
        self.radial = SpeciesRadialFunctions(num_species, self.cutoff, self.n_max, basis_size, per_pair)
        self.dim = (self.n_max + 1) * (self.l_max - self.l_min + 1)
        if normalization == "legendre":
            self._degree_scale = [4.0 * math.pi / (2 * l + 1) for l in range(self.l_min, self.l_max + 1)]
        else:
            self._degree_scale = [1.0] * (self.l_max - self.l_min + 1)

    def moments(self, graph: AtomicGraph) -> torch.Tensor:
        """A_nlm(i) = sum_j g_n(r_ij) Y_lm(r_hat_ij) for l = l_min..l_max: [N, n_max + 1, (l_max+1)^2 - l_min^2]."""
        g = self.radial(graph)
        unit = graph.edge_vec / graph.edge_len.unsqueeze(-1)
        harmonics = real_spherical_harmonics(unit, self.l_max)[:, self.l_min * self.l_min :]
        per_edge = g.unsqueeze(-1) * harmonics.unsqueeze(1)  # [E, n, H]
        # Scatter a 2-D view: a 3-D CPU index_add takes a much slower scatter path.
        flat = sum_per_atom(per_edge.flatten(1), graph.edge_index[1], graph.num_atoms)
        return flat.view(graph.num_atoms, per_edge.shape[1], per_edge.shape[2])

    def forward(self, graph: AtomicGraph) -> torch.Tensor:
        moments = self.moments(graph)
        squares = moments * moments
        offset = self.l_min * self.l_min
        blocks = [
            scale * squares[..., s.start - offset : s.stop - offset].sum(-1)
            for scale, s in zip(self._degree_scale, harmonic_slices(self.l_max)[self.l_min :])
        ]
        q = torch.stack(blocks, dim=1)  # [N, L, n_max + 1]
        return q.flatten(1)

    def extra_repr(self) -> str:
        return (
            f"cutoff={self.cutoff}, n_max={self.n_max}, l_min={self.l_min}, l_max={self.l_max}, "
            f"normalization={self.normalization!r}, per_pair={self.radial.per_pair}"
        )
