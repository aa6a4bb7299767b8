"""Per-element evaluation: a dense layer with one weight matrix per element, and the grouping under it."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def per_element(fn: Callable[[int, torch.Tensor], torch.Tensor], x: torch.Tensor, species: torch.Tensor, num_species: int) -> torch.Tensor:
    """out[i] = fn(s_i, x[i]), evaluated as one call ``fn(s, rows of element s)`` per element.

    Grouping the atoms by element turns S small per-atom products into S dense ones (the cost
    of a single dense layer); ``fn`` returns [n_s, ...] for the n_s rows it gets.
    """
    out = None
    for s in range(num_species):
        index = (species == s).nonzero().view(-1)
        y = fn(s, x.index_select(0, index))
        if out is None:
            out = y.new_zeros((x.shape[0], *y.shape[1:]))
        out = out.index_copy(0, index, y)
    return out


class PerElementLinear(nn.Module):
    """y = x W[s] + b[s] for an atom of element s: weight [S, in, out], bias [S, out].

    Evaluated by one matrix product per element (:func:`per_element`). Initialisation:
    W ~ N(0, 1/in), b = 0 (torch's global RNG).
    """

    def __init__(self, in_dim: int, out_dim: int, num_species: int, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_species, in_dim, out_dim) / in_dim**0.5)
        self.bias = nn.Parameter(torch.zeros(num_species, out_dim)) if bias else None

    def forward(self, x: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        """x [N, in], species [N] (element index of each row) -> [N, out]."""
        return per_element(self._element, x, species, self.weight.shape[0])

    def _element(self, s: int, x: torch.Tensor) -> torch.Tensor:
        y = x @ self.weight[s]
        return y if self.bias is None else y + self.bias[s]
