"""The on-disk graph store: items equal to the in-memory graphs, statistics equal to the in-memory
functions, resumable / locked / change-detecting builds, and training from a store."""

from __future__ import annotations

import threading

import filelock
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write

from lightning_modules.datamodule import EpochSeededSampler
from mlip_plugins.data.default_dataset import generate_default_dataset
from mlip_plugins.data.graph_cache import build_graphs
from mlip_plugins.data.reading import read_structures
from mlip_plugins.data.statistics import elements_in, energy_scale, fit_e0, label_variances
from mlip_plugins.data.store import build, layout
from mlip_plugins.data.store.build import build_store
from mlip_plugins.data.store.reader import GraphStore, open_store
from mlip_plugins.data.structures import DataError, LabelKeys

CUTOFF = 4.0


def _mixed_structures() -> list[Atoms]:
    """EMT metals (energy, forces, stress), four of them also with Born effective charges, a
    dipole and a polarizability (GPUMD's 6 or 9 values) in several combinations, plus the unusual:
    a molecule (no cell), a structure with charges, one without forces and one with a loss weight."""
    frames = generate_default_dataset(n_structures=20, seed=4)
    rng = np.random.default_rng(7)
    frames[4].arrays["bec"] = rng.normal(0.0, 1.0, (len(frames[4]), 9))
    frames[9].info["dipole"] = rng.normal(0.0, 2.0, 3)
    frames[13].info["pol"] = rng.normal(5.0, 1.0, 6)  # xx yy zz xy yz zx
    frames[5].arrays["bec"] = rng.normal(0.0, 1.0, (len(frames[5]), 9))
    frames[5].info["dipole"], frames[5].info["pol"] = rng.normal(0.0, 2.0, 3), rng.normal(5.0, 1.0, 9)
    molecule = Atoms("CuAuCu", positions=[[0, 0, 0], [2.4, 0, 0], [1.0, 2.1, 0.3]])
    molecule.calc = SinglePointCalculator(molecule, energy=-1.5, forces=np.arange(9.0).reshape(3, 3) / 10)
    charged = frames[1].copy()
    charged.arrays["charges"] = np.linspace(-0.5, 0.5, len(charged))
    charged.calc = SinglePointCalculator(charged, energy=-30.0, forces=np.zeros((len(charged), 3)))
    no_forces = frames[2].copy()
    no_forces.calc = SinglePointCalculator(no_forces, energy=-25.0)
    weighted = frames[3].copy()
    weighted.info["weight"] = 2.5
    weighted.calc = SinglePointCalculator(weighted, **frames[3].calc.results)
    return frames + [molecule, charged, no_forces, weighted]


@pytest.fixture
def mixed_xyz(tmp_path):
    path = tmp_path / "mixed.xyz"
    write(path, _mixed_structures(), format="extxyz")
    return path


def _in_memory(path, **kwargs):
    return build_graphs(read_structures(path, require_energy=True, **kwargs), CUTOFF)


def assert_same_graph(stored, fresh):
    assert list(stored.keys()) == list(fresh.keys())
    for key in fresh.keys():
        if key == "source":
            assert stored.source == fresh.source
            continue
        assert stored[key].dtype == fresh[key].dtype, key
        assert stored[key].shape == fresh[key].shape, key
        assert torch.equal(stored[key], fresh[key]), key


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_items_equal_atoms_to_graph(tmp_path, mixed_xyz, dtype):
    """Same fields, dtypes and values as the in-memory loader's graphs, in float32 and float64 runs
    (one store serves both), across shard boundaries."""
    manifest = build_store(tmp_path / "store", [mixed_xyz], CUTOFF, shard_size=7, progress=False)
    assert len(manifest["shards"]) == 4 and manifest["structures"] == 24
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        store, fresh = GraphStore(tmp_path / "store"), _in_memory(mixed_xyz)
        assert len(store) == len(fresh)
        for k in range(len(fresh)):
            assert_same_graph(store[k], fresh[k])
        assert hasattr(store[21], "charges") and not hasattr(store[20], "charges")
        labelled = {name: [k for k in range(len(store)) if bool(store[k][f"has_{name}"])] for name in ("bec", "dipole", "polarizability")}
        assert labelled == {"bec": [4, 5], "dipole": [5, 9], "polarizability": [5, 13]}
        assert torch.count_nonzero(store[4].bec) == 9 * store[4].num_nodes and torch.count_nonzero(store[13].polarizability) == 9
        assert store.elements == elements_in(fresh)
    finally:
        torch.set_default_dtype(previous)


