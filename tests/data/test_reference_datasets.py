"""Every folder of the reference DFT datasets reads as it is through the project's reader
(``mlip_plugins.data.reference_datasets.READERS``: keys and formats, no hand edits), with the
labels each file is known to carry: partial labels, per-atom reference charges, per-structure
total charges. Skipped where the datasets are absent (``MLIP_DATASETS``)."""

from __future__ import annotations

import numpy as np
import pytest

from mlip_plugins.data.graph_cache import build_graphs
from mlip_plugins.data.reading import read_structures
from mlip_plugins.data.reference_datasets import READERS, DatasetNotFound, datasets_root, files_of
from mlip_plugins.data.structures import LabelKeys


def _root():
    root = datasets_root()
    if not root.is_dir():
        pytest.skip(f"reference datasets not found at {root} (set MLIP_DATASETS)")
    return root


def test_every_dataset_folder_has_a_reader():
    folders = {p.name for p in _root().iterdir() if p.is_dir()}
    assert folders - set(READERS) == set(), "a new dataset folder needs an entry in READERS"


@pytest.mark.parametrize("folder", sorted(READERS))
def test_folder_reads_without_hand_edits(folder):
    _root()
    try:
        groups = [(reader, files_of(folder, reader)) for reader in READERS[folder]]
    except DatasetNotFound as exc:
        pytest.skip(str(exc))
    for reader, files in groups:
        assert files, f"{folder}/{reader.pattern}: no files"
        for path in files:
            structures = read_structures(path, LabelKeys(**reader.keys), file_format=reader.file_format,
                                         require_energy=reader.require_energy)
            for label in reader.labels:
                missing = [s.source for s in structures if label not in s.labels]
                assert not missing, f"{label} missing in {missing[:3]}"
            graphs = build_graphs(structures[:20], cutoff=3.0)  # the graph step of the pipeline
            assert all(g.num_nodes == len(s.atoms) for g, s in zip(graphs, structures))


def test_charged_carbon_chains_carry_their_total_charges_and_hirshfeld_charges():
    """Ko 2021 C10H2 / C10H3+: the total charge differs between structures, and the per-atom
    reference charges sum to it."""
    _root()
    try:
        [reader] = READERS["ko2021_carbon_chain_4g_subset"]
        [path] = files_of("ko2021_carbon_chain_4g_subset", reader)
    except DatasetNotFound as exc:
        pytest.skip(str(exc))
    structures = read_structures(path, LabelKeys(**reader.keys))
    totals = np.array([s.labels["total_charge"] for s in structures])
    assert set(np.round(totals).tolist()) == {0.0, 1.0}
    sums = np.array([s.labels["charges"].sum() for s in structures])
    np.testing.assert_allclose(sums, totals, atol=0.05)
