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
    gram = counts.T @ counts + ridge * np.eye(len(elements))
    return np.linalg.solve(gram, counts.T @ energies)


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


def label_variances(graphs: Sequence, elements: Sequence[int], e0: np.ndarray) -> dict[str, float]:
    """Training-set variance of each label the loss compares, in the loss's own units.

    ``energy``: energy per atom after E0 subtraction (eV²/atom²); ``forces``: force components
    (eV²/Å², mean square about zero, as forces average to zero); ``stress``: stress
    components (eV²/Å⁶); ``charges``: per-atom charges (e²). Dividing each MSE term by its
    variance makes the terms dimensionless, so neither dominates the loss by its units.
    Targets without labels (or with a vanishing spread) get 1.0 (the term is left as is).
    """
    result = {"energy": 1.0, "forces": 1.0, "stress": 1.0, "charges": 1.0}
    labelled = [g for g in graphs if bool(g.has_energy.item())]
    if len(labelled) > 1:
        counts = composition_matrix(labelled, elements)
        residual = np.array([float(g.energy.item()) for g in labelled]) - counts @ np.asarray(e0)
        result["energy"] = float(np.var(residual / counts.sum(1)))
    forces = [g.forces for g in graphs if bool(g.has_forces.item())]
    if forces:
        result["forces"] = float(torch.cat(forces).double().pow(2).mean())
    stresses = [g.stress for g in graphs if bool(getattr(g, "has_stress", torch.tensor([False])).item())]
    if len(stresses) > 1:
        result["stress"] = float(torch.stack([s.reshape(-1) for s in stresses]).double().var())
    charges = [g.charges for g in graphs if getattr(g, "charges", None) is not None]
    if charges:
        result["charges"] = float(torch.cat(charges).double().var()) if sum(c.numel() for c in charges) > 1 else 1.0
    return {key: value if np.isfinite(value) and value > 1e-12 else 1.0 for key, value in result.items()}


def elements_in(graphs: Sequence) -> list[int]:
    """Sorted atomic numbers present in ``graphs``."""
    return sorted({int(z) for g in graphs for z in g.z.unique().tolist()})
