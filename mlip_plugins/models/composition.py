"""Terms (descriptor + readout) and their combination by sum and product, nested at will.

Every node maps an ``AtomicGraph`` to per-atom energies [N]; ``Sum`` and ``Product``
combine their children atom by atom, so ((A + B) x C) stays local and extensive.
Nodes may also return extras (``aux_loss``, ``charges``); they are merged upward by the rules
declared in :mod:`mlip_plugins.keys` (see :mod:`mlip_plugins.models.outputs`): summed, or an
error when two children produce an output only one may (charges).

A node whose energy has a physical part in eV that must not be rescaled (the Coulomb energy of
charges, the ionisation energy of an atomic-state ensemble) returns that part separately under
``UNSCALED_ENERGY_KEY``: the ``Potential`` multiplies only ``"energy"`` (the learned part, in
units of the training set's force scale) by ``energy_scale`` and then adds the unscaled part.
``Sum`` adds the unscaled parts of its children; ``Product`` refuses them (a product of a
learned energy with a physical energy has no unit-free meaning).
"""

from __future__ import annotations

import torch
from torch import nn

from mlip_plugins import keys
from mlip_plugins.graph import AtomicGraph
from mlip_plugins.models.outputs import NodeOutput, OutputConflictError, split_output

__all__ = ["Product", "Sum", "Term", "UNSCALED_ENERGY_KEY", "node_name", "split_output"]


#: extra output key: per-atom energy [N] in eV that the ``Potential`` adds after scaling
UNSCALED_ENERGY_KEY = keys.ATOMIC_ENERGY_UNSCALED


def node_name(node: nn.Module) -> str:
    """The name a node reports in messages and parameter counts (its ``name`` or class)."""
    return str(getattr(node, "name", None) or type(node).__name__)


class Term(nn.Module):
    """A single term: per-atom energies E_i = readout(descriptor(graph))_i."""

    def __init__(self, descriptor: nn.Module, readout: nn.Module, name: str = "term"):
        super().__init__()
        self.descriptor = descriptor
        self.readout = readout
        self.name = name

    @property
    def cutoff(self) -> float:
        return float(self.descriptor.cutoff)

    def forward(self, graph: AtomicGraph):
        return self.readout(self.descriptor(graph), graph)

    def parameter_counts(self) -> dict[str, int]:
        return {self.name: sum(p.numel() for p in self.parameters() if p.requires_grad)}


class _Combination(nn.Module):
    def __init__(self, children: list[nn.Module], name: str):
        super().__init__()
        if len(children) < 2:
            raise ValueError(f"{type(self).__name__} needs at least two terms, got {len(children)}")
        self.terms = nn.ModuleList(children)
        self.name = name

    @property
    def cutoff(self) -> float:
        return max(float(t.cutoff) for t in self.terms)

    def parameter_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for term in self.terms:
            counts.update(term.parameter_counts())
        return counts

    def combine(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def check_extras(self, term: nn.Module, extras: dict) -> None:
        """Hook for combinations that cannot take some extras (see ``Product``)."""

    def forward(self, graph: AtomicGraph) -> NodeOutput:
        merged: NodeOutput | None = None
        for term in self.terms:
            out = NodeOutput.of(term(graph), node_name(term))
            self.check_extras(term, out.extras)
            if merged is None:
                merged = NodeOutput(out.energy, dict(out.extras), dict(out.origin))
            else:
                merged.merge(out)
                merged.energy = self.combine(merged.energy, out.energy)
        return merged


class Sum(_Combination):
    """E_i = sum over children of E_i^child."""

    def combine(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b


class Product(_Combination):
    """E_i = product over children of E_i^child."""

    def combine(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a * b

    def check_extras(self, term: nn.Module, extras: dict) -> None:
        if UNSCALED_ENERGY_KEY in extras:
            raise OutputConflictError(
                f"{self.name}: term {node_name(term)!r} has a physical (unscaled) energy part "
                "(e.g. Coulomb); it can be added to other terms but not multiplied: put it in a sum"
            )
