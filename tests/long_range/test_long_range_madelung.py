"""Madelung constants of ionic crystals and Wigner crystals with Ewald, PME and P3M.

M = -E / n_fu in Gaussian units (prefactor 1) with the geometries of
``mlip_plugins.long_range.reference_crystals``; references are high-precision Ewald values.
Ewald must reach 1e-6 relative; PME and P3M the accuracy they were set up for.
"""

from __future__ import annotations

import pytest
import torch
from torch_geometric.data import Batch

from mlip_plugins.data.structures import atoms_to_graph
from mlip_plugins.graph import build_atomic_graph
from mlip_plugins.long_range import EwaldSolver, P3MSolver, PMESolver, tune_parameters
from mlip_plugins.long_range.reference_crystals import CRYSTALS

IONIC = ["NaCl_primitive", "NaCl_cubic", "CsCl", "zincblende", "wurtzite", "fluorite"]
WIGNER = ["wigner_sc", "wigner_bcc_cubiccell"]
SOLVERS = {"ewald": EwaldSolver, "pme": PMESolver, "p3m": P3MSolver}


def graph_of(atoms_list, cutoff):
    data = Batch.from_data_list([atoms_to_graph(a, cutoff) for a in atoms_list])
    return build_atomic_graph(data, torch.zeros(data.num_nodes, dtype=torch.long))


def madelung(solver, name: str, scale: float) -> float:
    crystal = CRYSTALS[name]
    atoms = crystal.atoms(scale)
    graph = graph_of([atoms], solver.cutoff)
    energy = float(solver(graph, torch.tensor(atoms.get_initial_charges()))["energy"].sum())
    if name.startswith("wigner"):  # energy per particle = -M/2
        return -2.0 * energy / len(atoms) * scale
    return -energy / crystal.formula_units * scale


@pytest.mark.parametrize("name", IONIC)
@pytest.mark.parametrize("scale", [1.0, 2.8])
def test_ewald_madelung_to_1e6(float64, name, scale):
    solver = EwaldSolver(cutoff=4.4 * scale, accuracy=1e-9, prefactor=1.0)
    assert madelung(solver, name, scale) == pytest.approx(CRYSTALS[name].madelung, rel=1e-6)


@pytest.mark.parametrize("method", ["pme", "p3m"])
@pytest.mark.parametrize("name", IONIC)
def test_mesh_madelung_to_set_accuracy(float64, method, name):
    """Default parameters for accuracy 1e-4 and tuned parameters for 1e-5 both reach their accuracy."""
    scale = 2.0
    solver = SOLVERS[method](cutoff=4.4 * scale, accuracy=1e-4, prefactor=1.0)
    assert abs(madelung(solver, name, scale) / CRYSTALS[name].madelung - 1) <= 1e-4
    params = tune_parameters(method, CRYSTALS[name].atoms(scale), accuracy=1e-5)
    params.pop("name")
    tuned = SOLVERS[method](prefactor=1.0, **params)
    assert abs(madelung(tuned, name, scale) / CRYSTALS[name].madelung - 1) <= 1e-5


@pytest.mark.parametrize("method", ["ewald", "pme", "p3m"])
@pytest.mark.parametrize("name", WIGNER)
def test_charged_cell_with_neutralising_background(float64, method, name):
    """One species (net charge) in a uniform background: energy per particle -M/2, for any smearing."""
    accuracy = 1e-9 if method == "ewald" else 1e-5
    values = []
    for smearing_factor in (0.8, 1.0):
        solver = SOLVERS[method](cutoff=4.4, accuracy=accuracy, prefactor=1.0)
        solver = SOLVERS[method](cutoff=4.4, smearing=solver.smearing * smearing_factor, accuracy=accuracy, prefactor=1.0)
        values.append(madelung(solver, name, 1.0))
    tol = 1e-6 if method == "ewald" else 1e-5
    for value in values:
        assert value == pytest.approx(CRYSTALS[name].madelung, rel=tol)
