"""``Potential.energy_dtype``: a float32 model's structure energies summed (with E0) in float64.

A structure's total energy is hundreds to thousands of eV (E0 times the atoms), which float32
rounds in the fifth or sixth digit; the mixed-precision refinement (``refine.dtype: mixed``)
needs it to float64's digits while the model computes in float32."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from ase.build import bulk
from torch_geometric.data import Batch

from mlip_plugins.data.structures import atoms_to_graph
from mlip_plugins.dtypes import default_dtype
from mlip_plugins.models import build_potential

CUTOFF = 4.5
MODELS = {
    # the autograd path (forces from autograd)
    "radial_mlp": {"descriptor": {"name": "radial", "n_max": 4, "basis_size": 5}, "readout": {"name": "mlp", "hidden": [8]}},
    # a plain NEP trains through its written-out chain rule (``create_graph=True``)
    "nep": {"model": {"name": "nep", "cutoff_angular": 3.6, "n_max": [3, 3], "basis_size": [4, 4], "l_max": [4, 2, 0],
                      "neuron": 6, "seed": 0}},
}


def _batch() -> Batch:
    rng = np.random.default_rng(0)
    graphs = []
    for a in (3.55, 3.6, 3.65):
        atoms = bulk("Cu", "fcc", a=a, cubic=True).repeat((2, 2, 2))  # 32 atoms
        atoms.positions += rng.normal(scale=0.1, size=atoms.positions.shape)
        graphs.append(atoms_to_graph(atoms, CUTOFF))
    return Batch.from_data_list(graphs)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_float64_sums_keep_a_float32_models_totals_to_float64_digits(name):
    """E0 = -1000 eV: float32 totals of -32000 eV are quantised to 4 meV; summed in float64 they
    equal the float64 model's (same weights) to the float32 model's own arithmetic (~1e-6 eV),
    and the forces do not change."""
    with default_dtype(torch.float32):
        torch.manual_seed(0)
        potential = build_potential({"elements": ["Cu"], "cutoff": CUTOFF, "energy": MODELS[name]})
        with torch.no_grad():
            potential.e0.fill_(-1000.0)
        batch = _batch()
    reference = copy.deepcopy(potential).double()
    wide = batch.apply(lambda value: value.double() if torch.is_floating_point(value) else value)
    exact = reference(wide, compute_forces=True, create_graph=True)["energy"].detach()

    plain = potential(batch, compute_forces=True, create_graph=True)
    potential.energy_dtype = torch.float64
    mixed = potential(batch, compute_forces=True, create_graph=True)

    assert plain["energy"].dtype == torch.float32 and mixed["energy"].dtype == torch.float64
    assert mixed["forces"].dtype == torch.float32
    assert torch.equal(mixed["forces"], plain["forces"])
    mixed_error = float((mixed["energy"].detach() - exact).abs().max())
    plain_error = float((plain["energy"].detach().double() - exact).abs().max())
    assert mixed_error < 1e-4
    assert plain_error > 1e-4  # what the float64 sums remove
