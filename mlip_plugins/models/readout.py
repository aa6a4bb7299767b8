"""Per-element readouts: features [N, D] -> per-atom energies [N] (group ``mlip_plugins.readouts``).

Contract: ``Readout(in_dim=D, num_species=S, **config)``; ``forward(features, graph)``
returns [N] energies, or a dict with ``"energy"`` [N] and optional extras (``"aux_loss"``).
"""

from __future__ import annotations

import torch
from torch import nn

from mlip_plugins.graph import AtomicGraph
from mlip_plugins.nn import MLP, PerElementLinear


class LinearReadout(nn.Module):
    """E_i = theta[s_i] . psi_i (+ b[s_i]): the linear readout of the composable-model paper."""

    def __init__(self, in_dim: int, num_species: int, bias: bool = False):
        super().__init__()
        self.layer = PerElementLinear(in_dim, 1, num_species, bias=bias)
        nn.init.normal_(self.layer.weight, std=0.01)

    def forward(self, features: torch.Tensor, graph: AtomicGraph) -> torch.Tensor:
        return self.layer(features, graph.species).squeeze(-1)


class MLPReadout(MLP):
    """A per-element multilayer perceptron E_i = MLP_{s_i}(psi_i) (:class:`mlip_plugins.nn.MLP`)."""

    def __init__(self, in_dim: int, num_species: int, hidden: list[int] | tuple[int, ...] = (32, 32), activation_name: str = "silu", **kwargs):
        activation_name = kwargs.pop("activation", activation_name)
        if kwargs:
            raise TypeError(f"MLPReadout got unexpected options: {', '.join(kwargs)}")
        super().__init__([in_dim, *[int(h) for h in hidden], 1], activation_name, num_species=num_species)

    def forward(self, features: torch.Tensor, graph: AtomicGraph) -> torch.Tensor:
        return super().forward(features, graph.species).squeeze(-1)