def test_ase_db_source(tmp_path):
    from ase.db import connect

    frames = generate_default_dataset(n_structures=6, seed=2)
    with connect(tmp_path / "frames.db") as db:
        for atoms in frames:
            db.write(atoms)
    build_store(tmp_path / "store", [tmp_path / "frames.db"], CUTOFF, shard_size=4, progress=False)
    store, fresh = GraphStore(tmp_path / "store"), _in_memory(tmp_path / "frames.db")
    for k in range(len(fresh)):
        assert_same_graph(store[k], fresh[k])


def assert_same_batch(new, old):
    """Same class, fields (order, dtype, shape, layout, values) and slice/increment tables."""
    assert type(new).__name__ == type(old).__name__ and new.num_graphs == old.num_graphs
    assert list(new.keys()) == list(old.keys())
    for key in old.keys():
        if isinstance(old[key], torch.Tensor):
            assert (new[key].dtype, new[key].shape, new[key].is_contiguous()) == (old[key].dtype, old[key].shape, True), key
            assert torch.equal(new[key], old[key]), key
        else:
            assert new[key] == old[key], key
    for table in ("_slice_dict", "_inc_dict"):
        ours, theirs = getattr(new, table), getattr(old, table)
        assert list(ours) == list(theirs), table
        for key, value in theirs.items():
            assert (value is None and ours[key] is None) or torch.equal(ours[key], value), (table, key)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_batches_equal_collated_items(tmp_path, mixed_xyz, dtype):
    """GraphStore.batch (one gather per array and shard, one Batch) equals PyG's collate of the
    per-item graphs and of the in-memory loader's graphs: shuffled across shards, repeated
    indices, one structure, charges (all charged: the fast path; mixed: the per-item path)."""
    from torch_geometric.data import Batch

    build_store(tmp_path / "store", [mixed_xyz], CUTOFF, shard_size=7, progress=False)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        store, fresh = GraphStore(tmp_path / "store"), _in_memory(mixed_xyz)
        order = np.random.default_rng(1).permutation([i for i in range(len(fresh)) if i != 21]).tolist()
        batches = [order[k : k + 6] for k in range(0, len(order), 6)] + [[23, 0, 23, 8], [5], [21], [21, 21], [3, 21], [-1]]
        for indices in batches:
            new, old = store.batch(indices), Batch.from_data_list([store[i] for i in indices])
            assert_same_batch(new, old)
            assert_same_batch(new, Batch.from_data_list([fresh[i] for i in indices]))
            for ours, theirs in zip(new.to_data_list(), old.to_data_list(), strict=True):  # the tables work
                assert_same_graph(ours, theirs)
        with pytest.raises(IndexError):
            store.batch([0, len(store)])
    finally:
        torch.set_default_dtype(previous)


def test_training_loader_reads_whole_batches(tmp_path, mixed_xyz, float64):
    """The datamodule's loader over a store (PaddedGraphs.__getitems__ -> GraphStore.batch) gives
    the batches of today's per-item path (PyG DataLoader over the graphs), DDP padding (zero
    weights) included, in process and with DataLoader workers."""
    from torch.utils.data import DataLoader
    from torch_geometric.loader import DataLoader as PyGLoader

    from lightning_modules.datamodule import PaddedGraphs, collate_graphs
    from mlip_plugins.data.store.reader import StoreSubset

    build_store(tmp_path / "store", [mixed_xyz], CUTOFF, shard_size=5, progress=False)
    store = GraphStore(tmp_path / "store")
    train = StoreSubset(store, [i for i in range(2, 23) if i != 21])  # 20 structures: padded on 3 ranks
    items = [store[i] for i in train.indices]
    for rank, workers in ((0, 0), (2, 0), (1, 2)):
        sampler = EpochSeededSampler(len(train), seed=3, num_replicas=3, rank=rank)
        sampler.set_epoch(2)
        ours = list(DataLoader(PaddedGraphs(train), batch_size=3, sampler=sampler, collate_fn=collate_graphs,
                               num_workers=workers))
        theirs = list(PyGLoader(PaddedGraphs(items), batch_size=3, sampler=sampler))
        assert len(ours) == len(theirs) == 3
        for new, old in zip(ours, theirs):
            assert_same_batch(new, old)
        if rank == 2:
            assert (ours[-1].weight == 0).any()  # the padding copy is in this rank's last batch


