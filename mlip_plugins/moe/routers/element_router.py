"""Element-wise router: gates from a learned embedding of each atom's element.

logits[s] = W t_s for a learned element embedding t_s; the gates of atom i are those of its
element s_i. Routing never sees positions, so even hard top-k is exactly constant along any
trajectory: the energy is as smooth as the experts, and forces/stress stay conservative.
Because the gates are a per-element table, the experts can be merged per element into dense
weights (see :meth:`mlip_plugins.moe.layer.MoEMLP.merge`).
"""

from __future__ import annotations

import torch
from torch import nn

from mlip_plugins.graph import AtomicGraph
from mlip_plugins.moe.routers.gating import RouterOutput, effective_top_k, select_top_k


class ElementRouter(nn.Module):
    """Per-element gates [S, E] gathered per atom.

    Args:
        num_experts: routed experts E.
        num_species: elements S of the model.
        in_dim: feature width (unused: routing depends on the element only).
        top_k: active experts per element, ``None`` for dense soft gating.
        embedding_dim: width of the learned element embedding.
        temperature: softmax temperature.
        renormalize: renormalise the kept top-k probabilities.
    """

    element_wise = True

    def __init__(
        self,
        num_experts: int,
        num_species: int,
        in_dim: int = 0,
        top_k: int | None = 2,
        embedding_dim: int = 16,
        temperature: float = 1.0,
        renormalize: bool = True,
    ):
        super().__init__()
        self.num_experts = int(num_experts)
        self.num_species = int(num_species)
        self.top_k = effective_top_k(top_k, self.num_experts)
        self.temperature = float(temperature)
        self.renormalize = bool(renormalize)
        self.embedding = nn.Parameter(torch.randn(self.num_species, int(embedding_dim)))
        self.score = nn.Linear(int(embedding_dim), self.num_experts, bias=False)

    def element_logits(self) -> torch.Tensor:
        """[S, E] router scores of each element."""
        return self.score(self.embedding)

    def element_route(self) -> RouterOutput:
        """Gates and probabilities of each element, [S, E] each."""
        return select_top_k(self.element_logits(), self.top_k, self.temperature, self.renormalize)

    def element_gates(self) -> torch.Tensor:
        """[S, E] gate vector of each element (what the merge and the PCA analysis use)."""
        return self.element_route().gates

    def route(self, features: torch.Tensor, graph: AtomicGraph) -> RouterOutput:
        table = self.element_route()
        return RouterOutput(table.gates[graph.species], table.probs[graph.species])

    def forward(self, features: torch.Tensor, graph: AtomicGraph) -> torch.Tensor:
        return self.route(features, graph).gates

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, num_species={self.num_species}, top_k={self.top_k}"
