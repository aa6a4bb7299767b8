"""Data pipeline: reading with key mapping, partial labels, neighbour lists, caching, splits, E0."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write
from ase.neighborlist import neighbor_list as ase_neighbor_list

from lightning_modules.datamodule import AtomsDataModule, EpochSeededSampler
from mlip_plugins.data.graph_cache import build_graphs, load_graphs, save_graphs
from mlip_plugins.data.neighbors import neighbor_list
from mlip_plugins.data.reading import read_structures
from mlip_plugins.data.statistics import fit_e0
from mlip_plugins.data.structures import LabelKeys


def _pairs(edge_index, shifts):
    return sorted((int(j), int(i), *map(int, s)) for (j, i), s in zip(edge_index.T, shifts))


@pytest.mark.parametrize(
    "atoms, cutoff",
    [
        (bulk("Cu", "fcc", a=3.6), 5.0),  # primitive triclinic cell far smaller than the cutoff
        (bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 1, 1)), 4.0),
        (molecule("CH3CH2OH"), 2.5),  # non-periodic
    ],
)
def test_neighbor_list_matches_ase(atoms, cutoff):
    atoms = atoms.copy()
    atoms.rattle(0.05, seed=2)
    edge_index, shifts = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, cutoff)
    i, j, s = ase_neighbor_list("ijS", atoms, cutoff)
    assert _pairs(edge_index, shifts) == sorted((int(b), int(a), *map(int, sh)) for a, b, sh in zip(i, j, s))


def test_mixed_boundaries_surface():
    from ase.build import fcc111

    slab = fcc111("Cu", size=(2, 2, 3), vacuum=5.0)  # pbc = (T, T, F)
    edge_index, shifts = neighbor_list(slab.positions, slab.cell.array, slab.pbc, 4.0)
    i, j, s = ase_neighbor_list("ijS", slab, 4.0)
    assert len(i) == edge_index.shape[1]
    assert np.all(shifts[:, 2] == 0)


def _labelled(atoms, energy, forces=None, stress=None, **info):
    atoms = atoms.copy()
    atoms.info.update(info)
    results = {"energy": energy}
    if forces is not None:
        results["forces"] = forces
    if stress is not None:
        results["stress"] = stress
    atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms


def test_custom_keys_partial_labels_virial_and_weights(tmp_path):
    cu = bulk("Cu", "fcc", a=3.6, cubic=True)
    a = cu.copy()
    a.info.update({"REF_energy": -10.0, "config_weight": 2.0, "REF_virial": " ".join(["1.0"] * 9)})
    a.arrays["REF_forces"] = np.full((4, 3), 0.1)
    b = cu.copy()
    b.info["REF_energy"] = -9.0  # no forces, no virial: partial labels
    path = tmp_path / "keys.xyz"
    write(path, [a, b], format="extxyz")
    keys = LabelKeys(energy="REF_energy", forces="REF_forces", virial="REF_virial", weight="config_weight")
    structures = read_structures(path, keys)
    assert structures[0].labels["energy"] == -10.0
    assert structures[0].labels["weight"] == 2.0
    np.testing.assert_allclose(structures[0].labels["stress"], -np.ones((3, 3)) / cu.get_volume())
    assert "forces" not in structures[1].labels and "stress" not in structures[1].labels
    graphs = build_graphs(structures, 3.0)
    assert bool(graphs[0].has_forces) and not bool(graphs[1].has_forces)
    assert graphs[1].weight.item() == 1.0


def test_graph_cache_round_trip(tmp_path):
    atoms = [_labelled(bulk("Cu", "fcc", a=3.6).repeat((2, 1, 1)), -3.0, np.zeros((2, 3))),
             _labelled(molecule("H2O"), -14.0, np.ones((3, 3)))]
    atoms[1].arrays["charges"] = np.array([-0.8, 0.4, 0.4])
    path = tmp_path / "mix.xyz"
    write(path, atoms, format="extxyz")
    graphs = build_graphs(read_structures(path), 3.0)
    save_graphs(graphs, tmp_path / "cache.pt")
    loaded = load_graphs(tmp_path / "cache.pt")
    for a, b in zip(graphs, loaded):
        for key in a.keys():
            if key == "source":
                assert a.source == b.source
            else:
                assert torch.equal(a[key], b[key]), key
    assert not hasattr(loaded[0], "charges") or loaded[0].charges is None


def test_e0_least_squares_recovers_exact_references():
    rng = np.random.default_rng(0)
    true = {29: -3.5, 79: -3.0, 13: -2.0}
    graphs = []
    for _ in range(12):
        numbers = rng.choice(list(true), size=rng.integers(2, 9))
        atoms = Atoms(numbers=numbers, positions=rng.normal(size=(len(numbers), 3)) * 5)
        graph_energy = sum(true[z] for z in numbers)
        from mlip_plugins.data.structures import atoms_to_graph

        graphs.append(atoms_to_graph(atoms, 1.0, {"energy": graph_energy}))
    e0 = fit_e0(graphs, sorted(true))
    np.testing.assert_allclose(e0, [true[z] for z in sorted(true)], atol=1e-6)
    # a mapping fixes the listed elements (symbols or Z) and the rest is fitted on what remains
    np.testing.assert_allclose(fit_e0(graphs, sorted(true), fixed={"Cu": 1.0, "Al": 2.0, 79: 3.0}), [2.0, 1.0, 3.0])
    partial = fit_e0(graphs, sorted(true), fixed={sorted(true)[0]: true[sorted(true)[0]]})
    np.testing.assert_allclose(partial, [true[z] for z in sorted(true)], atol=1e-6)


def test_datamodule_fraction_split_saved_and_reused(tiny_xyz, tmp_path):
    split_file = tmp_path / "split.json"
    dm = AtomsDataModule(cutoff=4.0, path=str(tiny_xyz), val_fraction=0.25, test_fraction=0.25, split_file=str(split_file))
    dm.setup()
    assert len(dm.train_graphs) + len(dm.val_graphs) + len(dm.test_graphs) == 24
    assert len(dm.val_graphs) == 6
    dm.save_split(split_file)
    saved = json.loads(split_file.read_text())
    assert sorted(saved["train"] + saved["val"] + saved["test"]) == list(range(24))
    again = AtomsDataModule(cutoff=4.0, path=str(tiny_xyz), val_fraction=0.1, test_fraction=0.1, split_file=str(split_file))
    again.setup()
    assert [g.source for g in again.val_graphs] == [g.source for g in dm.val_graphs]


def test_datamodule_separate_files(tiny_xyz):
    dm = AtomsDataModule(cutoff=4.0, train_path=str(tiny_xyz), val_path=str(tiny_xyz), test_path=str(tiny_xyz))
    dm.setup()
    assert len(dm.train_graphs) == len(dm.val_graphs) == len(dm.test_graphs) == 24


def test_epoch_seeded_sampler_depends_only_on_seed_and_epoch():
    a, b = EpochSeededSampler(50, seed=3), EpochSeededSampler(50, seed=3)
    a.set_epoch(4)
    b.set_epoch(4)
    torch.rand(10)  # the global RNG must not matter
    assert list(a) == list(b)
    b.set_epoch(5)
    assert list(a) != list(b)


def test_default_dataset_is_deterministic_and_multi_element():
    from mlip_plugins.data.default_dataset import EMT_ELEMENTS, generate_default_dataset

    first = generate_default_dataset(15, seed=4)
    second = generate_default_dataset(15, seed=4)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a.positions, b.positions)
        assert a.get_potential_energy() == b.get_potential_energy()
    symbols = {s for a in generate_default_dataset(60, seed=0) for s in a.get_chemical_symbols()}
    assert symbols == set(EMT_ELEMENTS)
    kinds = {a.info["config_type"] for a in first}
    assert kinds == {"pure_bulk", "alloy_bulk", "vacancy", "surface", "md"}
    assert all(a.calc.results["forces"].shape == (len(a), 3) for a in first)


def test_ase_db_input(tmp_path):
    from ase.db import connect

    path = tmp_path / "set.db"
    with connect(path) as db:
        for k in range(3):
            atoms = _labelled(bulk("Cu", "fcc", a=3.6 + 0.01 * k, cubic=True), -3.0 - k, np.full((4, 3), 0.01 * k))
            db.write(atoms)
    structures = read_structures(path)
    assert [s.labels["energy"] for s in structures] == [-3.0, -4.0, -5.0]
    np.testing.assert_allclose(structures[2].labels["forces"], 0.02)