def test_statistics_equal_in_memory_functions(tmp_path, mixed_xyz, float64):
    """E0 fit, energy scale (force RMS; per-atom energy spread without forces) and the loss's label
    variances of the whole store and of subsets equal today's in-memory functions."""
    build_store(tmp_path / "store", [mixed_xyz], CUTOFF, shard_size=5, progress=False)
    store, graphs = GraphStore(tmp_path / "store"), _in_memory(mixed_xyz)
    elements = elements_in(graphs) + [8]  # a model element absent from the data gets E0 = 0
    subsets = ([0, 3, 4, 9, 13, 17, 20, 21, 23], [1, 2, 5, 22])  # with and without the charged structure
    for stats, part in ((store.statistics(), graphs), *((store.statistics(sub), [graphs[i] for i in sub]) for sub in subsets)):
        e0 = fit_e0(part, elements)
        np.testing.assert_allclose(stats.fit_e0(elements), e0, rtol=1e-10, atol=1e-10)
        assert stats.energy_scale(elements, e0) == pytest.approx(energy_scale(part, elements, e0), rel=1e-10)
        assert stats.label_variances(elements, e0) == pytest.approx(label_variances(part, elements, e0), rel=1e-9)
    # BEC, dipole and polarizability (per atom, as the loss) are covered, from the source labels
    frames, variances = _mixed_structures(), store.statistics().label_variances(elements, fit_e0(graphs, elements))
    assert variances["bec"] == pytest.approx(np.var(np.concatenate([frames[k].arrays["bec"].ravel() for k in (4, 5)]), ddof=1))
    dipoles = np.concatenate([frames[k].info["dipole"] / len(frames[k]) for k in (5, 9)])
    assert variances["dipole"] == pytest.approx(np.var(dipoles, ddof=1))
    xx, yy, zz, xy, yz, zx = frames[13].info["pol"]
    pols = np.concatenate([frames[5].info["pol"] / len(frames[5]), np.array([xx, xy, zx, xy, yy, yz, zx, yz, zz]) / len(frames[13])])
    assert variances["polarizability"] == pytest.approx(np.var(pols, ddof=1))
    summary = store.manifest["summary"]
    assert summary["edges"] == sum(g.edge_index.shape[1] for g in graphs)
    assert summary["max_neighbors"] == max(int(torch.bincount(g.edge_index[1]).max()) for g in graphs)

    no_forces = tmp_path / "energies.xyz"
    frames = generate_default_dataset(n_structures=12, seed=6)
    for atoms in frames:
        atoms.calc = SinglePointCalculator(atoms, energy=atoms.calc.results["energy"])
    write(no_forces, frames, format="extxyz")
    build_store(tmp_path / "energies", [no_forces], CUTOFF, shard_size=5, progress=False)
    graphs, stats = _in_memory(no_forces), GraphStore(tmp_path / "energies").statistics()
    elements = elements_in(graphs)
    e0 = fit_e0(graphs, elements) + 0.01  # the spread after any E0, not only the fitted one
    assert stats.force_rms() is None
    assert stats.label_variances(elements, e0) == pytest.approx(label_variances(graphs, elements, e0), rel=1e-9)
    assert stats.energy_scale(elements, e0) == pytest.approx(energy_scale(graphs, elements, e0), rel=1e-10)


