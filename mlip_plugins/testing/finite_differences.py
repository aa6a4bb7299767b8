"""Central finite differences of an energy over ASE structures.

The reference every force and stress check compares a model's derivatives with (the
conformance kit, the fuzz tests and the physics tests of each family): ``energy`` is any
callable from an :class:`ase.Atoms` to its energy in eV, so a model, a calculator or a solver
can be checked the same way.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from ase import Atoms

Energy = Callable[[Atoms], float]


def numerical_force(energy: Energy, atoms: Atoms, atom: int, axis: int, step: float = 1e-5) -> float:
    """-dE/dx of ``atoms.positions[atom, axis]``, by central differences with ``step`` (Å)."""
    values = []
    for sign in (1, -1):
        moved = atoms.copy()
        moved.positions[atom, axis] += sign * step
        values.append(float(energy(moved)))
    return -(values[0] - values[1]) / (2 * step)


def numerical_forces(energy: Energy, atoms: Atoms, step: float = 1e-5) -> np.ndarray:
    """Every component of :func:`numerical_force`: [N, 3]."""
    return np.array([[numerical_force(energy, atoms, atom, axis, step) for axis in range(3)] for atom in range(len(atoms))])


def numerical_stress(energy: Energy, atoms: Atoms, i: int, j: int, step: float = 1e-6) -> float:
    """(1/V) dE/d(strain_ij) under the symmetric strain ``cell -> cell @ (1 + strain)`` with the
    atoms scaled along: the ``[i, j]`` stress in ASE's sign (positive = tensile), eV/Å³.

    A symmetric strain (``strain_ij = strain_ji = step / 2`` off the diagonal) measures the
    symmetric part of the stress, which is the whole stress of a rotation-invariant energy."""
    strain = np.zeros((3, 3))
    strain[i, j] = strain[j, i] = step if i == j else step / 2
    values = []
    for sign in (1, -1):
        deformed = atoms.copy()
        deformed.set_cell(atoms.cell.array @ (np.eye(3) + sign * strain), scale_atoms=True)
        values.append(float(energy(deformed)))
    return (values[0] - values[1]) / (2 * step) / atoms.get_volume()


def numerical_stress_tensor(energy: Energy, atoms: Atoms, step: float = 1e-6) -> np.ndarray:
    """Every component of :func:`numerical_stress`: [3, 3], symmetric (each off-diagonal pair is
    one symmetric strain, so it is evaluated once and mirrored)."""
    stress = np.zeros((3, 3))
    for i in range(3):
        for j in range(i, 3):
            stress[i, j] = stress[j, i] = numerical_stress(energy, atoms, i, j, step)
    return stress
