"""Map atomic numbers to a model's element indices, with a clear error for unknown elements."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from ase.data import atomic_numbers, chemical_symbols
from torch import nn
from mlip_plugins.errors import MLIPError


def to_atomic_numbers(elements: Sequence[int | str]) -> list[int]:
    """Accept symbols ('Cu') or numbers (29); return sorted unique atomic numbers."""
    numbers = []
    for element in elements:
        if isinstance(element, str):
            if element not in atomic_numbers:
                raise UnknownElementError(f"unknown chemical symbol {element!r}")
            numbers.append(atomic_numbers[element])
        else:
            number = int(element)
            if not 0 < number < len(chemical_symbols):
                raise UnknownElementError(f"invalid atomic number {element!r}")
            numbers.append(number)
    if not numbers:
        raise ValueError("a model needs at least one element")
    return sorted(set(numbers))


class UnknownElementError(MLIPError, ValueError):
    """A structure contains an element the model was not built for."""


def check_known_elements(graphs: Sequence, known: Sequence[int], hint: str = "") -> None:
    """Raise :class:`UnknownElementError` naming the file and frame (``graph.source``, 'file:frame')
    of the first graph with an element outside ``known`` (atomic numbers); ``hint`` is appended."""
    allowed = set(int(z) for z in known)
    for graph in graphs:
        bad = sorted(set(graph.z.tolist()) - allowed)
        if bad:
            path, _, frame = str(getattr(graph, "source", "") or "structure:?").rpartition(":")
            raise UnknownElementError(
                f"{path}: frame {frame}: field 'numbers': element {', '.join(chemical_symbols[z] for z in bad)} "
                f"not known to the model (it knows {', '.join(chemical_symbols[z] for z in sorted(allowed))}){hint}"
            )


class ElementMap(nn.Module):
    """Lookup table atomic number -> index in the model's element list."""

    def __init__(self, elements: Sequence[int | str]):
        super().__init__()
        self.atomic_numbers = to_atomic_numbers(elements)
        table = torch.full((len(chemical_symbols),), -1, dtype=torch.long)
        for index, number in enumerate(self.atomic_numbers):
            table[number] = index
        self.register_buffer("table", table, persistent=False)

    @property
    def num_species(self) -> int:
        return len(self.atomic_numbers)

    @property
    def symbols(self) -> list[str]:
        return [chemical_symbols[z] for z in self.atomic_numbers]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        species = self.table[z]
        if not torch.compiler.is_compiling() and bool((species < 0).any()):
            unknown = sorted({chemical_symbols[int(v)] for v in z[species < 0].unique()})
            raise UnknownElementError(
                f"element(s) {', '.join(unknown)} not known to the model (it knows {', '.join(self.symbols)})"
            )
        return species