def test_a_killed_build_resumes_and_keeps_complete_shards(tmp_path, mixed_xyz, monkeypatch):
    real = build._build_shard

    def dies_on_chunk_2(task):
        if task["chunk"] == 2:
            raise KeyboardInterrupt  # the build is stopped in the middle
        return real(task)

    monkeypatch.setattr(build, "_build_shard", dies_on_chunk_2)
    with pytest.raises(KeyboardInterrupt):
        build_store(tmp_path / "store", [mixed_xyz], CUTOFF, shard_size=5, progress=False)
    assert not layout.read_manifest(tmp_path / "store")["complete"]
    with pytest.raises(DataError, match="incomplete graph store"):
        GraphStore(tmp_path / "store")
    kept = {name: (tmp_path / "store" / name).stat() for name in ("shard_00000.safetensors", "shard_00001.safetensors")}
    assert not (tmp_path / "store" / "shard_00002.safetensors").exists()

    built = []
    monkeypatch.setattr(build, "_build_shard", lambda task: built.append(task["chunk"]) or real(task))
    manifest = build_store(tmp_path / "store", [mixed_xyz], CUTOFF, shard_size=5, progress=False)
    assert manifest["complete"] and built == [2, 3, 4]
    for name, before in kept.items():
        after = (tmp_path / "store" / name).stat()
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    store, fresh = GraphStore(tmp_path / "store"), _in_memory(mixed_xyz)
    for k in range(len(fresh)):
        assert_same_graph(store[k], fresh[k])
    assert build_store(tmp_path / "store", [mixed_xyz], CUTOFF, shard_size=5, progress=False) == manifest  # done: no work
    assert built == [2, 3, 4]


def test_a_changed_source_or_setting_is_detected(tmp_path, mixed_xyz):
    build_store(tmp_path / "store", [mixed_xyz], CUTOFF, shard_size=5, progress=False)
    before = (tmp_path / "store" / layout.MANIFEST).read_bytes()
    text = mixed_xyz.read_text()
    mixed_xyz.write_text(text.replace("energy=", "energy=1", 1))  # same size class, other labels
    with pytest.raises(layout.StoreMismatchError, match="source content"):
        build_store(tmp_path / "store", [mixed_xyz], CUTOFF, shard_size=5, progress=False)
    with pytest.raises(layout.StoreMismatchError, match="cutoff"):
        open_store(tmp_path / "store", None, CUTOFF + 1.0, LabelKeys())
    with pytest.raises(layout.StoreMismatchError, match="settings"):
        build_store(tmp_path / "store", [mixed_xyz], CUTOFF, keys=LabelKeys(energy="free_energy"), require_energy=False,
                    shard_size=5, progress=False)
    assert (tmp_path / "store" / layout.MANIFEST).read_bytes() == before  # nothing the user had is touched
    # the default store folder is keyed on content: the changed file gets a store of its own
    first = open_store(None, str(mixed_xyz), CUTOFF, LabelKeys(), progress=False)
    mixed_xyz.write_text(text)
    second = open_store(None, str(mixed_xyz), CUTOFF, LabelKeys(), progress=False)
    assert first.directory != second.directory and first[0].energy != second[0].energy


def test_a_store_of_the_older_format_is_refused_in_one_line(tmp_path, mixed_xyz, monkeypatch):
    """A store of format 1 (no BEC, dipole or polarizability columns) is neither read nor built over:
    one line naming its manifest and what to do; the store is left as it was."""
    import json

    from mlip_plugins.data.store.reader import default_store_directory

    build_store(tmp_path / "store", [mixed_xyz], CUTOFF, shard_size=5, progress=False)
    path = tmp_path / "store" / layout.MANIFEST
    manifest = json.loads(path.read_text())
    manifest["format"] = manifest["key"]["format"] = 1
    path.write_text(json.dumps(manifest))
    before = {f.name: f.read_bytes() for f in (tmp_path / "store").iterdir()}
    expected = f"{path}: graph store format 1, this version reads format 2 .*remove the folder to rebuild it"
    with pytest.raises(layout.StoreError, match=expected):
        GraphStore(tmp_path / "store")
    with pytest.raises(layout.StoreError, match=expected):
        build_store(tmp_path / "store", [mixed_xyz], CUTOFF, shard_size=5, progress=False)
    assert {f.name: f.read_bytes() for f in (tmp_path / "store").iterdir()} == before
    # data.streaming's default store folders are keyed on the format: this version builds its own
    settings = build.store_settings(LabelKeys(), None, "raise", True)
    ours = default_store_directory(str(mixed_xyz), CUTOFF, settings)
    monkeypatch.setattr(layout, "FORMAT_VERSION", 1)
    assert default_store_directory(str(mixed_xyz), CUTOFF, settings) != ours


