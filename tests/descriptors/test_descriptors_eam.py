"""EAM-like descriptor: densities against a direct neighbour loop, embeddings, isolated atoms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from torch_geometric.data import Batch

from mlip_plugins.data.structures import atoms_to_graph
from mlip_plugins.descriptors.eam import EAMDescriptor
from mlip_plugins.elements import ElementMap
from mlip_plugins.graph import build_atomic_graph
from mlip_plugins.models.builder import build_potential
from mlip_plugins.nn import chebyshev_basis

ELEMENTS = ["Cu", "Au"]


# float64 for every test here (conftest's fixture; conftest already runs on one thread)
pytestmark = pytest.mark.usefixtures("float64")


def _graph(atoms: Atoms, cutoff: float):
    data = Batch.from_data_list([atoms_to_graph(atoms, cutoff)])
    return build_atomic_graph(data, ElementMap(ELEMENTS)(data.z))


def _crystal() -> Atoms:
    atoms = bulk("Cu", "fcc", a=3.6).repeat((2, 1, 1))
    atoms.symbols[1] = "Au"
    atoms.rattle(0.1, seed=2)
    return atoms


@pytest.mark.parametrize("per_pair", [True, False])
def test_densities_and_embeddings_match_direct_sums(per_pair):
    eps = 0.05
    descriptor = EAMDescriptor(
        num_species=2, cutoff=4.5, n_densities=3, basis_size=4,
        embeddings=["sqrt", "linear", "square", "rho_log_rho"], eps=eps, per_pair=per_pair,
    )
    graph = _graph(_crystal(), descriptor.cutoff)
    coefficients = descriptor.radial.coefficients.coefficients.detach()
    basis = chebyshev_basis(graph.edge_len, descriptor.cutoff, 4).detach()
    src, dst = graph.edge_index
    expected_rho = torch.zeros(graph.num_atoms, 3)
    for e in range(graph.edge_index.shape[1]):
        table = coefficients[graph.species[dst[e]], graph.species[src[e]]] if per_pair else coefficients[0, 0]
        expected_rho[dst[e]] += (table @ basis[e]) ** 2
    with torch.no_grad():
        rho = descriptor.densities(graph)
        features = descriptor(graph).view(graph.num_atoms, 3, 4)
    torch.testing.assert_close(rho, expected_rho, rtol=1e-12, atol=1e-12)
    assert (rho > 0).all()
    torch.testing.assert_close(features[..., 0], torch.sqrt(rho + eps) - math.sqrt(eps))
    torch.testing.assert_close(features[..., 1], rho)
    torch.testing.assert_close(features[..., 2], rho**2)
    torch.testing.assert_close(features[..., 3], rho * torch.log(rho + eps))


def test_isolated_atom_has_zero_features_so_its_energy_is_e0():
    potential = build_potential({
        "elements": ELEMENTS, "cutoff": 4.0,
        "energy": {"descriptor": {"name": "eam", "embeddings": ["sqrt", "linear", "square", "rho_log_rho"]},
                   "readout": {"name": "linear"}},
    }).double()
    potential.e0.copy_(torch.tensor([-3.5, -2.0]))
    atoms = Atoms("CuAu", positions=[[0, 0, 0], [6.0, 0, 0]])
    out = potential(Batch.from_data_list([atoms_to_graph(atoms, 4.0)]))
    torch.testing.assert_close(out["energy"], torch.tensor([-5.5]))
    torch.testing.assert_close(out["forces"], torch.zeros(2, 3))


def test_bad_options_are_reported():
    with pytest.raises(ValueError, match="embeddings"):
        EAMDescriptor(num_species=1, embeddings=["cube"])
    with pytest.raises(ValueError, match="n_densities"):
        EAMDescriptor(num_species=1, n_densities=0)
    with pytest.raises(ValueError, match="eps"):
        EAMDescriptor(num_species=1, eps=0.0)
