"""What a node of the energy tree returns, and how two nodes' outputs merge.

A node (a term, a ``sum``/``product``, an ``energy_models`` plugin) may return

* a tensor ``[N]``: its learned per-atom energy, or
* a mapping with ``"energy"`` ``[N]`` and extras named in :mod:`mlip_plugins.keys`
  (``aux_loss``, ``charges``, ``atomic_energy_unscaled``, ...), or
* a :class:`NodeOutput`.

:meth:`NodeOutput.of` reads any of the three. Extras merge by the rule that
:data:`mlip_plugins.keys.MERGE_RULES` declares for their key: summed (energies in eV, auxiliary
losses) or unique (charges: two children that both produce charges are an error naming both,
never a silent overwrite).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from mlip_plugins import keys
from mlip_plugins.errors import MLIPError


class OutputConflictError(MLIPError, ValueError):
    """Two children of a combination produce the same output that cannot be merged."""


@dataclass
class NodeOutput:
    """A node's learned per-atom energy ``[N]`` and its extras, with the origin of each extra."""

    energy: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    #: which node produced each extra (for the conflict message)
    origin: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, output, node: str = "node") -> NodeOutput:
        """Read a node's return value (tensor, mapping with ``"energy"`` or ``NodeOutput``)."""
        if isinstance(output, NodeOutput):
            return output
        if isinstance(output, Mapping):
            if keys.ATOMIC_ENERGY not in output:
                raise TypeError(f"{node}: an energy node returned a mapping without {keys.ATOMIC_ENERGY!r} ({sorted(output)})")
            extras = {k: v for k, v in output.items() if k != keys.ATOMIC_ENERGY}
            return cls(output[keys.ATOMIC_ENERGY], extras, {k: node for k in extras})
        return cls(output)

    def merge(self, other: NodeOutput | Mapping, node: str = "node") -> NodeOutput:
        """Merge ``other``'s extras into this output in place, by the declared rules; returns self."""
        if not isinstance(other, NodeOutput):
            other = NodeOutput(self.energy, dict(other), {k: node for k in other})
        for key, value in other.extras.items():
            source = other.origin.get(key, node)
            if key not in self.extras:
                self.extras[key] = value
                self.origin[key] = source
            elif keys.merge_rule(key) is keys.Merge.SUM:
                self.extras[key] = self.extras[key] + value
            else:
                raise OutputConflictError(
                    f"{self.origin.get(key, 'a term')!r} and {source!r} both produce {key!r}; a combined model has one "
                    f"{key} per atom, so only one term may produce it (declared rule: {keys.merge_rule(key).value})"
                )
        return self

    def as_dict(self) -> dict[str, torch.Tensor]:
        """``{"energy": [N], **extras}``: the mapping form of the node contract."""
        return {keys.ATOMIC_ENERGY: self.energy, **self.extras}


def split_output(output, node: str = "node") -> tuple[torch.Tensor, dict]:
    """(per-atom energy, extras) of a node's return value; see :meth:`NodeOutput.of`."""
    parsed = NodeOutput.of(output, node)
    return parsed.energy, dict(parsed.extras)
