"""Dataset statistics that initialise a model: per-element reference energies (E0) and scale."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from ase.data import atomic_numbers
from mlip_plugins.models.builder import ConfigError


def composition_matrix(graphs: Sequence, elements: Sequence[int]) -> np.ndarray:
    """[B, S] count of each element in each structure."""
    index = {z: k for k, z in enumerate(elements)}
    counts = np.zeros((len(graphs), len(elements)))
    for row, graph in enumerate(graphs):
        for z in graph.z.tolist():
            counts[row, index[z]] += 1
    return counts


def _by_number(mapping: Mapping) -> dict[int, float]:
    """{atomic number: energy} from a {symbol or Z: energy} dict; a bad key or value is a
    ConfigError naming ``e0.<key>``."""
    if not isinstance(mapping, Mapping):
        raise ConfigError(f"e0: expected 'fit' or a mapping element -> energy, got {mapping!r}")
    by_number = {}
    for key, value in mapping.items():
        try:
            number = atomic_numbers[key] if isinstance(key, str) and not key.isdigit() else int(key)
        except (KeyError, ValueError):
            raise ConfigError(f"e0.{key}: unknown element {key!r} (use chemical symbols such as Cu)") from None
        try:
            energy = float(value)
        except (TypeError, ValueError):
            energy = float("nan")
        if not np.isfinite(energy):
            raise ConfigError(f"e0.{key}: expected a finite reference energy in eV, got {value!r}")
        by_number[number] = energy
    return by_number


def fit_e0(graphs: Sequence, elements: Sequence[int], ridge: float = 1e-8, fixed: Mapping | None = None) -> np.ndarray:
    """Least-squares E0 per element: min ||C e0 - E||² over structures with an energy label.

    Elements that never vary independently (e.g. only in fixed ratios) are handled by the
    small ridge term, which picks the minimum-norm solution. ``fixed`` ({symbol or Z: energy})
    sets some elements' E0; only the others are fitted (on the energies less the fixed part).
    """
    fixed = {z: e for z, e in _by_number(fixed or {}).items() if z in elements}
    e0 = np.array([fixed.get(z, 0.0) for z in elements])
    free = [k for k, z in enumerate(elements) if z not in fixed]
    labelled = [g for g in graphs if bool(g.has_energy.item())]
    if not labelled or not free:
        return e0
    counts = composition_matrix(labelled, elements)
    energies = np.array([float(g.energy.item()) for g in labelled]) - counts @ e0
    counts = counts[:, free]
    gram = counts.T @ counts + ridge * np.eye(len(free))
    e0[free] = np.linalg.solve(gram, counts.T @ energies)
    return e0


def energy_scale(graphs: Sequence, elements: Sequence[int], e0: np.ndarray) -> float:
    """Typical magnitude of per-atom energies after E0: RMS of the force components if any
    structure has forces (a scale that tracks the curvature a model must learn), else the
    standard deviation of the E0-corrected energy per atom."""
    forces = [g.forces for g in graphs if bool(g.has_forces.item())]
    if forces:
        rms = float(torch.cat(forces).pow(2).mean().sqrt())
        if rms > 1e-8:
            return rms
    labelled = [g for g in graphs if bool(g.has_energy.item())]
    if len(labelled) > 1:
        counts = composition_matrix(labelled, elements)
        residual = np.array([float(g.energy.item()) for g in labelled]) - counts @ e0
        per_atom = residual / counts.sum(1)
        if per_atom.std() > 1e-8:
            return float(per_atom.std())
    return 1.0


def elements_in(graphs: Sequence) -> list[int]:
    """Sorted atomic numbers present in ``graphs``."""
    return sorted({int(z) for g in graphs for z in g.z.unique().tolist()})
