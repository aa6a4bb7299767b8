"""Per-atom reference charges and per-structure total charges as the files store them (issue 17,
item 4): ASE's ``initial_charges`` (the n2p2 / RuNNer conversions, ASE-written extxyz) and
``info["charge"]`` are read with the default keys, a structure without a total charge takes the
sum of its charges, and a total charge that is not a number is one ``DataError`` line naming the
file, structure and field. The reference-dataset checks skip where the datasets are absent."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write

from mlip_plugins.data.loading import load_graph_file
from mlip_plugins.data.reading import read_structures
from mlip_plugins.data.reference_datasets import DatasetNotFound, datasets_root, dataset_path
from mlip_plugins.data.structures import DataError, LabelKeys


def _ion_pair(**info) -> Atoms:
    atoms = Atoms("NaCl", positions=[[0, 0, 0], [2.4, 0, 0]])
    atoms.set_initial_charges([0.7, -0.2])
    atoms.info.update(info)
    atoms.calc = SinglePointCalculator(atoms, energy=-1.0, forces=np.zeros((2, 3)))
    return atoms


def test_initial_charges_and_info_charge_read_with_the_default_keys(tmp_path):
    path = tmp_path / "ions.extxyz"
    write(path, [_ion_pair(charge=0.5), _ion_pair()])
    charged, plain = read_structures(path, LabelKeys())
    np.testing.assert_allclose(charged.labels["charges"], [0.7, -0.2])
    assert charged.labels["total_charge"] == 0.5          # ASE's info["charge"]
    assert plain.labels["total_charge"] == pytest.approx(0.5)  # no total: the sum of the charges
    graphs = load_graph_file(str(path), 3.0, LabelKeys(), use_cache=False)
    np.testing.assert_allclose(graphs[0].charges.numpy(), [0.7, -0.2])
    assert float(graphs[0].total_charge) == 0.5


def test_a_named_key_wins_over_the_fallbacks(tmp_path):
    atoms = _ion_pair(charge=0.5, total_charge=1.0)
    atoms.arrays["hirshfeld"] = np.array([0.9, 0.1])
    path = tmp_path / "ions.extxyz"
    write(path, atoms)
    [s] = read_structures(path, LabelKeys(charges="hirshfeld"))
    np.testing.assert_allclose(s.labels["charges"], [0.9, 0.1])
    assert s.labels["total_charge"] == 1.0


@pytest.mark.parametrize("bad", ["abc", "nan"])
def test_a_total_charge_that_is_not_a_number_is_one_clear_error(tmp_path, bad):
    path = tmp_path / "ions.extxyz"
    write(path, [_ion_pair(total_charge=0.0), _ion_pair(total_charge=bad)])
    with pytest.raises(DataError, match=r"ions\.extxyz.*1.*'total_charge'.*not (a number|finite)"):
        read_structures(path, LabelKeys())


# ---------------------------------------------------------------- the reference datasets, as they are
def _dataset(folder: str, name: str):
    if not datasets_root().is_dir():
        pytest.skip(f"reference datasets not found at {datasets_root()} (set MLIP_DATASETS)")
    try:
        return dataset_path(folder, name)
    except DatasetNotFound as exc:
        pytest.skip(str(exc))


@pytest.mark.parametrize("folder, name, totals", [
    ("ko2021_carbon_chain_4g_subset", "ko2021_carbon_chain_4g_subset.extxyz", {0.0, 1.0}),
    ("ko2021_au2_mgo_4g_subset", "ko2021_au2_mgo_4g_subset.extxyz", {0.0}),
    ("ko2021_nacl_clusters_4g_subset", "test_NaCl_first14.xyz", {1.0}),  # no total_charge key: the charges' sum
    ("water_rpbe_d3_4g_n2p2_subset", "water_rpbe_d3_4g_n2p2_subset.extxyz", {0.0}),
])
def test_n2p2_conversions_carry_hirshfeld_charges_and_total_charge_with_default_keys(folder, name, totals):
    """No ``data.keys.charges=initial_charges`` needed: the graphs the trainer sees carry the
    per-atom Hirshfeld charges and each structure's total charge."""
    path = _dataset(folder, name)
    graphs = load_graph_file(str(path), 3.0, LabelKeys(), use_cache=False)
    frames = read(path, ":")
    assert len(graphs) == len(frames)
    for graph, atoms in zip(graphs, frames):
        np.testing.assert_allclose(graph.charges.numpy(), atoms.get_initial_charges())
        # the water file's charges sum to ~2e-4 e, not exactly 0 (as stored by n2p2)
        assert abs(float(graph.charges.sum()) - float(graph.total_charge)) < 1e-3
    assert {round(float(g.total_charge), 6) for g in graphs} == totals


def test_nacl_clusters_are_both_cations():
    """Na9Cl8+ and Na8Cl8+: the same total charge +1 with a neutral Na removed (Ko 2021)."""
    path = _dataset("ko2021_nacl_clusters_4g_subset", "test_NaCl_first14.xyz")
    structures = read_structures(path, LabelKeys())
    sizes = {len(s.atoms) for s in structures}
    assert sizes == {16, 17}
    assert all(s.labels["total_charge"] == pytest.approx(1.0, abs=1e-5) for s in structures)


def test_spice_total_charges_obey_the_born_charge_sum_rule():
    """SPICE subsets: total_charge is in some frames and absent in others (partial labels); where
    absent it reads as 0, and the Born effective charges' sum rule (sum_i Z*_i = Q 1 for a
    molecule) confirms every total the reader reports."""
    if not datasets_root().is_dir():
        pytest.skip(f"reference datasets not found at {datasets_root()} (set MLIP_DATASETS)")
    folder = _dataset("spice_subsets_bec_les_fit", "qmugs.xyz").parent
    checked = partial = 0
    for path in sorted(folder.glob("*.xyz")):
        graphs = load_graph_file(str(path), 3.0, LabelKeys(), use_cache=False)
        for graph, atoms in zip(graphs, read(path, ":")):
            partial += "total_charge" not in atoms.info
            born = atoms.arrays["bec"].reshape(-1, 3, 3).sum(axis=0)
            np.testing.assert_allclose(born, float(graph.total_charge) * np.eye(3), atol=0.05)
            checked += 1
    assert checked == 673 and partial > 0
