"""Per-atom feature router: gates from each atom's local features (and its element).

The gates follow the atom's environment, so they change as atoms move. With dense soft
gating (``top_k: null``, the default) the gates are smooth functions of the features and
the energy stays smooth. With hard top-k the selected experts switch at the points where two
router scores cross, and the energy jumps there (see ``tests/moe/test_moe_smoothness.py``): this
is the instability the MoE paper reports for geometry-dependent ("global") routing.
"""

from __future__ import annotations

import torch
from torch import nn

from mlip_plugins.graph import AtomicGraph
from mlip_plugins.nn import MLP
from mlip_plugins.moe.routers.gating import RouterOutput, effective_top_k, select_top_k


class FeatureRouter(nn.Module):
    """Per-atom gates [N, E] from features [N, D].

    Args:
        num_experts: routed experts E.
        num_species: elements S.
        in_dim: feature width D.
        top_k: ``None`` (default) for soft gating over all experts; an integer for hard top-k
            (discontinuous energies; for ablations only).
        hidden: hidden width of the router MLP (0 for a linear router).
        embedding_dim: width of an element embedding concatenated to the features (0: none).
        normalize: apply a LayerNorm to the features first (features can be large).
        temperature: softmax temperature.
    """

    element_wise = False

    def __init__(
        self,
        num_experts: int,
        num_species: int,
        in_dim: int,
        top_k: int | None = None,
        hidden: int = 0,
        embedding_dim: int = 0,
        normalize: bool = True,
        temperature: float = 1.0,
        renormalize: bool = True,
    ):
        super().__init__()
        self.num_experts = int(num_experts)
        self.top_k = effective_top_k(top_k, self.num_experts)
        self.temperature = float(temperature)
        self.renormalize = bool(renormalize)
        self.norm = nn.LayerNorm(int(in_dim)) if normalize else nn.Identity()
        self.embedding = nn.Parameter(torch.randn(int(num_species), int(embedding_dim))) if embedding_dim else None
        width = int(in_dim) + int(embedding_dim)
        hidden = int(hidden)
        self.score = MLP([width, hidden, self.num_experts] if hidden > 0 else [width, self.num_experts], "silu")

    def logits(self, features: torch.Tensor, graph: AtomicGraph) -> torch.Tensor:
        """[N, E] router scores."""
        x = self.norm(features)
        if self.embedding is not None:
            x = torch.cat([x, self.embedding[graph.species]], dim=-1)
        return self.score(x)

    def route(self, features: torch.Tensor, graph: AtomicGraph) -> RouterOutput:
        return select_top_k(self.logits(features, graph), self.top_k, self.temperature, self.renormalize)

    def forward(self, features: torch.Tensor, graph: AtomicGraph) -> torch.Tensor:
        return self.route(features, graph).gates

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, top_k={self.top_k}"
