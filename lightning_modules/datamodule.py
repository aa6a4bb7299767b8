"""``AtomsDataModule``: structures from files (or the embedded default set) to PyG batches.

Graphs (with vesin neighbour lists) are built once and cached on disk; the train/val/test
split is drawn from a seed, saved as ``split.json`` with the run, and reused on resume.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Iterator, Mapping

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torch_geometric.data import Batch

from lightning_modules.config_checks import check_keywords
from mlip_plugins.data.default_dataset import default_dataset_path
from mlip_plugins.data.fingerprint import file_fingerprint
from mlip_plugins.data.loading import load_graph_file
from mlip_plugins.data.structures import DataError, LabelKeys, chunk_graphs
from mlip_plugins.models.builder import ConfigError
from mlip_plugins.atomic_files import atomic_write_text

log = logging.getLogger("mlip_plugins.data")


class EpochSeededSampler(DistributedSampler):
    """A shuffling sampler whose order depends only on (seed, epoch).

    Lightning calls ``set_epoch`` every epoch, so a run resumed from a checkpoint sees the
    same batches as an uninterrupted one (the global RNG state is not part of checkpoints).

    Under DDP (``num_replicas`` > 1) process ``rank`` takes every ``num_replicas``-th index of
    the same permutation, so the union of the processes' k-th batches of size B is exactly the
    single-process k-th batch of size ``num_replicas * B`` (with the global loss normalisation
    of ``PotentialModule``, DDP then trains like one process on the global batch). If the
    number of samples is not a multiple of ``num_replicas``, every process must still take the
    same number of steps, so the permutation is padded with its first indices, as
    ``DistributedSampler`` does, but addressed as ``index + num_samples``: :class:`PaddedGraphs`
    serves those as zero-weight copies, which add nothing to any loss or its denominator, so
    DDP equals one process for every training-set size. Being a ``DistributedSampler``, it is
    used by Lightning as it is (Lightning would otherwise re-shuffle it with its own seed).
    """

    def __init__(self, num_samples: int, seed: int = 0, num_replicas: int = 1, rank: int = 0):
        # DistributedSampler.__init__ is not called: it wants a dataset and a process group
        self.dataset_size = int(num_samples)
        self.seed = seed
        self.epoch = 0
        self.num_replicas, self.rank = int(num_replicas), int(rank)
        self.shuffle, self.drop_last = True, False
        self.num_samples = -(-self.dataset_size // self.num_replicas)  # per process
        self.total_size = self.num_samples * self.num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        order = torch.randperm(self.dataset_size, generator=generator).tolist()
        missing = self.total_size - len(order)
        order += [self.dataset_size + i for i in (order * -(-missing // max(1, len(order))))[:missing]]
        return iter(order[self.rank : self.total_size : self.num_replicas])

    def __len__(self) -> int:
        return self.num_samples


#: the config key of each source role of a split
SOURCE_KEYS = {"all": "data.path", "train": "data.train_path", "val": "data.val_path", "test": "data.test_path"}


def _describe_change(role: str, before: Mapping | None, now: Mapping | None) -> str | None:
    """What differs between a recorded and a current source file (None: the same data)."""
    key = SOURCE_KEYS.get(role, role)
    if before is None or now is None:
        return f"{key} {'added' if before is None else 'no longer set'}"
    if before.get("fingerprint") == now["fingerprint"] and before.get("frames") == now["frames"]:
        return None  # the same bytes, possibly moved: the split still applies
    parts = [f"{before.get('path')} -> {now['path']}"] if before.get("path") != now["path"] else []
    if before.get("frames") != now["frames"]:
        parts.append(f"{before.get('frames')} -> {now['frames']} frames")
    if before.get("fingerprint") != now["fingerprint"]:
        parts.append("file content changed")
    return f"{key}: {', '.join(parts)}"


class PaddedGraphs(Dataset):
    """The graphs of a loader; index ``len + i`` is a zero-weight copy of graph ``i`` (DDP padding,
    see :class:`EpochSeededSampler`).

    The loader reads a batch at a time (``__getitems__``): from a graph store (``graphs`` has a
    ``batch`` method) as one ``Batch``, read and assembled at once; otherwise as the list of
    graphs, which :func:`collate_graphs` batches with PyG as before.
    """

    def __init__(self, graphs):
        self.graphs = graphs

    def __len__(self) -> int:
        return len(self.graphs)

    def __getitem__(self, index: int):
        if index < len(self.graphs):
            return self.graphs[index]
        padding = self.graphs[index - len(self.graphs)].clone()
        padding.weight = torch.zeros_like(padding.weight)
        return padding

    def __getitems__(self, indices: list[int]):
        read = getattr(self.graphs, "batch", None)
        if read is None:
            return [self[index] for index in indices]
        n = len(self.graphs)
        batch = read([index % n for index in indices])
        padding = [k for k, index in enumerate(indices) if index >= n]
        if padding:
            batch.weight[padding] = 0.0
        return batch


def collate_graphs(graphs) -> Batch:
    """A loader's batch: what :meth:`PaddedGraphs.__getitems__` read, batched with PyG unless it
    came as one ``Batch`` already (a module-level function: DataLoader workers pickle it)."""
    return graphs if isinstance(graphs, Batch) else Batch.from_data_list(graphs)


def chunked_batches(graphs, indices: list[int], chunk_atoms: int, device) -> list[Batch]:
    """``graphs[indices]`` as batches of at most ``chunk_atoms`` atoms (one structure at least),
    on ``device``: the fixed batches of a pass over a whole set (the full-batch refinement, the
    E0 refit after a charges-first stage)."""
    source = PaddedGraphs(graphs)
    groups = chunk_graphs([graphs[index] for index in indices], chunk_atoms)
    return [collate_graphs(source.__getitems__([indices[k] for k in group])).to(device) for group in groups]


class AtomsDataModule(L.LightningDataModule):
    """Train/val/test graphs from files or the embedded EMT dataset.

    Args:
        cutoff: neighbour-list cutoff (the model's cutoff).
        path: one file split by ``val_fraction``/``test_fraction``; None (and no
            ``train_path``) selects the embedded default dataset, unless ``default_dataset``
            is False (``data=file``), which makes a missing path an error.
        train_path, val_path, test_path: separate files instead of fractions.
        keys: label keys (see ``LabelKeys``: energy, forces, stress, virial, charges, weight).
        split_file: where the split is saved; an existing file is reused (resume) if its
            source files' fingerprints and frame counts match, and refused otherwise.
        store, streaming, store_workers: train from an on-disk graph store
            (:mod:`mlip_plugins.data.store`) instead of graphs in memory: ``store`` is its
            folder, ``streaming=True`` builds it (once, with ``store_workers`` processes) from
            ``path``; the split is then indices into the store.
    """

    def __init__(
        self,
        cutoff: float,
        path: str | None = None,
        train_path: str | None = None,
        val_path: str | None = None,
        test_path: str | None = None,
        default_dataset: Mapping | bool | None = None,
        keys: Mapping | None = None,
        file_format: str | None = None,
        on_error: str = "raise",
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        split_seed: int = 0,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        split_file: str | None = None,
        cache: bool = True,
        shuffle_seed: int = 0,
        require_energy: bool = True,
        store: str | None = None,
        streaming: bool = False,
        store_workers: int = 2,
    ):
        super().__init__()
        self.cutoff = float(cutoff)
        self.path = path
        self.train_path, self.val_path, self.test_path = train_path, val_path, test_path
        self.default_dataset = None if default_dataset is False else dict(default_dataset or {})
        check_keywords(LabelKeys, dict(keys or {}), "data.keys")
        self.keys = LabelKeys(**dict(keys or {}))
        self.file_format = file_format
        if on_error not in ("raise", "skip"):
            raise ConfigError(f"data.on_error: expected raise or skip, got {on_error!r}")
        self.on_error = on_error
        self.val_fraction, self.test_fraction = float(val_fraction), float(test_fraction)
        self.split_seed = int(split_seed)
        self.batch_size = int(batch_size)
        self.val_batch_size = int(val_batch_size or batch_size)
        self.num_workers = int(num_workers)
        self.split_file = split_file
        self.use_cache = bool(cache)
        self.shuffle_seed = int(shuffle_seed)
        self.require_energy = bool(require_energy)
        self.train_graphs: list = []
        self.val_graphs: list = []
        self.test_graphs: list = []
        self.split: dict = {}
        self._loaded = False
        self.store, self.streaming, self.store_workers = store, bool(streaming), int(store_workers)
        self.graph_store = None  # the GraphStore when training from one

    # -- loading -----------------------------------------------------------------------
    def _load(self, path: str) -> list:
        return load_graph_file(path, self.cutoff, self.keys, self.file_format, self.on_error, self.use_cache, self.require_energy)

    def _fraction_split(self, n: int, with_test: bool = True) -> dict[str, list[int]]:
        if not 0 <= self.val_fraction < 1 or not 0 <= self.test_fraction < 1 or self.val_fraction + self.test_fraction >= 1:
            raise DataError(f"data: val_fraction={self.val_fraction} and test_fraction={self.test_fraction} must leave training data")
        order = np.random.default_rng(self.split_seed).permutation(n).tolist()
        n_val = max(1, int(round(self.val_fraction * n))) if self.val_fraction > 0 and n > 2 else 0
        n_test = int(round(self.test_fraction * n)) if n - n_val > 2 and with_test else 0
        return {"val": order[:n_val], "test": order[n_val : n_val + n_test], "train": order[n_val + n_test :]}

    def setup(self, stage: str | None = None) -> None:
        if self._loaded:
            return
        if self.store or self.streaming:
            split, sources, files = self._setup_store()
            self.split = {"sources": sources, "files": files, **split}
            self._loaded = True
            return
        if self.train_path:
            sources = {"train": self.train_path, "val": self.val_path, "test": self.test_path}
            sources = {role: path for role, path in sources.items() if path}
        else:
            sources = {"all": self.path or self._default_dataset()}
        loaded = {role: self._load(path) for role, path in sources.items()}
        files = {role: {"path": str(path), "fingerprint": file_fingerprint(path), "frames": len(loaded[role])}
                 for role, path in sources.items()}
        saved = self._saved_split(files)
        graphs = loaded.get("all", loaded.get("train"))
        if "val" in loaded:
            self.train_graphs, self.val_graphs = graphs, loaded["val"]
            split = {"train": list(range(len(graphs)))}
        else:
            # a test file replaces the test fraction: no training structure is held back for it
            split = saved or self._fraction_split(len(graphs), with_test="test" not in loaded)
            self.train_graphs = [graphs[i] for i in split["train"]]
            self.val_graphs = [graphs[i] for i in split["val"]]
            self.test_graphs = [graphs[i] for i in split["test"]]
        if "test" in loaded:
            self.test_graphs = loaded["test"]
        if not self.train_graphs:
            raise DataError(f"{sources}: no training structures after the split")
        self.split = {"sources": sources, "files": files, **split}
        self._loaded = True

    def _setup_store(self) -> tuple[dict, dict, dict]:
        """Train/val/test as lazy views of a graph store (each process reads only what it batches)."""
        from mlip_plugins.data.store.reader import StoreSubset, open_store

        if self.train_path or self.val_path or self.test_path:
            raise DataError("data.store/data.streaming: one source, data.path, split by val_fraction/test_fraction "
                            "(train_path/val_path/test_path are not supported with a graph store)")
        path = self.path if self.path or self.store else self._default_dataset()
        store = open_store(self.store, path, self.cutoff, self.keys, self.file_format, self.on_error,
                           self.require_energy, self.store_workers)
        files = {"all": {"path": path or str(store.directory), "frames": len(store),
                         "fingerprint": ",".join(source["fingerprint"] for source in store.manifest["sources"])}}
        split = self._saved_split(files) or self._fraction_split(len(store))
        self.graph_store = store
        self.train_graphs, self.val_graphs, self.test_graphs = (StoreSubset(store, split[part]) for part in ("train", "val", "test"))
        return split, {"all": path or str(store.directory), "store": str(store.directory)}, files

    def train_statistics(self):
        """One-pass statistics of the training split when training from a graph store, else None
        (the statistics are then computed from ``train_graphs`` in memory)."""
        return self.graph_store.statistics(self.train_graphs.indices) if self.graph_store is not None else None

    def _default_dataset(self) -> str:
        """The embedded EMT set's file, announced in one line; an error where it is switched off."""
        if self.default_dataset is None:
            raise DataError("data: no data file given: set data.path=FILE (or data.train_path=FILE); "
                            "data=file does not fall back to the embedded demo set")
        path = str(default_dataset_path(**self.default_dataset))
        log.info("training on the embedded demo dataset (seven EMT metals, %s); set data.path=FILE for your own data", path)
        return path

    def _saved_split(self, files: dict[str, dict]) -> dict[str, list[int]] | None:
        """The split of an existing ``split_file`` (resume), if it was drawn from these files.

        The split stores each source file's fingerprint and frame count; a file that changed
        since (frames appended, another file under the same name) is refused: its old indices
        would silently leave out the new frames or pick other structures.
        """
        if not (self.split_file and os.path.exists(self.split_file)):
            return None
        with open(self.split_file) as handle:
            saved = json.load(handle)
        recorded = saved.get("files")
        if recorded is None:  # written before fingerprints were stored: reuse if the indices fit
            indices = [i for part in ("train", "val", "test") for i in saved.get(part, [])]
            n = next(iter(files.values()))["frames"]
            if not indices or max(indices) >= n:
                return None
            warnings.warn(f"{self.split_file}: no data fingerprints (an older split.json); reusing its split unchecked", stacklevel=2)
        else:
            changes = [_describe_change(role, recorded.get(role), files.get(role)) for role in sorted(set(recorded) | set(files))]
            changes = [change for change in changes if change]
            if changes:
                raise DataError(
                    f"{self.split_file}: the data changed since this run's split was drawn ({'; '.join(changes)}); "
                    "restore the original data to resume, or train in a new run directory (another hydra.run.dir) "
                    "to draw a new split"
                )
        return {part: list(saved.get(part, [])) for part in ("train", "val", "test")}

    def save_split(self, path: str | os.PathLike) -> None:
        """Write the split (indices into each source file) as JSON, atomically."""
        atomic_write_text(json.dumps(self.split, indent=1), path)

    def elements(self) -> list[int]:
        """Atomic numbers present in any split."""
        if self.graph_store is not None:
            return self.graph_store.elements
        return sorted({int(z) for g in self.train_graphs + self.val_graphs + self.test_graphs for z in g.z.unique().tolist()})

    # -- loaders -----------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        world, rank = (int(trainer.world_size), int(trainer.global_rank)) if trainer is not None else (1, 0)
        sampler = EpochSeededSampler(len(self.train_graphs), self.shuffle_seed, num_replicas=world, rank=rank)
        return self._loader(self.train_graphs, self.batch_size, sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_graphs or self.train_graphs[:1], self.val_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_graphs or self.val_graphs, self.val_batch_size)

    def _loader(self, graphs, batch_size: int, sampler=None) -> DataLoader:
        return DataLoader(PaddedGraphs(graphs), batch_size=batch_size, sampler=sampler, num_workers=self.num_workers,
                          collate_fn=collate_graphs)
