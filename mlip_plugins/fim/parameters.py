"""The trainable parameters of a model as one flat vector, grouped by energy-tree term.

The Fisher information is a matrix over *all* trainable parameters; to say which part of a
model a stiff or sloppy direction belongs to, every coordinate of the flat vector is labelled
twice: with its **term** (the deepest module of the energy tree that carries a ``name``, e.g.
a ``Term`` of :mod:`mlip_plugins.models.composition`) and with its **parameter group** (the
named parameter it comes from, e.g. ``main/readout.layers.0.weight``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

#: label of parameters that sit outside every named module of the energy tree
UNNAMED = "other"


def _named_module_prefixes(model: nn.Module) -> dict[str, str]:
    """Module path -> name, for every module of ``model`` whose ``name`` attribute is a string."""
    prefixes = {}
    for path, module in model.named_modules():
        name = getattr(module, "name", None)
        if isinstance(name, str) and name:
            prefixes[path] = name
    return prefixes


def term_of_parameter(parameter_path: str, prefixes: dict[str, str]) -> tuple[str, str]:
    """(term label, path inside the term) of a parameter, from the deepest named module above it."""
    best = None
    for path in prefixes:
        if path == "" or parameter_path.startswith(path + "."):
            if best is None or len(path) > len(best):
                best = path
    if best is None:
        return UNNAMED, parameter_path
    local = parameter_path[len(best) + 1 :] if best else parameter_path
    return prefixes[best], local


@dataclass
class ParameterIndex:
    """Layout of the flat parameter vector: names, shapes, offsets and labels.

    Attributes:
        names: full parameter names (``potential.named_parameters()`` order).
        shapes: their shapes.
        offsets: start of each parameter in the flat vector (plus the total at the end).
        terms: term label of each parameter.
        groups: parameter-group label of each parameter (``<term>/<path inside the term>``).
    """

    names: list[str]
    shapes: list[tuple[int, ...]]
    offsets: list[int]
    terms: list[str]
    groups: list[str]

    @classmethod
    def from_model(cls, potential: nn.Module) -> "ParameterIndex":
        """Index the trainable parameters of a ``Potential`` (or any module)."""
        root = getattr(potential, "energy_model", None)
        root_prefix = "energy_model." if root is not None else ""
        prefixes = _named_module_prefixes(root) if root is not None else _named_module_prefixes(potential)
        names, shapes, offsets, terms, groups = [], [], [0], [], []
        for name, param in potential.named_parameters():
            if not param.requires_grad:
                continue
            inner = name[len(root_prefix) :] if root_prefix and name.startswith(root_prefix) else name
            if root_prefix and not name.startswith(root_prefix):
                term, local = UNNAMED, name
            else:
                term, local = term_of_parameter(inner, prefixes)
            names.append(name)
            shapes.append(tuple(param.shape))
            offsets.append(offsets[-1] + param.numel())
            terms.append(term)
            groups.append(f"{term}/{local}")
        return cls(names, shapes, offsets, terms, groups)

    @property
    def size(self) -> int:
        """Total number of trainable parameters."""
        return self.offsets[-1]

    def parameters(self, potential: nn.Module) -> list[torch.Tensor]:
        """The parameter tensors of ``potential`` in index order."""
        lookup = dict(potential.named_parameters())
        return [lookup[name] for name in self.names]

    def flatten(self, tensors: list[torch.Tensor | None]) -> torch.Tensor:
        """One flat vector from per-parameter tensors (``None`` -> zeros, as from ``allow_unused``)."""
        reference = next(t for t in tensors if t is not None) if any(t is not None for t in tensors) else None
        dtype = reference.dtype if reference is not None else torch.get_default_dtype()
        parts = []
        for tensor, shape in zip(tensors, self.shapes):
            if tensor is None:
                parts.append(torch.zeros(int(torch.Size(shape).numel()), dtype=dtype))
            else:
                parts.append(tensor.reshape(-1))
        return torch.cat(parts)

    def unflatten(self, vector: torch.Tensor) -> list[torch.Tensor]:
        """Per-parameter views of a flat vector."""
        return [vector[a:b].view(shape) for a, b, shape in zip(self.offsets[:-1], self.offsets[1:], self.shapes)]

    def _labels_per_coordinate(self, labels: list[str]) -> tuple[list[str], torch.Tensor]:
        unique = list(dict.fromkeys(labels))
        code = {label: k for k, label in enumerate(unique)}
        index = torch.empty(self.size, dtype=torch.long)
        for label, a, b in zip(labels, self.offsets[:-1], self.offsets[1:]):
            index[a:b] = code[label]
        return unique, index

    def term_index(self) -> tuple[list[str], torch.Tensor]:
        """(term labels, [P] term code of every coordinate)."""
        return self._labels_per_coordinate(self.terms)

    def group_index(self) -> tuple[list[str], torch.Tensor]:
        """(parameter-group labels, [P] group code of every coordinate)."""
        return self._labels_per_coordinate(self.groups)

    def coordinate_name(self, k: int) -> str:
        """Human-readable name of flat coordinate ``k`` (``group[i,j,...]``)."""
        for name, group, shape, a, b in zip(self.names, self.groups, self.shapes, self.offsets[:-1], self.offsets[1:]):
            if a <= k < b:
                if not shape:
                    return group
                idx = torch.unravel_index(torch.tensor(k - a), shape)
                return f"{group}[{','.join(str(int(i)) for i in idx)}]"
        raise IndexError(k)
