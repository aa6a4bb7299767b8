"""A charge model's dipole sum_i q_i (r_i - R_com) as the ``dipole`` output: by hand, translation,
periodic cells masked, one producer per model, and ``loss.dipole`` trains the charges."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.io import write
from torch_geometric.data import Batch

from lightning_modules.losses import LossWeights, errors, total_loss
from mlip_plugins import keys
from mlip_plugins.data.structures import atoms_to_graph
from mlip_plugins.models.builder import build_potential
from mlip_plugins.models.outputs import NodeOutput, OutputConflictError
from mlip_plugins.targets import ErrorMetrics, residuals

CUTOFF = 4.0


def config(charges: dict, solver: str = "direct", name: str = "electrostatic") -> dict:
    model = {"name": name, "descriptor": {"name": "radial", "n_max": 3, "basis_size": 4},
             "readout": {"name": "linear"}, "charges": charges, "solver": {"name": solver}}
    return {"elements": ["H", "O", "Na", "Cl"], "cutoff": CUTOFF, "energy": {"model": model}}


def salt_molecule(seed: int = 0, total: float = 1.0) -> Atoms:
    """Five ions at random positions (spread 2-5 Å) with reference charges summing to ``total``."""
    rng = np.random.default_rng(seed)
    atoms = Atoms("NaClNaClNa", positions=rng.uniform(0, 5.0, size=(5, 3)) + 10.0)
    charges = np.array([0.7, -0.8, 0.6, -0.5, 0.0])
    charges[-1] = total - charges[:-1].sum()
    atoms.arrays["charges"] = charges
    return atoms


def batch_of(structures, dipoles=None):
    data = []
    for k, atoms in enumerate(structures):
        labels = {"charges": atoms.arrays["charges"], "total_charge": float(atoms.arrays["charges"].sum())}
        if dipoles is not None:
            labels["dipole"] = dipoles[k]
        data.append(atoms_to_graph(atoms, CUTOFF, labels))
    return Batch.from_data_list(data)


def by_hand(atoms: Atoms) -> np.ndarray:
    """sum_i q_i (r_i - R_com) with ASE's centre of mass."""
    return (atoms.arrays["charges"][:, None] * (atoms.positions - atoms.get_center_of_mass())).sum(0)


def test_the_dipole_is_sum_q_r_about_the_centre_of_mass_and_moves_with_the_molecule(float64):
    potential = build_potential(config({"name": "fixed"}))
    charged, neutral = salt_molecule(0, total=1.0), salt_molecule(1, total=0.0)
    out = potential(batch_of([charged, neutral]))
    np.testing.assert_allclose(out[keys.DIPOLE].detach().numpy(), [by_hand(charged), by_hand(neutral)], rtol=1e-12, atol=1e-12)
    assert out[keys.DIPOLE_DEFINED].tolist() == [True, True]
    assert abs(by_hand(charged) - (charged.arrays["charges"][:, None] * charged.positions).sum(0)).max() > 1.0  # origin matters
    moved = [a.copy() for a in (charged, neutral)]
    for a in moved:
        a.translate([3.0, -7.5, 12.0])
    again = potential(batch_of(moved))[keys.DIPOLE].detach()
    torch.testing.assert_close(again, out[keys.DIPOLE].detach(), rtol=1e-12, atol=1e-10)  # neutral, and charged too (COM origin)


def test_a_periodic_cell_has_no_dipole_and_its_label_is_neither_trained_nor_scored(float64):
    """A batch with a molecule and a periodic cell, both labelled: only the molecule's dipole counts."""
    potential = build_potential(config({"name": "fixed"}, solver="ewald"))
    crystal = salt_molecule(2, total=0.0)
    crystal.positions -= 10.0
    crystal.set_cell([6.0, 6.0, 6.0])
    crystal.pbc = True
    molecule = salt_molecule(3, total=1.0)
    data = batch_of([molecule, crystal], dipoles=[np.zeros(3), np.array([5.0, 5.0, 5.0])])
    out = potential(data)
    assert out[keys.DIPOLE_DEFINED].tolist() == [True, False]
    assert torch.equal(out[keys.DIPOLE][1], torch.zeros(3))
    r = residuals(data, out)[keys.DIPOLE]
    assert r.mask.tolist() == [[True] * 3, [False] * 3] and r.weight[1].abs().sum() == 0
    metrics = ErrorMetrics(sync=False)
    metrics.update(residuals(data, out))
    assert metrics.counts[keys.DIPOLE] == 3
    expected = np.sqrt(np.mean((by_hand(molecule) / len(molecule)) ** 2))  # per atom, as every dipole residual
    assert float(metrics.compute()["dipole_rmse"]) == pytest.approx(expected, rel=1e-10)