def test_an_incomplete_build_of_other_data_restarts_cleanly(tmp_path, mixed_xyz, monkeypatch):
    real = build._build_shard
    monkeypatch.setattr(build, "_build_shard", lambda task: real(task) if task["chunk"] < 2 else 1 / 0)
    with pytest.raises(ZeroDivisionError):
        build_store(tmp_path / "store", [mixed_xyz], CUTOFF, shard_size=5, progress=False)
    monkeypatch.setattr(build, "_build_shard", real)
    frames = _mixed_structures()[:9]
    write(mixed_xyz, frames, format="extxyz")
    manifest = build_store(tmp_path / "store", [mixed_xyz], CUTOFF, shard_size=5, progress=False)
    assert manifest["structures"] == 9 and sorted(p.name for p in (tmp_path / "store").glob("shard_*")) == [
        "shard_00000.safetensors", "shard_00001.safetensors"]
    store, fresh = GraphStore(tmp_path / "store"), _in_memory(mixed_xyz)
    for k in range(len(fresh)):
        assert_same_graph(store[k], fresh[k])


def test_concurrent_builds_are_locked_out(tmp_path, mixed_xyz):
    directory = tmp_path / "store"
    directory.mkdir()
    with filelock.FileLock(str(directory / layout.LOCK)):
        with pytest.raises(layout.StoreLockedError, match="another process is building"):
            build_store(directory, [mixed_xyz], CUTOFF, shard_size=5, progress=False, lock_timeout=0.2)
    assert layout.read_manifest(directory) is None
    # two builds at once: one builds, the other waits and finds the store complete
    results, errors = [], []

    def run():
        try:
            results.append(build_store(directory, [mixed_xyz], CUTOFF, shard_size=5, progress=False))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(results) == 2 and results[0] == results[1] and results[0]["complete"]
    assert len(GraphStore(directory)) == 24


def test_parallel_build_writes_the_same_shards(tmp_path, mixed_xyz):
    serial = build_store(tmp_path / "serial", [mixed_xyz], CUTOFF, shard_size=5, workers=1, progress=False)
    parallel = build_store(tmp_path / "parallel", [mixed_xyz], CUTOFF, shard_size=5, workers=2, progress=False)
    assert serial == parallel
    from safetensors.numpy import load_file

    for shard in serial["shards"]:  # (the files' JSON headers may list the arrays in another order)
        one, other = load_file(tmp_path / "serial" / shard["file"]), load_file(tmp_path / "parallel" / shard["file"])
        assert one.keys() == other.keys()
        for name in one:
            assert one[name].dtype == other[name].dtype and np.array_equal(one[name], other[name]), name


def test_bad_frames_name_file_frame_and_field(tmp_path):
    frames = generate_default_dataset(n_structures=8, seed=3)
    forces = frames[5].get_forces()
    forces[2, 1] = np.nan
    frames[5].calc = SinglePointCalculator(frames[5], energy=frames[5].get_potential_energy(), forces=forces)
    path = tmp_path / "bad.xyz"
    write(path, frames, format="extxyz")
    with pytest.raises(DataError, match=r"bad.xyz: frame 5: field 'forces'"):
        build_store(tmp_path / "store", [path], CUTOFF, shard_size=3, progress=False)
    manifest = build_store(tmp_path / "skipped", [path], CUTOFF, shard_size=3, on_error="skip", progress=False)
    assert manifest["structures"] == 7 and manifest["skipped"] == 1
    store = GraphStore(tmp_path / "skipped")
    assert [g.source.rsplit(":", 1)[1] for g in store] == ["0", "1", "2", "3", "4", "6", "7"]


