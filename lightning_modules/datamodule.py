"""``AtomsDataModule``: structures from files (or the embedded default set) to PyG batches.

Graphs (with vesin neighbour lists) are built once and cached on disk; the train/val/test
split is drawn from a seed, saved as ``split.json`` with the run, and reused on resume.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DistributedSampler
from torch_geometric.loader import DataLoader

from mlip_plugins.data.default_dataset import cache_dir, default_dataset_path
from mlip_plugins.data.graph_cache import build_graphs, cache_key, load_graphs, save_graphs
from mlip_plugins.data.reading import read_structures
from mlip_plugins.data.structures import DataError, LabelKeys


class EpochSeededSampler(DistributedSampler):
    """A shuffling sampler whose order depends only on (seed, epoch).

    Lightning calls ``set_epoch`` every epoch, so a run resumed from a checkpoint sees the
    same batches as an uninterrupted one (the global RNG state is not part of checkpoints).

    Under DDP (``num_replicas`` > 1) process ``rank`` takes every ``num_replicas``-th index of
    the same permutation, so the union of the processes' k-th batches of size B is exactly the
    single-process k-th batch of size ``num_replicas * B`` (with the global loss normalisation
    of ``PotentialModule``, DDP then trains like one process on the global batch). If the
    number of samples is not a multiple of ``num_replicas``, the permutation is padded with its
    first indices, as ``DistributedSampler`` does. Being a ``DistributedSampler``, it is used
    by Lightning as it is (Lightning would otherwise re-shuffle it with its own seed).
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
        order += order[: self.total_size - len(order)]
        return iter(order[self.rank : self.total_size : self.num_replicas])

    def __len__(self) -> int:
        return self.num_samples


def load_graph_file(path: str, cutoff: float, keys: LabelKeys, file_format: str | None = None,
                    on_error: str = "raise", use_cache: bool = True, require_energy: bool = True) -> list:
    """Read ``path`` and build its graphs, through the on-disk cache when enabled.

    ``require_energy``: a frame without the energy key is an error (forces and stress may
    be missing: partial labels); set False to train some frames on forces only.
    """
    settings = {"keys": vars(keys), "format": file_format, "on_error": on_error, "require_energy": require_energy}
    cached = None
    if use_cache and os.path.exists(path):
        cached = cache_dir() / f"graphs_{cache_key(path, cutoff, settings)}.pt"
        if cached.exists():
            try:
                return load_graphs(cached)
            except Exception:  # noqa: BLE001 - a corrupt cache is rebuilt, never trusted
                cached.unlink(missing_ok=True)
    structures = read_structures(path, keys, file_format=file_format, on_error=on_error, require_energy=require_energy)
    graphs = build_graphs(structures, cutoff)
    if cached is not None:
        save_graphs(graphs, cached)
    return graphs


class AtomsDataModule(L.LightningDataModule):
    """Train/val/test graphs from files or the embedded EMT dataset.

    Args:
        cutoff: neighbour-list cutoff (the model's cutoff).
        path: one file split by ``val_fraction``/``test_fraction``; None (and no
            ``train_path``) selects the embedded default dataset.
        train_path, val_path, test_path: separate files instead of fractions.
        keys: label keys (see ``LabelKeys``: energy, forces, stress, virial, charges, weight).
        split_file: where the split is saved; an existing file is reused (resume).
    """

    def __init__(
        self,
        cutoff: float,
        path: str | None = None,
        train_path: str | None = None,
        val_path: str | None = None,
        test_path: str | None = None,
        default_dataset: Mapping | None = None,
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
    ):
        super().__init__()
        self.cutoff = float(cutoff)
        self.path = path
        self.train_path, self.val_path, self.test_path = train_path, val_path, test_path
        self.default_dataset = dict(default_dataset or {})
        self.keys = LabelKeys(**dict(keys or {}))
        self.file_format = file_format
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
        if self.train_path:
            train = self._load(self.train_path)
            sources = {"train": self.train_path}
            if self.val_path:
                self.val_graphs = self._load(self.val_path)
                self.train_graphs = train
                split = {"train": list(range(len(train)))}
                sources["val"] = self.val_path
            else:
                # a test file replaces the test fraction: no training structure is held back for it
                split = self._split(len(train), with_test=not self.test_path)
                self.train_graphs = [train[i] for i in split["train"]]
                self.val_graphs = [train[i] for i in split["val"]]
                self.test_graphs = [train[i] for i in split["test"]]
            if self.test_path:
                self.test_graphs = self._load(self.test_path)
                sources["test"] = self.test_path
        else:
            path = self.path or str(default_dataset_path(**self.default_dataset))
            graphs = self._load(path)
            split = self._split(len(graphs))
            self.train_graphs = [graphs[i] for i in split["train"]]
            self.val_graphs = [graphs[i] for i in split["val"]]
            self.test_graphs = [graphs[i] for i in split["test"]]
            sources = {"all": path}
        if not self.train_graphs:
            raise DataError(f"{sources}: no training structures after the split")
        self.split = {"sources": sources, **{k: v for k, v in split.items()}}
        self._loaded = True

    def _split(self, n: int, with_test: bool = True) -> dict[str, list[int]]:
        if self.split_file and os.path.exists(self.split_file):
            with open(self.split_file) as handle:
                saved = json.load(handle)
            indices = [i for part in ("train", "val", "test") for i in saved.get(part, [])]
            if indices and max(indices) < n:
                return {part: list(saved.get(part, [])) for part in ("train", "val", "test")}
        return self._fraction_split(n, with_test)

    def save_split(self, path: str | os.PathLike) -> None:
        """Write the split (indices into each source file) as JSON, atomically."""
        path = Path(path)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.split, indent=1))
        os.replace(tmp, path)

    def elements(self) -> list[int]:
        """Atomic numbers present in any split."""
        return sorted({int(z) for g in self.train_graphs + self.val_graphs + self.test_graphs for z in g.z.unique().tolist()})

    # -- loaders -----------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        world, rank = (int(trainer.world_size), int(trainer.global_rank)) if trainer is not None else (1, 0)
        sampler = EpochSeededSampler(len(self.train_graphs), self.shuffle_seed, num_replicas=world, rank=rank)
        return DataLoader(self.train_graphs, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_graphs or self.train_graphs[:1], batch_size=self.val_batch_size, num_workers=self.num_workers)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_graphs or self.val_graphs, batch_size=self.val_batch_size, num_workers=self.num_workers)
