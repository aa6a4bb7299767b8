"""Per-element readouts: features [N, D] -> per-atom energies [N] (group ``mlip_plugins.readouts``).

Contract: ``Readout(in_dim=D, num_species=S, **config)``; ``forward(features, graph)``
returns [N] energies, or a dict with ``"energy"`` [N] and optional extras (``"aux_loss"``).
"""

from __future__ import annotations

import torch
from torch import nn

from mlip_plugins.graph import AtomicGraph

ACTIVATIONS = {"silu": nn.SiLU, "tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU, "softplus": nn.Softplus}


def activation(name: str) -> nn.Module:
    """An activation module by name, with the list of known names if unknown."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; known: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class PerElementLinear(nn.Module):
    """A dense layer with one weight matrix per element: y = x W[s] + b[s].

    Evaluated by one matrix product per element present (atoms grouped by element), so
    the cost is that of a single dense layer.
    """

    def __init__(self, in_dim: int, out_dim: int, num_species: int, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_species, in_dim, out_dim) / in_dim**0.5)
        self.bias = nn.Parameter(torch.zeros(num_species, out_dim)) if bias else None

    def forward(self, x: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        out = x.new_zeros(x.shape[0], self.weight.shape[-1])
        for s in range(self.weight.shape[0]):
            index = (species == s).nonzero().view(-1)
            y = x.index_select(0, index) @ self.weight[s]
            if self.bias is not None:
                y = y + self.bias[s]
            out = out.index_copy(0, index, y)
        return out


class LinearReadout(nn.Module):
    """E_i = theta[s_i] . psi_i (+ b[s_i]): the linear readout of the composable-model paper."""

    def __init__(self, in_dim: int, num_species: int, bias: bool = False):
        super().__init__()
        self.layer = PerElementLinear(in_dim, 1, num_species, bias=bias)
        nn.init.normal_(self.layer.weight, std=0.01)

    def forward(self, features: torch.Tensor, graph: AtomicGraph) -> torch.Tensor:
        return self.layer(features, graph.species).squeeze(-1)


class MLPReadout(nn.Module):
    """A per-element multilayer perceptron E_i = MLP_{s_i}(psi_i)."""

    def __init__(self, in_dim: int, num_species: int, hidden: list[int] | tuple[int, ...] = (32, 32), activation_name: str = "silu", **kwargs):
        super().__init__()
        activation_name = kwargs.pop("activation", activation_name)
        if kwargs:
            raise TypeError(f"MLPReadout got unexpected options: {', '.join(kwargs)}")
        widths = [in_dim, *[int(h) for h in hidden], 1]
        self.layers = nn.ModuleList(
            PerElementLinear(a, b, num_species, bias=True) for a, b in zip(widths[:-1], widths[1:])
        )
        self.act = activation(activation_name)

    def forward(self, features: torch.Tensor, graph: AtomicGraph) -> torch.Tensor:
        x = features
        for k, layer in enumerate(self.layers):
            x = layer(x, graph.species)
            if k < len(self.layers) - 1:
                x = self.act(x)
        return x.squeeze(-1)
