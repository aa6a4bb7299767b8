"""Shared neural-network building blocks: reuse these instead of writing your own.

* :mod:`.activations`: :func:`activation` (a module by name) and :data:`ACTIVATIONS`.
* :mod:`.linear`: :class:`PerElementLinear`, a dense layer with one weight matrix per element, and
  :func:`per_element`, the grouping of atoms by element under it (NEP's per-element networks use it).
* :mod:`.mlp`: :class:`MLP`, a multilayer perceptron, shared (``nn.Linear``) or per element.
* :mod:`.radial`: :func:`cosine_cutoff`, :func:`cosine_switch` and :func:`chebyshev_basis` (NEP's /
  GPUMD's radial basis).
* :mod:`.segments`: :func:`sum_per_structure`, :func:`mean_per_structure` (per-atom values ->
  per structure) and :func:`sum_per_atom` (per-edge values -> per centre atom).
"""

from mlip_plugins.nn.activations import ACTIVATIONS, activation
from mlip_plugins.nn.linear import PerElementLinear, per_element
from mlip_plugins.nn.mlp import MLP
from mlip_plugins.nn.radial import chebyshev_basis, cosine_cutoff, cosine_switch
from mlip_plugins.nn.segments import mean_per_structure, sum_per_atom, sum_per_structure

__all__ = [
    "ACTIVATIONS",
    "MLP",
    "PerElementLinear",
    "activation",
    "chebyshev_basis",
    "cosine_cutoff",
    "cosine_switch",
    "mean_per_structure",
    "per_element",
    "sum_per_atom",
    "sum_per_structure",
]
