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


def e0_mapping(mapping: Mapping) -> dict[int, float]:
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
    fixed = {z: e for z, e in e0_mapping(fixed or {}).items() if z in elements}
    e0 = np.array([fixed.get(z, 0.0) for z in elements])
    free = [k for k, z in enumerate(elements) if z not in fixed]
    labelled = [g for g in graphs if bool(g.has_energy.item())]
    if not labelled or not free:
        return e0
    counts = composition_matrix(labelled, elements)
    energies = np.array([float(g.energy.item()) for g in labelled])
    return e0_from_normal_equations(counts.T @ counts, counts.T @ energies, ridge, e0, free)


def e0_from_normal_equations(gram: np.ndarray, rhs: np.ndarray, ridge: float = 1e-8,
                             e0: np.ndarray | None = None, free: Sequence[int] | None = None) -> np.ndarray:
    """Solve the E0 least squares from CᵀC (``gram``) and CᵀE (``rhs``): the fit of :func:`fit_e0`,
    also reached by accumulating the sums structure by structure (the graph store). With ``e0``
    holding fixed values and ``free`` the indices to fit, only those are solved for:
    (CᵀC)_UU e_U = (CᵀE)_U - (CᵀC)_UF e_F."""
    gram, rhs = np.asarray(gram, dtype=np.float64), np.asarray(rhs, dtype=np.float64)
    e0 = np.zeros(len(rhs)) if e0 is None else np.array(e0, dtype=np.float64)
    free = list(range(len(rhs))) if free is None else list(free)
    fixed = [k for k in range(len(rhs)) if k not in free]
    if not free:
        return e0
    target = rhs[free] - gram[np.ix_(free, fixed)] @ e0[fixed]
    e0[free] = np.linalg.solve(gram[np.ix_(free, free)] + ridge * np.eye(len(free)), target)
    return e0


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


def _pooled_variance(values: Sequence[torch.Tensor]) -> float:
    """The (n-1)-normalised variance of all components of ``values`` (1.0 below two)."""
    flat = torch.cat([v.reshape(-1) for v in values]).double() if values else torch.zeros(0)
    return float(flat.var()) if flat.numel() > 1 else 1.0


def _labelled(graphs: Sequence, label: str) -> list:
    return [g for g in graphs if bool(getattr(g, f"has_{label}", torch.tensor([False])).item())]


def label_variances(graphs: Sequence, elements: Sequence[int], e0: np.ndarray) -> dict[str, float]:
    """Training-set variance of each label the loss compares, in the loss's own units.

    ``energy``: energy per atom after E0 subtraction (eV²/atom²); ``forces``: force components
    (eV²/Å², mean square about zero, as forces average to zero); ``stress``: stress
    components (eV²/Å⁶); ``charges``: per-atom charges (e²); ``bec``: Born effective charge
    components (e²); ``dipole`` / ``polarizability``: their components per atom, as a TNEP's
    loss compares them. Dividing each MSE term by its variance makes the terms dimensionless,
    so neither dominates the loss by its units. Targets without labels (or with a vanishing
    spread) get 1.0 (the term is left as is).
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
    stresses = [g.stress for g in _labelled(graphs, "stress")]
    if len(stresses) > 1:
        result["stress"] = float(torch.stack([s.reshape(-1) for s in stresses]).double().var())
    charges = [g.charges for g in graphs if getattr(g, "charges", None) is not None]
    if charges:
        result["charges"] = _pooled_variance(charges)
    result["bec"] = _pooled_variance([g.bec for g in _labelled(graphs, "bec")])
    for name in ("dipole", "polarizability"):
        result[name] = _pooled_variance([getattr(g, name).double() / g.num_nodes for g in _labelled(graphs, name)])
    return {key: value if np.isfinite(value) and value > 1e-12 else 1.0 for key, value in result.items()}


def elements_in(graphs: Sequence) -> list[int]:
    """Sorted atomic numbers present in ``graphs``."""
    return sorted({int(z) for g in graphs for z in g.z.unique().tolist()})
