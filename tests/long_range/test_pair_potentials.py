"""Solvers sum the pair potential they are given (torch-pme's potential/calculator split)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk
from torch_geometric.data import Batch

from mlip_plugins.data.structures import atoms_to_graph
from mlip_plugins.graph import build_atomic_graph
from mlip_plugins.long_range import EwaldSolver, P3MSolver, PMESolver
from mlip_plugins.long_range.potentials import PotentialConfigError

CUTOFF = 6.0


def _graph(atoms):
    data = Batch.from_data_list([atoms_to_graph(atoms, CUTOFF)])
    return build_atomic_graph(data, torch.zeros(len(atoms), dtype=torch.long))


def _lattice_sum(atoms, exponent: int, radius: float = 40.0) -> np.ndarray:
    """phi_i = sum_j' 1/r_ij^p over all images within ``radius``, by brute force."""
    cell, pos = atoms.cell.array, atoms.positions
    n = int(np.ceil(radius / min(np.linalg.norm(cell, axis=1)))) + 1
    grid = np.arange(-n, n + 1)
    shifts = np.stack(np.meshgrid(grid, grid, grid, indexing="ij"), -1).reshape(-1, 3) @ cell
    phi = np.zeros(len(atoms))
    for i in range(len(atoms)):
        r = np.linalg.norm(pos[None, :, :] + shifts[:, None, :] - pos[i], axis=-1).ravel()
        r = r[(r > 1e-8) & (r < radius)]
        phi[i] = np.sum(r ** (-float(exponent)))
    return phi


@pytest.mark.parametrize("solver", [EwaldSolver, PMESolver, P3MSolver])
def test_dispersion_lattice_sum_matches_brute_force(solver, float64):
    """1/r^6 with unit weights on a rattled fcc crystal: k space, real space and the k = 0 limit."""
    atoms = bulk("Ar", "fcc", a=5.26).repeat(2)
    atoms.rattle(0.1, seed=1)
    phi = solver(cutoff=CUTOFF, accuracy=1e-7, prefactor=1.0, potential={"name": "inverse_power_law", "exponent": 6})
    got = phi.potentials(_graph(atoms), torch.ones(len(atoms))).numpy()
    reference = _lattice_sum(atoms, 6)
    # the brute-force sum misses the tail beyond 40 Å, 4 pi rho / (3 * 40^3) = 1.8e-6 (3e-4 relative)
    tail = 4 * np.pi * len(atoms) / atoms.get_volume() / (3 * 40.0**3)
    assert np.allclose(got, reference + tail, rtol=2e-4)


@pytest.mark.parametrize("solver", [EwaldSolver, PMESolver])
def test_inverse_power_one_is_coulomb(solver, float64):
    atoms = bulk("NaCl", "rocksalt", a=5.64).repeat(2)
    atoms.rattle(0.05, seed=2)
    charges = torch.tensor([1.0 if s == "Na" else -1.0 for s in atoms.get_chemical_symbols()])
    graph = _graph(atoms)
    coulomb = solver(cutoff=CUTOFF, accuracy=1e-6).potentials(graph, charges)
    power = solver(cutoff=CUTOFF, accuracy=1e-6, potential={"name": "inverse_power_law", "exponent": 1}).potentials(graph, charges)
    assert torch.allclose(coulomb, power, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("config, message", [
    ({"name": "yukawa"}, "unknown potential 'yukawa'"),
    ({"name": "inverse_power_law"}, "integer exponent"),
    ({"name": "inverse_power_law", "exponent": 6, "sigma": 1}, "unknown option"),
])
def test_a_bad_potential_config_is_named(config, message):
    with pytest.raises(PotentialConfigError, match=message):
        EwaldSolver(cutoff=CUTOFF, potential=config)
