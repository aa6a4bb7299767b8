"""One multilayer perceptron for every MLP of the project (readouts, charge heads, routers)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mlip_plugins.nn.activations import activation as make_activation
from mlip_plugins.nn.linear import PerElementLinear


class MLP(nn.Module):
    """x -> L_n(act(... act(L_1(x)))): the activation between layers, none after the last.

    Args:
        widths: ``[in, hidden..., out]`` (two entries: a single linear layer).
        activation: activation name (see :data:`mlip_plugins.nn.ACTIVATIONS`).
        num_species: ``None`` for shared ``nn.Linear`` layers (``forward(x)``); an element count
            for :class:`PerElementLinear` layers, one weight table per element
            (``forward(x, species)``).
        bias: give every layer a bias.

    The layers are ``self.layers[k]`` (state-dict keys ``layers.{k}.weight``/``.bias``).
    """

    def __init__(self, widths: Sequence[int], activation: str = "silu", num_species: int | None = None, bias: bool = True):
        super().__init__()
        widths = [int(w) for w in widths]
        if len(widths) < 2:
            raise ValueError(f"MLP: need at least [in, out] widths, got {widths}")
        self.num_species = None if num_species is None else int(num_species)
        if self.num_species is None:
            layers = (nn.Linear(a, b, bias=bias) for a, b in zip(widths[:-1], widths[1:]))
        else:
            layers = (PerElementLinear(a, b, self.num_species, bias=bias) for a, b in zip(widths[:-1], widths[1:]))
        self.layers = nn.ModuleList(layers)
        self.act = make_activation(activation)

    def forward(self, x: torch.Tensor, species: torch.Tensor | None = None) -> torch.Tensor:
        """x [N, in] (and species [N] for per-element layers) -> [N, out]."""
        last = len(self.layers) - 1
        for k, layer in enumerate(self.layers):
            x = layer(x) if self.num_species is None else layer(x, species)
            if k < last:
                x = self.act(x)
        return x
