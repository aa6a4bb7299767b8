"""Message-passing refinement: T interaction layers on top of any descriptor's features.

The base descriptor (any registered one, configured under ``base``) gives h^0 [N, D]. Each
interaction layer t = 1..T (a torch-geometric ``MessagePassing``) updates

    m_i   = sum_{j in N(i)} W_t(f(r_ij)) * (V_t h_j)           (continuous filter, SchNet-like)
    h_i  <- h_i + U_t act(S_t h_i + m_i)                        (residual update)

where f(r) is NEP's Chebyshev basis times the cosine cutoff, so every message and its slope
vanish at the cutoff. Messages depend only on distances and scalar features, so the output is
invariant to rotations, translations and permutations; after T layers an atom sees
neighbours up to T cutoffs away (the neighbour list itself is not enlarged).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch_geometric.nn import MessagePassing

from mlip_plugins.graph import AtomicGraph
from mlip_plugins.nn import activation as make_activation
from mlip_plugins.nn import chebyshev_basis


class InteractionLayer(MessagePassing):
    """One residual continuous-filter interaction: h_i + U act(S h_i + sum_j W(f(r_ij)) * V h_j)."""

    def __init__(self, width: int, num_basis: int, activation_name: str = "silu"):
        super().__init__(aggr="sum", flow="source_to_target")
        self.filter = nn.Linear(num_basis, width, bias=False)
        self.neighbor = nn.Linear(width, width, bias=False)
        self.self_interaction = nn.Linear(width, width)
        self.output = nn.Linear(width, width)
        self.act = make_activation(activation_name)

    def forward(self, h: torch.Tensor, edge_index: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
        messages = self.propagate(edge_index, x=self.neighbor(h), weight=self.filter(basis), size=(h.shape[0], h.shape[0]))
        return h + self.output(self.act(self.self_interaction(h) + messages))

    def message(self, x_j: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return weight * x_j


class MessagePassingRefinement(nn.Module):
    """Refine a base descriptor's per-atom features with ``layers`` interaction layers.

    Args:
        num_species: number of elements (injected by the builder; passed on to the base).
        cutoff: cutoff of the interaction filters in Å (the base gets it too unless it sets its own).
        base: config of the base descriptor, ``{name: radial, ...}``.
        layers: number of interaction layers T (0 returns the base features, linearly mapped if
            ``width`` differs).
        width: feature width of the layers and of the output (default: the base's ``dim``).
        basis_size: highest Chebyshev order of the filter basis.
        activation: nonlinearity of the updates (smooth ones keep forces smooth: silu, tanh).
    """

    def __init__(
        self,
        num_species: int,
        cutoff: float = 5.0,
        base: Mapping | None = None,
        layers: int = 2,
        width: int | None = None,
        basis_size: int = 6,
        activation: str = "silu",
    ):
        super().__init__()
        from mlip_plugins.models.builder import build  # late: the builder imports the descriptors' registry

        base_spec = dict(base) if base is not None else {"name": "radial"}
        self.base = build(
            "descriptors", base_spec, "message_passing.base", num_species=num_species, cutoff=cutoff
        )
        self.filter_cutoff = float(cutoff)
        self.cutoff = max(self.filter_cutoff, float(self.base.cutoff))
        self.basis_size = int(basis_size)
        base_dim = int(self.base.dim)
        self.dim = int(width) if width is not None else base_dim
        self.embed = nn.Linear(base_dim, self.dim, bias=False) if self.dim != base_dim else nn.Identity()
        self.layers = nn.ModuleList(InteractionLayer(self.dim, self.basis_size + 1, activation) for _ in range(int(layers)))

    def forward(self, graph: AtomicGraph) -> torch.Tensor:
        h = self.embed(self.base(graph))
        if len(self.layers) == 0:
            return h
        basis = chebyshev_basis(graph.edge_len, self.filter_cutoff, self.basis_size)
        for layer in self.layers:
            h = layer(h, graph.edge_index, basis)
        return h

    def extra_repr(self) -> str:
        return f"filter_cutoff={self.filter_cutoff}, layers={len(self.layers)}, width={self.dim}"
