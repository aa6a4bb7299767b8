"""Dataset statistics that initialise a model: per-element reference energies (E0) and scale."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from ase.data import atomic_numbers, chemical_symbols


def composition_matrix(graphs: Sequence, elements: Sequence[int]) -> np.ndarray:
    """[B, S] count of each element in each structure."""
    index = {z: k for k, z in enumerate(elements)}
    counts = np.zeros((len(graphs), len(elements)))
    for row, graph in enumerate(graphs):
        for z in graph.z.tolist():
            counts[row, index[z]] += 1
    return counts


def fit_e0(graphs: Sequence, elements: Sequence[int], ridge: float = 1e-8) -> np.ndarray:
    """Least-squares E0 per element: min ||C e0 - E||² over structures with an energy label.

    Elements that never vary independently (e.g. only in fixed ratios) are handled by the
    small ridge term, which picks the minimum-norm solution.
    """
    labelled = [g for g in graphs if bool(g.has_energy.item())]
    if not labelled:
        return np.zeros(len(elements))
    counts = composition_matrix(labelled, elements)
    energies = np.array([float(g.energy.item()) for g in labelled])
    return e0_from_normal_equations(counts.T @ counts, counts.T @ energies, ridge)


def e0_from_normal_equations(gram: np.ndarray, rhs: np.ndarray, ridge: float = 1e-8) -> np.ndarray:
    """Solve (CᵀC + ridge·I) e0 = CᵀE, given CᵀC (``gram``) and CᵀE (``rhs``): the E0 fit of
    :func:`fit_e0`, also reached by accumulating the sums structure by structure (the graph store)."""
    return np.linalg.solve(np.asarray(gram, dtype=np.float64) + ridge * np.eye(len(rhs)), np.asarray(rhs, dtype=np.float64))


def e0_from_mapping(mapping: Mapping, elements: Sequence[int]) -> np.ndarray:
    """E0 vector from an explicit {symbol or Z: energy} dict; missing elements are an error."""
    by_number = {}
    for key, value in mapping.items():
        number = atomic_numbers[key] if isinstance(key, str) and not key.isdigit() else int(key)
        by_number[number] = float(value)
    missing = [chemical_symbols[z] for z in elements if z not in by_number]
    if missing:
        raise ValueError(f"data.e0: no reference energy for {', '.join(missing)}")
    return np.array([by_number[z] for z in elements])


def energy_scale(graphs: Sequence, elements: Sequence[int], e0: np.ndarray) -> float:
    """Typical magnitude of per-atom energies after E0: RMS of the force components if any
    structure has forces (a scale that tracks the curvature a model must learn), else the
    standard deviation of the E0-corrected energy per atom."""
    forces = [g.forces for g in graphs if bool(g.has_forces.item())]
    force_rms = float(torch.cat(forces).pow(2).mean().sqrt()) if forces else None
    per_atom_std = None
    labelled = [g for g in graphs if bool(g.has_energy.item())]
    if len(labelled) > 1:
        counts = composition_matrix(labelled, elements)
        residual = np.array([float(g.energy.item()) for g in labelled]) - counts @ e0
        per_atom_std = float((residual / counts.sum(1)).std())
    return choose_energy_scale(force_rms, per_atom_std)


def choose_energy_scale(force_rms: float | None, per_atom_std: float | None) -> float:
    """The rule of :func:`energy_scale`: the force RMS if there are forces and it is not ~0, else
    the per-atom energy spread (after E0) if there are two or more energies and it is not ~0, else 1."""
    if force_rms is not None and force_rms > 1e-8:
        return float(force_rms)
    if per_atom_std is not None and per_atom_std > 1e-8:
        return float(per_atom_std)
    return 1.0


def elements_in(graphs: Sequence) -> list[int]:
    """Sorted atomic numbers present in ``graphs``."""
    return sorted({int(z) for g in graphs for z in g.z.unique().tolist()})
