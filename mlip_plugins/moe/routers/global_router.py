"""Global (configuration-level) router: one gate vector per structure, shared by its atoms.

The structure is summarised either by its composition (the mean of learned element
embeddings over its atoms, as UMA's router does) or by the mean of the per-atom features
(``source: features``), or both concatenated. A small MLP maps the summary to logits.

Caveats (why the MoE paper finds global routing worse): composition routing is constant
along a trajectory but not size-extensive (two far-apart copies of different structures
change each other's gates); routing on pooled features is geometry dependent, so with
top-k the selected experts can switch while atoms move and the energy jumps.
"""

from __future__ import annotations

import torch
from torch import nn

from mlip_plugins.graph import AtomicGraph
from mlip_plugins.nn import MLP, mean_per_structure
from mlip_plugins.moe.routers.gating import RouterOutput, effective_top_k, select_top_k

SOURCES = ("composition", "features", "both")


class GlobalRouter(nn.Module):
    """Per-structure gates [B, E], gathered per atom.

    Args:
        num_experts: routed experts E.
        num_species: elements S.
        in_dim: feature width D (used with ``source`` = features or both).
        top_k: active experts per structure, ``None`` for dense soft gating.
        source: ``composition``, ``features`` or ``both``.
        embedding_dim: width of the element embedding used for the composition.
        hidden: width of the router MLP's hidden layer (0 for a linear router).
        temperature: softmax temperature.
    """

    element_wise = False

    def __init__(
        self,
        num_experts: int,
        num_species: int,
        in_dim: int,
        top_k: int | None = 2,
        source: str = "composition",
        embedding_dim: int = 16,
        hidden: int = 32,
        temperature: float = 1.0,
        renormalize: bool = True,
    ):
        super().__init__()
        if source not in SOURCES:
            raise ValueError(f"global router: unknown source {source!r}; known: {', '.join(SOURCES)}")
        self.num_experts = int(num_experts)
        self.top_k = effective_top_k(top_k, self.num_experts)
        self.source = source
        self.temperature = float(temperature)
        self.renormalize = bool(renormalize)
        width = 0
        if source in ("composition", "both"):
            self.embedding = nn.Parameter(torch.randn(int(num_species), int(embedding_dim)))
            width += int(embedding_dim)
        if source in ("features", "both"):
            self.feature_norm = nn.LayerNorm(int(in_dim))
            width += int(in_dim)
        hidden = int(hidden)
        self.score = MLP([width, hidden, self.num_experts] if hidden > 0 else [width, self.num_experts], "silu")

    def structure_route(self, features: torch.Tensor, graph: AtomicGraph) -> RouterOutput:
        """Gates and probabilities of each structure, [B, E] each."""
        parts = []
        if self.source in ("composition", "both"):
            parts.append(mean_per_structure(self.embedding[graph.species], graph.batch, graph.num_graphs))
        if self.source in ("features", "both"):
            parts.append(self.feature_norm(mean_per_structure(features, graph.batch, graph.num_graphs)))
        logits = self.score(torch.cat(parts, dim=-1))
        return select_top_k(logits, self.top_k, self.temperature, self.renormalize)

    def route(self, features: torch.Tensor, graph: AtomicGraph) -> RouterOutput:
        per_structure = self.structure_route(features, graph)
        return RouterOutput(per_structure.gates[graph.batch], per_structure.probs[graph.batch])

    def forward(self, features: torch.Tensor, graph: AtomicGraph) -> torch.Tensor:
        return self.route(features, graph).gates

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, top_k={self.top_k}, source={self.source!r}"
