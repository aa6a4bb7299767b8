"""Terms (descriptor + readout) and their combination by sum and product, nested at will.

Every node maps an ``AtomicGraph`` to per-atom energies [N]; ``Sum`` and ``Product``
combine their children atom by atom, so ((A + B) x C) stays local and extensive.
Nodes may also return extras (``aux_loss``, ``charges``) in a dict; they are merged upward.

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

from mlip_plugins.graph import AtomicGraph


def split_output(output) -> tuple[torch.Tensor, dict]:
    """(per-atom energy, extras) from a node's output, which is a tensor or a dict."""
    if isinstance(output, dict):
        extras = {k: v for k, v in output.items() if k != "energy"}
        return output["energy"], extras
    return output, {}


UNSCALED_ENERGY_KEY = "atomic_energy_unscaled"
"""Extra output key: per-atom energy [N] in eV that the ``Potential`` adds after scaling."""

_ADDITIVE_EXTRAS = ("aux_loss", UNSCALED_ENERGY_KEY)


def merge_extras(into: dict, extras: dict) -> dict:
    """Merge a child's extras into ``into``: additive keys are summed, others overwritten."""
    for key, value in extras.items():
        if key in _ADDITIVE_EXTRAS and key in into:
            into[key] = into[key] + value
        else:
            into[key] = value
    return into


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

    def forward(self, graph: AtomicGraph):
        extras: dict = {}
        energy = None
        for term in self.terms:
            e, x = split_output(term(graph))
            self.check_extras(term, x)
            merge_extras(extras, x)
            energy = e if energy is None else self.combine(energy, e)
        return {"energy": energy, **extras} if extras else energy


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
            raise ValueError(
                f"{self.name}: term {getattr(term, 'name', type(term).__name__)!r} has a physical (unscaled) energy part "
                "(e.g. Coulomb); it can be added to other terms but not multiplied: put it in a sum"
            )
