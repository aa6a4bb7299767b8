"""Message-passing refinement: base built from the registry, receptive field of T layers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from torch_geometric.data import Batch

from mlip_plugins.data.structures import atoms_to_graph
from mlip_plugins.elements import ElementMap
from mlip_plugins.graph import build_atomic_graph
from mlip_plugins.models.builder import instantiate_plugin
from mlip_plugins.registry import PluginError

ELEMENTS = ["Cu", "Au"]


# float64 for every test here (conftest's fixture; conftest already runs on one thread)
pytestmark = pytest.mark.usefixtures("float64")


def _build(**config):
    torch.manual_seed(0)
    return instantiate_plugin("descriptors", {"name": "message_passing", **config}, "test", num_species=2, cutoff=3.0)


def _features(descriptor, atoms: Atoms) -> torch.Tensor:
    data = Batch.from_data_list([atoms_to_graph(atoms, descriptor.cutoff)])
    with torch.no_grad():
        return descriptor(build_atomic_graph(data, ElementMap(ELEMENTS)(data.z)))


def _chain(last: float) -> Atoms:
    """Four atoms on a line, 2.4 Å apart (cutoff 3 Å: only consecutive atoms are neighbours)."""
    return Atoms("CuAuCuAu", positions=[[0, 0, 0], [2.4, 0, 0], [4.8, 0.2, 0], [last, 0.1, 0.3]])


def test_zero_layers_return_the_base_features():
    refinement = _build(base={"name": "angular", "n_max": 2, "l_max": 3}, layers=0)
    base = refinement.base
    assert refinement.dim == base.dim and base.cutoff == 3.0
    atoms = _chain(7.2)
    data = Batch.from_data_list([atoms_to_graph(atoms, 3.0)])
    graph = build_atomic_graph(data, ElementMap(ELEMENTS)(data.z))
    torch.testing.assert_close(refinement(graph), base(graph))
    counts = sum(p.numel() for p in refinement.parameters())
    assert counts == sum(p.numel() for p in base.parameters())


@pytest.mark.parametrize("layers", [1, 2])
def test_receptive_field_is_layers_plus_one_cutoffs(layers):
    """Atom 3 is three hops from atom 0: seen through base + 2 layers, not base + 1 layer."""
    refinement = _build(base={"name": "radial", "n_max": 3, "basis_size": 4}, layers=layers, width=5)
    assert refinement.dim == 5
    before = _features(refinement, _chain(7.2))
    after = _features(refinement, _chain(7.0))
    assert not torch.allclose(before[2], after[2])  # the direct neighbour always changes
    changed = (before[0] - after[0]).abs().max().item()
    if layers == 1:
        assert changed < 1e-14
    else:
        assert changed > 1e-8


def test_base_cutoff_and_unknown_base():
    refinement = _build(base={"name": "eam", "cutoff": 2.5}, layers=1)
    assert refinement.base.cutoff == 2.5 and refinement.filter_cutoff == 3.0 and refinement.cutoff == 3.0
    with pytest.raises(PluginError, match="radial"):
        _build(base={"name": "radiall"})
