"""Radial two-body descriptor (NEP's radial part) as a torch-geometric ``MessagePassing`` module.

q_n(i) = sum_{j in N(i)} g_n(r_ij),  g_n(r) = sum_k c[s_i, s_j, n, k] f_k(r),
with f_k NEP's Chebyshev basis times a smooth cosine cutoff (:func:`mlip_plugins.nn.chebyshev_basis`).
"""

from __future__ import annotations

import torch
from torch_geometric.nn import MessagePassing

from mlip_plugins.descriptors.basis import PairCoefficients
from mlip_plugins.graph import AtomicGraph
from mlip_plugins.nn import chebyshev_basis


class RadialDescriptor(MessagePassing):
    """Per-atom radial features of dimension ``n_max + 1``.

    Args:
        num_species: number of elements the model knows (injected by the model builder).
        cutoff: radial cutoff in Å.
        n_max: highest radial channel index (``n_max + 1`` features).
        basis_size: highest Chebyshev order of the basis.
        per_pair: one coefficient table per ordered element pair (NEP); False shares one
            table across all pairs (for very small models).
    """

    def __init__(self, num_species: int, cutoff: float = 5.0, n_max: int = 7, basis_size: int = 7, per_pair: bool = True):
        super().__init__(aggr="sum", flow="source_to_target")
        self.cutoff = float(cutoff)
        self.n_max = int(n_max)
        self.basis_size = int(basis_size)
        self.dim = self.n_max + 1
        self.per_pair = bool(per_pair)
        self.pair_coefficients = PairCoefficients(num_species if self.per_pair else 1, self.n_max, self.basis_size)

    def forward(self, graph: AtomicGraph) -> torch.Tensor:
        src, dst = graph.edge_index[0], graph.edge_index[1]
        basis = chebyshev_basis(graph.edge_len, self.cutoff, self.basis_size)
        if self.per_pair:
            radial = self.pair_coefficients(basis, graph.species[dst], graph.species[src])
        else:
            zeros = torch.zeros_like(dst)
            radial = self.pair_coefficients(basis, zeros, zeros)
        return self.propagate(graph.edge_index, radial=radial, size=(graph.num_atoms, graph.num_atoms))

    def message(self, radial: torch.Tensor) -> torch.Tensor:
        return radial

    def extra_repr(self) -> str:
        return f"cutoff={self.cutoff}, n_max={self.n_max}, basis_size={self.basis_size}"
