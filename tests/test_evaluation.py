"""Evaluation metrics: the per-structure total-energy error that JARVIS-Leaderboard's mlearn tasks score."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write

from mlip_plugins.calculator import MLIPCalculator
from mlip_plugins.data.loading import load_graph_file
from mlip_plugins.data.structures import LabelKeys
from mlip_plugins.evaluation import metrics_from_predictions, predict, structure_energy_errors
from mlip_plugins.models import build_potential

CUTOFF = 4.5


def _frames_of_three_sizes() -> list:
    """Rattled Cu/Au cells of 4, 8 and 16 atoms labelled by EMT: sizes differ so that per-atom
    and per-structure errors rank differently."""
    rng = np.random.default_rng(7)
    frames = []
    for repeat in [(1, 1, 1), (2, 1, 1), (2, 2, 1), (1, 1, 1)]:
        atoms = bulk("Cu", "fcc", a=3.7, cubic=True).repeat(repeat)
        atoms.symbols[0] = "Au"
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        atoms.calc = EMT()
        atoms.calc = SinglePointCalculator(atoms, energy=atoms.get_potential_energy(), forces=atoms.get_forces())
        frames.append(atoms)
    return frames


def test_structure_energy_errors_are_the_total_energy_errors_of_each_structure(float64, tmp_path):
    """The per-structure error equals (the model's total energy through the ASE calculator) minus
    (the file's energy label), structure by structure; its MAE is reported beside the per-atom one."""
    torch.manual_seed(0)
    potential = build_potential({"elements": ["Cu", "Au"], "cutoff": CUTOFF,
                                 "energy": {"descriptor": {"name": "radial", "n_max": 4, "basis_size": 5},
                                            "readout": {"name": "mlp", "hidden": [8]}}})
    frames = _frames_of_three_sizes()
    path = tmp_path / "frames.xyz"
    write(path, frames, format="extxyz")
    pred = predict(potential, load_graph_file(str(path), CUTOFF, LabelKeys(), None), batch_size=3)

    expected = []
    for atoms in frames:
        label = atoms.get_potential_energy()
        probe = atoms.copy()
        probe.calc = MLIPCalculator(potential, dtype=torch.float64)
        expected.append(probe.get_potential_energy() - label)
    expected = np.array(expected)
    # (the file stores the labels to about ten digits)
    np.testing.assert_allclose(structure_energy_errors(pred), expected, rtol=1e-7, atol=1e-8)

    metrics = metrics_from_predictions(pred)
    assert metrics["energy_structure_mae"] == pytest.approx(np.abs(expected).mean(), rel=1e-7)
    assert metrics["energy_structure_rmse"] == pytest.approx(np.sqrt(np.mean(expected ** 2)), rel=1e-7)
    sizes = np.array([len(a) for a in frames])
    assert metrics["energy_mae"] == pytest.approx(np.abs(expected / sizes).mean(), rel=1e-7)


def test_the_metrics_table_shows_the_per_structure_energy_row():
    """mlip-eval's table carries the total-energy error per structure beside the per-atom one."""
    from mlip_plugins.evaluation import format_table

    pred = {"energy_pred": np.array([0.001, -0.002]), "energy_true": np.zeros(2), "natoms": np.array([10, 40])}
    for key in ("forces", "stress", "dipole"):
        pred.update({f"{key}_pred": np.zeros(0), f"{key}_true": np.zeros(0)})
    metrics = metrics_from_predictions(pred)
    assert metrics["energy_structure_mae"] == pytest.approx((0.01 + 0.08) / 2)
    row = next(line for line in format_table(metrics, "t").splitlines() if line.startswith("E/struct"))
    assert row.split()[2:] == [f"{1000 * np.sqrt((0.01 ** 2 + 0.08 ** 2) / 2):.3f}", "45.000", "2"]
