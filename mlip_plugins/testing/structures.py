"""Small deterministic test structures and their graphs, for the conformance checks.

Every structure is tiny (at most a few atoms, so each check runs in milliseconds) yet covers
what breaks plugins: a skewed triclinic periodic cell smaller than twice the cutoff (periodic
images are neighbours), a non-periodic cluster, two elements, and a path on which one atom
leaves a cluster so that every pair distance crosses the cutoff radii.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from ase import Atoms
from torch_geometric.data import Batch

from mlip_plugins.data.structures import atoms_to_graph


def with_charges(atoms: Atoms, seed: int) -> Atoms:
    """Give ``atoms`` neutral reference charges (for plugins that read charges from the data)."""
    q = np.random.default_rng(seed).uniform(-0.8, 0.8, size=len(atoms))
    atoms.set_initial_charges(q - q.mean())
    return atoms


def periodic_alloy(elements: Sequence[str], seed: int = 0) -> Atoms:
    """4 atoms in a rattled, sheared fcc cell (a = 3.6 Å): triclinic, images within the cutoff."""
    rng = np.random.default_rng(seed)
    a = 3.6
    scaled = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
    cell = a * (np.eye(3) + np.array([[0.03, 0.08, 0.0], [0.0, -0.02, 0.05], [0.06, 0.0, 0.01]]))
    symbols = [elements[k % len(elements)] for k in range(4)]
    atoms = Atoms(symbols, scaled_positions=scaled, cell=cell, pbc=True)
    atoms.positions += rng.normal(scale=0.1, size=(4, 3))
    return with_charges(atoms, seed)


def small_periodic(elements: Sequence[str], seed: int = 1) -> Atoms:
    """2 atoms in a rattled primitive bcc-like cell (a cell much smaller than the cutoff)."""
    rng = np.random.default_rng(seed)
    cell = np.array([[2.9, 0.1, 0.0], [0.2, 2.8, 0.1], [0.0, 0.3, 3.0]])
    atoms = Atoms([elements[0], elements[-1]], scaled_positions=[[0, 0, 0], [0.5, 0.5, 0.5]], cell=cell, pbc=True)
    atoms.positions += rng.normal(scale=0.05, size=(2, 3))
    return with_charges(atoms, seed)


def cluster(elements: Sequence[str], seed: int = 2) -> Atoms:
    """5 atoms, no periodicity, nearest distances around 2.3-2.8 Å."""
    rng = np.random.default_rng(seed)
    positions = np.array([[0.0, 0.0, 0.0], [2.4, 0.0, 0.0], [1.2, 2.1, 0.0], [1.2, 0.7, 2.0], [3.4, 2.0, 1.3]])
    positions += rng.normal(scale=0.08, size=positions.shape)
    symbols = [elements[k % len(elements)] for k in (0, 1, 0, 1, 1)]
    return with_charges(Atoms(symbols, positions=positions, pbc=False), seed)


def standard_structures(elements: Sequence[str], periodic: bool = True) -> list[Atoms]:
    """The structures most checks run on (periodic ones first)."""
    structures = [periodic_alloy(elements), small_periodic(elements)] if periodic else []
    return structures + [cluster(elements)]


def leaving_atom_path(elements: Sequence[str]) -> tuple[Atoms, np.ndarray, np.ndarray]:
    """A 3-atom cluster plus a 4th atom (index 3) that moves away along a straight line.

    Returns (atoms at t = 0, start point, unit direction); the moving atom sits at
    ``start + t * direction``.
    """
    fixed = np.array([[0.0, 0.0, 0.0], [2.3, 0.0, 0.0], [1.1, 2.0, 0.0]])
    start = np.array([1.15, 0.7, 2.1])
    direction = np.array([0.15, 0.25, 1.0])
    direction /= np.linalg.norm(direction)
    symbols = [elements[0], elements[-1], elements[0], elements[-1]]
    atoms = with_charges(Atoms(symbols, positions=np.vstack([fixed, start]), pbc=False), 3)
    return atoms, start, direction


def crossing_times(atoms: Atoms, start: np.ndarray, direction: np.ndarray, radius: float) -> list[float]:
    """Values t > 0 where the moving atom's distance to a fixed atom equals ``radius``."""
    times = []
    for a in atoms.positions[:-1]:
        d = start - a
        b = float(direction @ d)
        c = float(d @ d) - radius * radius
        disc = b * b - c
        if disc <= 0:
            continue
        for t in (-b - np.sqrt(disc), -b + np.sqrt(disc)):
            if t > 1e-3:
                times.append(float(t))
    return sorted(times)


def moved(atoms: Atoms, index: int, position: np.ndarray) -> Atoms:
    out = atoms.copy()
    out.positions[index] = position
    return out


def to_batch(structures: Sequence[Atoms], cutoff: float, dtype: torch.dtype = torch.float64) -> Batch:
    """One PyG batch of ``structures`` (graphs built with vesin at ``cutoff``) in ``dtype``."""
    graphs = []
    for atoms in structures:
        charges = atoms.get_initial_charges()
        data = atoms_to_graph(atoms, cutoff, {"charges": charges, "total_charge": float(charges.sum())})
        # from the float64 source, not a cast of the default-dtype tensors (no float32 rounding)
        data.pos = torch.tensor(atoms.positions, dtype=dtype)
        data.cell = data.cell.to(torch.float64).to(dtype) if not atoms.pbc.any() else torch.tensor(
            atoms.cell.array, dtype=dtype
        ).view(1, 3, 3)
        data.charges = torch.tensor(charges, dtype=dtype)
        data.total_charge = torch.tensor([float(charges.sum())], dtype=dtype)
        graphs.append(data)
    return Batch.from_data_list(graphs)


def random_rotation(seed: int = 0) -> np.ndarray:
    """A proper rotation matrix (det = +1)."""
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q