def test_sampler_reads_only_each_process_indices(tmp_path, mixed_xyz):
    """Under DDP each process reads only its share of the epoch's permutation, and the union of the
    shares is the single-process order (the exact-resume property: the order depends on seed and epoch)."""
    from torch_geometric.loader import DataLoader

    from mlip_plugins.data.store.reader import StoreSubset

    build_store(tmp_path / "store", [mixed_xyz], CUTOFF, shard_size=5, progress=False)
    store = GraphStore(tmp_path / "store")
    train = StoreSubset(store, list(range(2, 24)))
    read: list[int] = []
    original = GraphStore.__getitem__

    def counting(self, index):
        read.append(int(index))
        return original(self, index)

    single = EpochSeededSampler(len(train), seed=3, num_replicas=1)
    single.set_epoch(4)
    expected = [train.indices[i] for i in single]
    shares = []
    for rank in range(2):
        sampler = EpochSeededSampler(len(train), seed=3, num_replicas=2, rank=rank)
        sampler.set_epoch(4)
        read.clear()
        GraphStore.__getitem__ = counting
        try:
            batches = list(DataLoader(train, batch_size=4, sampler=sampler))
        finally:
            GraphStore.__getitem__ = original
        shares.append(list(read))
        assert read == [train.indices[i] for i in sampler]
        assert sum(b.num_graphs for b in batches) == len(sampler)
    interleaved = [index for pair in zip(*shares) for index in pair]
    assert interleaved[: len(expected)] == expected
    # DataLoader workers open their own handles and give the same batches
    sampler = EpochSeededSampler(len(train), seed=3)
    sampler.set_epoch(1)
    in_process = [b.energy for b in DataLoader(train, batch_size=4, sampler=sampler)]
    with_workers = [b.energy for b in DataLoader(train, batch_size=4, sampler=sampler, num_workers=2)]
    assert all(torch.equal(a, b) for a, b in zip(in_process, with_workers)) and len(in_process) == len(with_workers)


def test_training_from_a_store(tmp_path, tiny_xyz, monkeypatch):
    """data.streaming=true builds the store from data.path and trains from it through run_training;
    the loss's label variances (loss.normalize=variance) come from the store's sums, not from a
    pass over the training graphs in memory."""
    import json

    from hydra import compose, initialize_config_module

    import lightning_modules.train as train
    from lightning_modules.train import run_training

    def in_memory_pass(*args):
        raise AssertionError("label variances computed from the graphs in memory")

    monkeypatch.setattr(train, "label_variances", in_memory_pass)

    store = tmp_path / "store"
    overrides = [f"data.path={tiny_xyz}", "data.streaming=true", f"data.store={store}", "data.store_workers=1",
                 "data.batch_size=4", "+trainer.max_steps=2", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
                 "model=composable", "model.cutoff=4.0", "model.energy.descriptor.n_max=3", "model.energy.readout.hidden=[8]",
                 "loss.normalize=variance", f"run_dir={tmp_path / 'run'}"]
    with initialize_config_module("mlip_plugins.conf", version_base=None):
        result = run_training(compose("train", overrides=overrides))
    assert np.isfinite(result["metrics"]["energy_rmse"]) and np.isfinite(result["metrics"]["forces_rmse"])
    assert GraphStore(store).manifest["complete"]
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert split["sources"]["store"] == str(store)
    assert sorted(split["train"] + split["val"] + split["test"]) == list(range(24))


def test_mlip_store_command(tmp_path, mixed_xyz, capsys):
    from mlip_plugins.cli.store import main

    assert main(["build", str(mixed_xyz), "--store", str(tmp_path / "store"), "--cutoff", str(CUTOFF), "--workers", "1",
                 "--shard-size", "10"]) == 0
    built = capsys.readouterr().out
    assert main(["info", str(tmp_path / "store")]) == 0
    assert capsys.readouterr().out == built and '"structures": 24' in built and '"shards": 3' in built
    assert main(["build", str(tmp_path / "missing.xyz"), "--store", str(tmp_path / "other"), "--cutoff", "4"]) == 2
    assert "missing.xyz: file not found" in capsys.readouterr().err
    assert main(["build", str(mixed_xyz), "--store", str(tmp_path / "store"), "--cutoff", "4", "--keys", "energie=E"]) == 2
    assert "unknown label name(s) energie" in capsys.readouterr().err
