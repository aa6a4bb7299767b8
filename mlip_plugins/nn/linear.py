"""A dense layer with one weight matrix per element (readouts, charge heads, feature charges)."""

from __future__ import annotations

import torch
from torch import nn


class PerElementLinear(nn.Module):
    """y = x W[s] + b[s] for an atom of element s: weight [S, in, out], bias [S, out].

    Evaluated by one matrix product per element (atoms grouped by element), so the cost is
    that of a single dense layer. Initialisation: W ~ N(0, 1/in), b = 0 (torch's global RNG).
    """

    def __init__(self, in_dim: int, out_dim: int, num_species: int, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_species, in_dim, out_dim) / in_dim**0.5)
        self.bias = nn.Parameter(torch.zeros(num_species, out_dim)) if bias else None

    def forward(self, x: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        """x [N, in], species [N] (element index of each row) -> [N, out]."""
        out = x.new_zeros(x.shape[0], self.weight.shape[-1])
        for s in range(self.weight.shape[0]):
            index = (species == s).nonzero().view(-1)
            y = x.index_select(0, index) @ self.weight[s]
            if self.bias is not None:
                y = y + self.bias[s]
            out = out.index_copy(0, index, y)
        return out
