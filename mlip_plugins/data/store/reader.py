"""Read a graph store: a torch ``Dataset`` of graphs, one memory-mapped structure at a time.

:class:`GraphStore` opens shards lazily, in the process that reads (so each DataLoader worker
and each DDP process opens its own handles, and a pickled store carries only its folder and
manifest), and returns for index i the ``Data`` that
:func:`~mlip_plugins.data.structures.atoms_to_graph` makes of that structure (plus its
``source``, 'file:frame', as the in-memory loader sets it).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from safetensors import safe_open
from torch.utils.data import Dataset
from torch_geometric.data import Data

from mlip_plugins.data.store import layout
from mlip_plugins.data.store.statistics import StreamingStatistics
from mlip_plugins.data.structures import LabelKeys, graph_from_arrays

#: shards kept open per process: each maps its file (pages the kernel may reclaim, counted in
#: the process's RSS once read) and holds its per-structure tables (~0.6 MB for 2000 structures)
OPEN_SHARDS = 64


class _OpenShard:
    """One shard, open: its per-structure tables in memory (~0.3 KB per structure), its atom
    and edge arrays memory-mapped and sliced per item."""

    def __init__(self, path: Path):
        self.handle = safe_open(str(path), framework="pt")
        self.offsets = self.handle.get_tensor("offsets").tolist()
        self.index, self.structures = self.handle.get_tensor("index"), self.handle.get_tensor("structures")
        self.atoms, self.z, self.edges = (self.handle.get_slice(name) for name in ("atoms", "z", "edges"))

    def graph(self, row: int, paths: list[str]) -> Data:
        (a0, e0), (a1, e1) = self.offsets[row], self.offsets[row + 1]
        flags = self.index[row]
        arrays = layout.unpack_item(a1 - a0, self.atoms[a0:a1], self.z[a0:a1], self.edges[e0:e1], self.structures[row], flags)
        graph = graph_from_arrays(arrays)
        graph.source = f"{paths[int(flags[layout.SOURCE])]}:{int(flags[layout.FRAME])}"
        return graph


class GraphStore(Dataset):
    """The graphs of a complete store in ``directory`` (built by :func:`.build.build_store`)."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        manifest = layout.read_manifest(self.directory)
        if manifest is None or not manifest.get("complete"):
            state = "no graph store" if manifest is None else "an incomplete graph store (its build was interrupted)"
            raise layout.StoreError(f"{self.directory}: {state}; build it (data.streaming=true with data.path)")
        if manifest.get("format") != layout.FORMAT_VERSION:
            raise layout.StoreError(f"{self.directory}: graph store format {manifest.get('format')}, this version "
                                    f"reads {layout.FORMAT_VERSION}; remove the folder to rebuild it")
        self.manifest = manifest
        self._shards = [shard["file"] for shard in manifest["shards"]]
        self._starts = np.concatenate([[0], np.cumsum([shard["structures"] for shard in manifest["shards"]])]).tolist()
        self._paths = [source["path"] for source in manifest["sources"]]
        self._handles: OrderedDict = OrderedDict()
        self._pid = os.getpid()

    # -- handles: opened in the process that reads (a DataLoader worker, forked or spawned, or a
    # DDP process), never inherited ------------------------------------------------------------
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_handles"] = OrderedDict()
        return state

    def _shard(self, shard: int) -> _OpenShard:
        if self._pid != os.getpid():  # a forked worker: open its own
            self._handles, self._pid = OrderedDict(), os.getpid()
        handle = self._handles.get(shard)
        if handle is None:
            handle = _OpenShard(self.directory / self._shards[shard])
            self._handles[shard] = handle
            if len(self._handles) > OPEN_SHARDS:
                self._handles.popitem(last=False)
        else:
            self._handles.move_to_end(shard)
        return handle

    # -- the dataset ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self._starts[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """(shard, row in the shard) of structure ``index``."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"structure {index} of a graph store of {len(self)}")
        index = index % len(self)
        shard = bisect.bisect_right(self._starts, index) - 1
        return shard, index - int(self._starts[shard])

    def __getitem__(self, index: int) -> Data:
        shard, row = self.locate(int(index))
        return self._shard(shard).graph(row, self._paths)

    def __iter__(self) -> Iterator[Data]:
        return (self[i] for i in range(len(self)))

    # -- what the manifest knows ----------------------------------------------------------------
    @property
    def elements(self) -> list[int]:
        """Atomic numbers present in the store."""
        return list(self.manifest["statistics"]["elements"])

    def statistics(self, indices: Sequence[int] | None = None) -> StreamingStatistics:
        """Statistics of the structures ``indices`` (default: all, from the manifest).

        A subset is summed shard by shard from the per-structure columns (atomic numbers,
        energy, flags, force sums): a few bytes per atom, no positions or edges.
        """
        if indices is None:
            return StreamingStatistics.from_dict(self.manifest["statistics"])
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"structure indices outside a graph store of {len(self)}")
        starts = np.asarray(self._starts, dtype=np.int64)
        owners = np.searchsorted(starts, indices, side="right") - 1
        parts = []
        for shard in np.unique(owners):
            rows = indices[owners == shard] - starts[shard]
            with safe_open(str(self.directory / self._shards[shard]), framework="numpy") as handle:
                index, structures = handle.get_tensor("index"), handle.get_tensor("structures")
                parts.append(StreamingStatistics.from_columns(
                    handle.get_tensor("z"), handle.get_tensor("offsets")[:, 0], structures[:, layout.ENERGY],
                    index[:, layout.HAS_ENERGY], structures[:, layout.FORCE_SQ], index[:, layout.HAS_FORCES], rows))
        return StreamingStatistics.total(parts)


