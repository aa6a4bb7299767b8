"""EAM-like descriptor: learned pair densities passed through fixed nonlinear embedding functions.

The embedded-atom method writes E_i = F_{s_i}(rho_i) + pair terms, with a density
rho_i = sum_j f(r_ij). Here each atom gets ``n_densities`` densities

    rho_n(i) = sum_{j in N(i)} g_n(r_ij)^2,     g_n(r) = sum_k c[s_i, s_j, n, k] f_k(r)

(squared so that every density is non-negative; smooth at the cutoff because f_k is), and the
features are fixed embedding functions of each density (``eps`` keeps them smooth at rho = 0):

    ``sqrt``         sqrt(rho + eps) - sqrt(eps)   Finnis-Sinclair / second-moment embedding
    ``linear``       rho                           a pair potential sum_j g_n^2
    ``square``       rho^2
    ``rho_log_rho``  rho log(rho + eps)            the "universal" embedding shape

With the linear readout, E_i = sum_{n,a} theta[s_i, n, a] F_a(rho_n(i)) is an EAM whose embedding
is expanded in these functions (the ``linear`` column is its pair term); with the MLP readout the
embedding itself is learned from the densities.
"""

from __future__ import annotations

import torch
from torch import nn

from mlip_plugins.descriptors.angular import SpeciesRadialFunctions
from mlip_plugins.graph import AtomicGraph
from mlip_plugins.nn import sum_per_atom


def _sqrt(rho: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.sqrt(rho + eps) - eps**0.5


def _linear(rho: torch.Tensor, eps: float) -> torch.Tensor:
    return rho


def _square(rho: torch.Tensor, eps: float) -> torch.Tensor:
    return rho * rho


def _rho_log_rho(rho: torch.Tensor, eps: float) -> torch.Tensor:
    return rho * torch.log(rho + eps)


EMBEDDINGS = {"sqrt": _sqrt, "linear": _linear, "square": _square, "rho_log_rho": _rho_log_rho}


class EAMDescriptor(nn.Module):
    """Features F_a(rho_n(i)), ordered density-major: column n * len(embeddings) + a.

    Args:
        num_species: number of elements (injected by the builder).
        cutoff: cutoff of the density functions in Å.
        n_densities: number of learned densities per atom.
        basis_size: highest Chebyshev order of the density functions.
        embeddings: names from ``EMBEDDINGS`` applied to every density.
        eps: regulariser of ``sqrt`` and ``rho_log_rho`` at rho = 0.
        per_pair: one coefficient table per ordered element pair, or one shared table.
    """

    def __init__(
        self,
        num_species: int,
        cutoff: float = 5.0,
        n_densities: int = 2,
        basis_size: int = 5,
        embeddings: list[str] | tuple[str, ...] = ("sqrt", "linear", "square"),
        eps: float = 1e-2,
        per_pair: bool = True,
    ):
        super().__init__()
        unknown = [name for name in embeddings if name not in EMBEDDINGS]
        if unknown or not embeddings:
            raise ValueError(f"eam descriptor: unknown embeddings {unknown or embeddings}; known: {', '.join(EMBEDDINGS)}")
        if int(n_densities) < 1:
            raise ValueError(f"eam descriptor: n_densities must be >= 1, got {n_densities}")
        if float(eps) <= 0:
            raise ValueError(f"eam descriptor: eps must be > 0, got {eps}")
        self.cutoff = float(cutoff)
        self.n_densities = int(n_densities)
        self.embeddings = [str(name) for name in embeddings]
        self.eps = float(eps)
        self.radial = SpeciesRadialFunctions(num_species, self.cutoff, self.n_densities - 1, basis_size, per_pair)
        self.dim = self.n_densities * len(self.embeddings)

    def densities(self, graph: AtomicGraph) -> torch.Tensor:
        """rho_n(i) = sum_j g_n(r_ij)^2: [N, n_densities]."""
        g = self.radial(graph)
        squares = g * g
        return sum_per_atom(squares, graph.edge_index[1], graph.num_atoms)

    def forward(self, graph: AtomicGraph) -> torch.Tensor:
        rho = self.densities(graph)
        features = torch.stack([EMBEDDINGS[name](rho, self.eps) for name in self.embeddings], dim=-1)
        return features.flatten(1)

    def extra_repr(self) -> str:
        return f"cutoff={self.cutoff}, n_densities={self.n_densities}, embeddings={self.embeddings}, eps={self.eps}"