def test_two_dipole_producers_are_an_error_not_a_silent_overwrite(float64):
    """The dipole merges by rule 'unique', as charges do: two terms may not both produce it."""
    dipole = torch.zeros(1, 3)
    first = NodeOutput(torch.zeros(2), {keys.DIPOLE: dipole}, {keys.DIPOLE: "tnep"})
    with pytest.raises(OutputConflictError, match="'tnep' and 'electrostatic' both produce 'dipole'"):
        first.merge(NodeOutput(torch.zeros(2), {keys.DIPOLE: dipole}, {keys.DIPOLE: "electrostatic"}))
    tnep = {"model": {"name": "nep", "model_type": 1, "n_max": [2, 2], "basis_size": [3, 3], "l_max": [2, 0, 0],
                      "neuron": 4, "cutoff": CUTOFF, "cutoff_angular": 3.0}}
    summed = build_potential({**config({"name": "latent"}), "energy": {"sum": [config({"name": "latent"})["energy"], tnep]}})
    with pytest.raises(OutputConflictError, match="both produce 'dipole'"):
        summed(batch_of([salt_molecule(4)]))


@pytest.mark.parametrize("name", ["electrostatic", "ensemble_electrostatic"])
def test_the_dipole_loss_trains_the_charges(float64, name):
    """Latent / ensemble charges started at zero learn the reference dipoles from loss.dipole alone."""
    torch.manual_seed(0)
    charges = {"name": "latent", "hidden": [8]} if name == "electrostatic" else {"hidden": [8], "temperature": 0.1}
    potential = build_potential(config(charges, name=name))
    structures = [salt_molecule(seed, total=float(seed % 3 - 1)) for seed in range(6)]
    data = batch_of(structures, dipoles=[by_hand(a) for a in structures])
    weights = LossWeights(energy=0.0, forces=0.0, dipole=1.0)

    def dipole_loss() -> torch.Tensor:
        return total_loss(errors(data, potential(data, compute_forces=False)), weights)[0]

    optimizer = torch.optim.Adam(potential.parameters(), lr=0.05)
    start = float(dipole_loss().detach())
    for _ in range(100):
        optimizer.zero_grad()
        dipole_loss().backward()
        optimizer.step()
    assert float(dipole_loss().detach()) < 0.3 * start


def test_loss_dipole_in_mlip_train_reports_dipole_errors_in_validation_and_test(tmp_path, float64):
    """End to end: labels ``dipole`` in an extxyz, ``loss.dipole=1``; metrics.json has the dipole RMSE."""
    from hydra import compose, initialize_config_module

    from lightning_modules.train import run_training

    rng = np.random.default_rng(0)
    frames = []
    for k in range(12):  # water molecules with TIP3P-like charges (O -0.8, H +0.4)
        atoms = Atoms("OH2", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
        atoms.rattle(0.05, seed=k)
        atoms.rotate(rng.uniform(0, 360), rng.normal(size=3), center="COM")
        atoms.info["energy"] = -14.0 + 0.01 * k
        atoms.arrays["forces"] = np.zeros((3, 3))
        atoms.arrays["charges"] = np.array([-0.8, 0.4, 0.4])
        atoms.info["dipole"] = by_hand(atoms)
        del atoms.arrays["charges"]
        frames.append(atoms)
    path = tmp_path / "water.xyz"
    write(path, frames, format="extxyz")
    with initialize_config_module("mlip_plugins.conf", version_base=None):
        cfg = compose("train", overrides=[
            f"data.path={path}", "data.val_fraction=0.25", "data.test_fraction=0.25", "model=long_range",
            "model/solver=direct", "model.cutoff=3.0", "loss.dipole=1", "loss.normalize=none", "trainer.max_epochs=3",
            f"run_dir={tmp_path / 'run'}", "dtype=float64", "trainer.enable_progress_bar=false", "logger=[]"])
    run_training(cfg)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["dipole_count"] == 3 * 3 and metrics["test_dipole_count"] == 3 * 3  # 3 molecules each
    assert 0 < metrics["test_dipole_rmse"] < 1.0


def test_the_ase_calculator_gives_a_molecules_dipole_and_none_for_a_periodic_cell(float64):
    from mlip_plugins.calculator import MLIPCalculator

    torch.manual_seed(0)
    potential = build_potential(config({"name": "latent"}, solver="ewald"))
    molecule = salt_molecule(5, total=0.0)
    molecule.calc = MLIPCalculator(potential, dtype=torch.float64)
    molecule.get_potential_energy()
    charges = molecule.calc.results["charges"]
    np.testing.assert_allclose(molecule.get_dipole_moment(),
                               (charges[:, None] * (molecule.positions - molecule.get_center_of_mass())).sum(0), atol=1e-12)
    crystal = molecule.copy()
    crystal.set_cell([8.0, 8.0, 8.0])
    crystal.pbc = True
    crystal.calc = MLIPCalculator(potential, dtype=torch.float64)
    crystal.get_potential_energy()
    assert "dipole" not in crystal.calc.results
