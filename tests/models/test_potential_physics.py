"""Physics of the default model (float64): forces and stress as derivatives, invariances, extensivity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk
from torch_geometric.data import Batch

from mlip_plugins.data.structures import atoms_to_graph
from mlip_plugins.models import build_potential
from mlip_plugins.testing.finite_differences import numerical_force, numerical_stress

CUTOFF = 4.5


def make_model(seed: int = 0):
    torch.manual_seed(seed)
    return build_potential(
        {"elements": ["Cu", "Au"], "cutoff": CUTOFF,
         "energy": {"descriptor": {"name": "radial", "n_max": 5, "basis_size": 6}, "readout": {"name": "mlp", "hidden": [16, 16]}}}
    )


def evaluate(model, atoms, stress=False):
    return model(Batch.from_data_list([atoms_to_graph(atoms, CUTOFF)]), compute_stress=stress)


def energy(model, atoms) -> float:
    return float(evaluate(model, atoms)["energy"][0].detach())


def test_forces_equal_central_differences(float64, alloy):
    model = make_model()
    forces = evaluate(model, alloy)["forces"].detach().numpy()
    h = 1e-5
    for atom, axis in [(0, 0), (5, 1), (17, 2), (31, 0)]:
        numeric = numerical_force(lambda atoms: energy(model, atoms), alloy, atom, axis, h)
        assert forces[atom, axis] == pytest.approx(numeric, rel=1e-6, abs=1e-9)


def test_stress_equals_finite_strain_differences(float64, alloy):
    model = make_model()
    stress = evaluate(model, alloy, stress=True)["stress"][0].detach().numpy()
    for i, j in [(0, 0), (1, 1), (2, 2), (0, 1), (1, 2), (0, 2)]:
        numeric = numerical_stress(lambda atoms: energy(model, atoms), alloy, i, j, 1e-6)
        assert stress[i, j] == pytest.approx(numeric, rel=1e-6, abs=1e-10)


def test_stress_matches_ase_numerical_stress(float64, alloy):
    from mlip_plugins.calculator import MLIPCalculator

    alloy.calc = MLIPCalculator(make_model())
    analytic = alloy.get_stress()
    numeric = alloy.calc.calculate_numerical_stress(alloy, d=1e-6)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-9)


def test_rotation_translation_permutation_invariance(float64, alloy):
    model = make_model()
    reference = evaluate(model, alloy)
    e0, f0 = float(reference["energy"][0]), reference["forces"].detach().numpy()
    rotation = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64))[0].numpy()
    rotated = alloy.copy()
    rotated.set_cell(alloy.cell.array @ rotation.T, scale_atoms=False)
    rotated.positions = alloy.positions @ rotation.T + np.array([0.3, -1.2, 2.5])
    out = evaluate(model, rotated)
    assert float(out["energy"][0]) == pytest.approx(e0, rel=1e-12)
    np.testing.assert_allclose(out["forces"].detach().numpy(), f0 @ rotation.T, atol=1e-10)
    order = np.random.default_rng(0).permutation(len(alloy))
    permuted = alloy[order]
    out = evaluate(model, permuted)
    assert float(out["energy"][0]) == pytest.approx(e0, rel=1e-12)
    np.testing.assert_allclose(out["forces"].detach().numpy(), f0[order], atol=1e-10)


def test_supercell_energy_per_atom_equals_unit_cell(float64):
    model = make_model()
    unit = bulk("Cu", "fcc", a=3.6)  # primitive cell: 1 atom, far smaller than the cutoff
    unit.set_cell(unit.cell.array @ (np.eye(3) + 0.01 * np.arange(9).reshape(3, 3) / 9), scale_atoms=True)
    unit = unit * (1, 1, 1)
    super_cell = unit.repeat((2, 2, 2))
    assert energy(model, super_cell) / len(super_cell) == pytest.approx(energy(model, unit) / len(unit), rel=1e-12)


def test_energy_and_forces_continuous_across_cutoff(float64):
    """As a neighbour approaches the cutoff, the energy reaches its far value quadratically and
    the force vanishes linearly (smooth cosine cutoff); beyond it nothing changes."""
    from ase import Atoms

    model = make_model()

    def dimer(d):
        out = evaluate(model, Atoms("CuAu", positions=[[0, 0, 0], [d, 0, 0]]))
        return float(out["energy"][0]), float(out["forces"][0, 0])

    far_energy, far_force = dimer(CUTOFF + 1e-3)
    assert far_force == 0.0
    assert dimer(CUTOFF + 0.5)[0] == pytest.approx(far_energy, abs=1e-14)
    gaps = [abs(dimer(CUTOFF - delta)[0] - far_energy) for delta in (1e-2, 1e-3, 1e-4)]
    forces = [abs(dimer(CUTOFF - delta)[1]) for delta in (1e-2, 1e-3, 1e-4)]
    assert gaps[0] > 0 and forces[0] > 0
    for k in range(2):
        assert gaps[k + 1] / gaps[k] == pytest.approx(0.01, rel=0.05)
        assert forces[k + 1] / forces[k] == pytest.approx(0.1, rel=0.05)


def test_batch_independence(float64, alloy):
    model = make_model()
    from ase import Atoms

    molecule = Atoms("CuAu2", positions=[[0, 0, 0], [2.4, 0, 0], [0, 2.5, 0.3]])
    alone = evaluate(model, alloy)
    batch = Batch.from_data_list([atoms_to_graph(molecule, CUTOFF), atoms_to_graph(alloy, CUTOFF)])
    together = model(batch)
    assert float(together["energy"][1]) == pytest.approx(float(alone["energy"][0]), rel=1e-12)
    np.testing.assert_allclose(together["forces"][3:].detach().numpy(), alone["forces"].detach().numpy(), atol=1e-12)