class StoreSubset(Dataset):
    """The structures ``indices`` of a store (a split): a ``Dataset`` that slices like a list."""

    def __init__(self, dataset: GraphStore, indices: Sequence[int]):
        self.dataset, self.indices = dataset, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return StoreSubset(self.dataset, self.indices[index])
        return self.dataset[self.indices[index]]

    def __iter__(self) -> Iterator[Data]:
        return (self.dataset[i] for i in self.indices)


def default_store_directory(path: str, cutoff: float, settings: dict) -> Path:
    """Where ``data.streaming`` keeps the store of ``path`` when no ``data.store`` is given: the
    cache folder, keyed on the file's content, path, cutoff and label settings (a changed file
    gets a new store, never a mismatched one)."""
    from mlip_plugins.data.default_dataset import cache_dir
    from mlip_plugins.data.fingerprint import file_fingerprint

    blob = json.dumps({"path": os.path.abspath(path), "content": file_fingerprint(path), "cutoff": float(cutoff),
                       "settings": settings, "format": layout.FORMAT_VERSION}, sort_keys=True, default=str)
    return cache_dir() / "stores" / f"{Path(path).stem}_{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def open_store(directory: str | os.PathLike | None, path: str | None, cutoff: float, keys: LabelKeys,
               file_format: str | None = None, on_error: str = "raise", require_energy: bool = True,
               workers: int = 1, progress: bool = True) -> GraphStore:
    """The graph store to train from.

    With ``path``: the store of that file in ``directory`` (default: :func:`default_store_directory`),
    built on first use and checked against the file's content and the settings afterwards (a
    mismatch is a one-line ``StoreMismatchError``). Without: the store in ``directory`` as built,
    whose cutoff must be ``cutoff``.
    """
    from mlip_plugins.data.store.build import build_store, store_settings

    if path is not None:
        settings = store_settings(keys, file_format, on_error, require_energy)
        directory = directory or default_store_directory(path, cutoff, settings)
        build_store(directory, [path], cutoff, keys, file_format, on_error, require_energy, workers, progress=progress)
    if directory is None:
        raise layout.StoreError("a graph store needs data.store (its folder) or data.path (the file to build it from)")
    store = GraphStore(directory)
    if abs(float(store.manifest["cutoff"]) - float(cutoff)) > 1e-12:
        raise layout.StoreMismatchError(f"{directory}: graph store built with cutoff {store.manifest['cutoff']:g} Å, "
                                        f"the model's cutoff is {float(cutoff):g} Å; build a store for this cutoff")
    return store
