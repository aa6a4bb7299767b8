"""Gaussian radial descriptor: smooth per-atom features from Gaussians on the neighbour distances.

    q_k(i) = sum_{j in N(i)} w[s_i, s_j, k] exp(-(r_ij - mu_k)^2 / (2 sigma^2)) f_c(r_ij)

with centres mu_k evenly spaced in [r_min, r_c], a common width sigma, learnable weights per
(centre element, neighbour element, k) and the cosine cutoff f_c(r) = (1 + cos(pi r / r_c)) / 2,
which takes the features and their first derivatives smoothly to zero at r_c (the contract).
"""

from __future__ import annotations

import torch
from torch import nn

from mlip_plugins.graph import AtomicGraph
from mlip_plugins.nn import cosine_cutoff, sum_per_atom  # shared building blocks: reuse, do not rewrite


class GaussianDescriptor(nn.Module):
    """Per-atom Gaussian radial features of dimension ``num_gaussians``.

    Args:
        num_species: number of elements of the model (injected by the model builder).
        cutoff: radial cutoff in Å (injected from the model's cutoff unless set).
        num_gaussians: number of Gaussian centres (the feature dimension).
        r_min: first centre in Å.
        width: Gaussian width in Å; ``None`` uses the spacing between centres.
        per_pair: learn a weight per (centre element, neighbour element, k), else per k only.
    """

    supports_compile = True
    conformance_config = {"num_gaussians": 6}

    def __init__(
        self,
        num_species: int,
        cutoff: float = 5.0,
        num_gaussians: int = 8,
        r_min: float = 1.5,
        width: float | None = None,
        per_pair: bool = True,
    ):
        super().__init__()
        if num_gaussians < 1:
            raise ValueError(f"gaussian descriptor: num_gaussians must be >= 1, got {num_gaussians}")
        if not 0 <= r_min < cutoff:
            raise ValueError(f"gaussian descriptor: need 0 <= r_min < cutoff, got r_min={r_min}, cutoff={cutoff}")
        self.cutoff = float(cutoff)
        self.dim = int(num_gaussians)
        self.per_pair = bool(per_pair)
        centres = torch.linspace(float(r_min), self.cutoff, self.dim)
        spacing = (self.cutoff - float(r_min)) / max(self.dim - 1, 1)
        self.register_buffer("centres", centres)
        self.width = float(width) if width is not None else spacing
        pairs = num_species if self.per_pair else 1
        self.weights = nn.Parameter(1.0 + 0.1 * torch.randn(pairs, pairs, self.dim))

    def forward(self, graph: AtomicGraph) -> torch.Tensor:
        src, dst = graph.edge_index[0], graph.edge_index[1]
        r = graph.edge_len.unsqueeze(-1)
        gaussians = torch.exp(-0.5 * ((r - self.centres) / self.width) ** 2)
        radial = gaussians * cosine_cutoff(graph.edge_len, self.cutoff).unsqueeze(-1)
        if self.per_pair:
            weights = self.weights[graph.species[dst], graph.species[src]]
        else:
            weights = self.weights[0, 0].expand_as(radial)
        return sum_per_atom(radial * weights, dst, graph.num_atoms)

    def extra_repr(self) -> str:
        return f"cutoff={self.cutoff}, num_gaussians={self.dim}, width={self.width:.3f}, per_pair={self.per_pair}"
