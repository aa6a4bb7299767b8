"""Sums over segments of a batch: per-atom values to structures, per-edge values to atoms.

Two different concepts with the same arithmetic (an ``index_add`` into zeros):

* :func:`sum_per_structure` / :func:`mean_per_structure`: values of atoms [N, ...] summed (or
  averaged) over the atoms of each structure, with ``batch`` [N] the structure of each atom
  (``AtomicGraph.batch``, a PyG batch's ``batch``): energies, total charges, pooled features.
* :func:`sum_per_atom`: values of edges [E, ...] summed over the edges of each centre atom, with
  ``center = edge_index[1]`` (the data contract): per-atom densities and energies from pairs.
"""

from __future__ import annotations

import torch


def _index_sum(values: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    return values.new_zeros((size, *values.shape[1:])).index_add(0, index, values)


def sum_per_structure(values: torch.Tensor, batch: torch.Tensor, num_structures: int) -> torch.Tensor:
    """[B, ...] sum of per-atom ``values`` [N, ...] over the atoms of each structure (0 for an empty one)."""
    return _index_sum(values, batch, num_structures)


def mean_per_structure(values: torch.Tensor, batch: torch.Tensor, num_structures: int) -> torch.Tensor:
    """[B, ...] mean of per-atom ``values`` [N, ...] over the atoms of each structure (0 for an empty one)."""
    sums = _index_sum(values, batch, num_structures)
    counts = _index_sum(torch.ones_like(batch, dtype=values.dtype), batch, num_structures).clamp(min=1.0)
    return sums / counts.view(-1, *([1] * (values.dim() - 1)))


def sum_per_atom(values: torch.Tensor, center: torch.Tensor, num_atoms: int) -> torch.Tensor:
    """[N, ...] sum of per-edge ``values`` [E, ...] over the edges of each centre atom (``edge_index[1]``)."""
    return _index_sum(values, center, num_atoms)
