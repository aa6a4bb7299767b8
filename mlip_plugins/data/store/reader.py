"""Read a graph store: a torch ``Dataset`` of graphs read from memory-mapped shards.

:class:`GraphStore` opens shards lazily, in the process that reads (so each DataLoader worker
and each DDP process opens its own handles, and a pickled store carries only its folder and
manifest), and returns for index i the ``Data`` that
:func:`~mlip_plugins.data.structures.atoms_to_graph` makes of that structure (plus its
``source``, 'file:frame', as the in-memory loader sets it); :meth:`GraphStore.batch` reads a
whole batch at once as the ``Batch`` PyG's collate would make of those graphs (what the
training loader uses).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torch_geometric.data import Batch, Data

from mlip_plugins.data.store import layout
from mlip_plugins.data.store.statistics import StreamingStatistics
from mlip_plugins.data.structures import LabelKeys, graph_from_arrays

#: shards kept open per process: each maps its file (pages the kernel may reclaim, counted in
#: the process's RSS once read) and holds one file descriptor
OPEN_SHARDS = 64


def _exclusive_cumsum(counts: np.ndarray) -> np.ndarray:
    """Where each of consecutive blocks of ``counts`` rows starts (along the first axis)."""
    starts = np.zeros_like(counts)
    np.cumsum(counts[:-1], axis=0, out=starts[1:])
    return starts


def _collated(graphs: Data, sources: list[str], counts: np.ndarray) -> Batch:
    """The ``Batch`` of structures whose fields are concatenated in ``graphs`` (``edge_index``
    already offset per structure), with [atoms, edges] ``counts`` per structure: the object
    ``Batch.from_data_list`` makes of the separate graphs, down to the ``batch``/``ptr``
    vectors and the slice and increment tables (so ``to_data_list`` and ``get_example`` work)."""
    n = len(sources)
    atom_slices, edge_slices = (torch.from_numpy(np.concatenate([[0], np.cumsum(counts[:, k])])) for k in (0, 1))
    level = {**dict.fromkeys(layout.ATOM_FIELDS, atom_slices), **dict.fromkeys(layout.EDGE_FIELDS, edge_slices)}
    structure_slices, no_increment = torch.arange(n + 1), torch.zeros(n, dtype=torch.long)
    batch = Batch(_base_cls=Data)
    slices, increments = {}, {}
    for key, value in graphs.items():  # tables shared between fields (read only): fewer tensors to send from a worker
        batch[key] = value
        slices[key] = level.get(key, structure_slices)
        increments[key] = atom_slices[:-1] if key == "edge_index" else no_increment
    batch["source"], slices["source"], increments["source"] = sources, structure_slices, None
    batch["batch"] = torch.repeat_interleave(torch.arange(n), atom_slices.diff())
    batch["ptr"] = atom_slices
    batch._num_graphs, batch._slice_dict, batch._inc_dict = n, slices, increments
    return batch


class GraphStore(Dataset):
    """The graphs of a complete store in ``directory`` (built by :func:`.build.build_store`)."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        manifest = layout.read_manifest(self.directory)
        if manifest is None or not manifest.get("complete"):
            state = "no graph store" if manifest is None else "an incomplete graph store (its build was interrupted)"
            raise layout.StoreError(f"{self.directory}: {state}; build it (data.streaming=true with data.path)")
        layout.check_format(self.directory, manifest)
        self.manifest = manifest
        self._shards = [shard["file"] for shard in manifest["shards"]]
        self._starts = np.concatenate([[0], np.cumsum([shard["structures"] for shard in manifest["shards"]])]).astype(np.int64)
        self._paths = [source["path"] for source in manifest["sources"]]
        self._handles: OrderedDict = OrderedDict()
        self._pid = os.getpid()

    # -- handles: opened in the process that reads (a DataLoader worker, forked or spawned, or a
    # DDP process), never inherited ------------------------------------------------------------
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_handles"] = OrderedDict()
        return state

    def _shard(self, shard: int) -> dict[str, np.ndarray]:
        """The arrays of shard ``shard``, memory-mapped (:func:`.layout.map_shard`)."""
        if self._pid != os.getpid():  # a forked worker: open its own
            self._handles, self._pid = OrderedDict(), os.getpid()
        handle = self._handles.get(shard)
        if handle is None:
            handle = layout.map_shard(self.directory / self._shards[shard])
            self._handles[shard] = handle
            if len(self._handles) > OPEN_SHARDS:
                self._handles.popitem(last=False)
        else:
            self._handles.move_to_end(shard)
        return handle

    # -- the dataset ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self._starts[-1])

    def _positions(self, indices: Sequence[int]) -> np.ndarray:
        """``indices`` as an int64 array within [0, len) (negative ones count from the end)."""
        positions = np.asarray(indices, dtype=np.int64).reshape(-1)
        if positions.size and not (-len(self) <= positions.min() and positions.max() < len(self)):
            raise IndexError(f"structure index outside a graph store of {len(self)}")
        return positions % max(len(self), 1)

    def _read(self, indices: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """The shard arrays' rows of the structures ``indices``, in that order (atom and edge rows
        concatenated), and their [atoms, edges, BEC rows] counts.

        The structures are read grouped by shard (one gather per array and shard, whatever the
        number of structures) and put back in the asked order with one gather per array (cheaper,
        with many shards, than scattering each shard's rows to their places)."""
        shards = np.searchsorted(self._starts, indices, side="right") - 1
        order = np.argsort(shards, kind="stable")
        rows = (indices - self._starts[shards])[order]
        owners, group_starts = np.unique(shards[order], return_index=True)
        bounds = [*group_starts.tolist(), len(indices)]
        groups = [(self._shard(int(shard)), slice(bounds[k], bounds[k + 1])) for k, shard in enumerate(owners)]
        first, counts = np.empty((len(indices), 3), np.int64), np.empty((len(indices), 3), np.int64)
        for arrays, members in groups:
            offsets = arrays["offsets"]
            first[members] = offsets[rows[members]]
            counts[members] = offsets[rows[members] + 1] - first[members]
        placed = _exclusive_cumsum(counts)  # where each structure's atoms and edges start, shard order
        ends = placed + counts
        levels = range(counts.shape[1])  # atoms, edges, BEC rows
        sources = [layout.ranges(first[:, k], counts[:, k]) for k in levels]  # the rows within their shard
        column = {"atoms": layout.ATOM_ROW, "z": layout.ATOM_ROW, "edges": layout.EDGE_ROW, "bec": layout.BEC_ROW}
        out = {}
        for name, array in groups[0][0].items():
            if name == "offsets":
                continue
            size = placed[-1, column[name]] + counts[-1, column[name]] if name in column else len(indices)
            out[name] = np.empty((size, *array.shape[1:]), np.float64 if array.dtype.kind == "f" else np.int64)
        for arrays, members in groups:
            for name, k in column.items():
                within = slice(placed[members.start, k], ends[members.stop - 1, k])
                out[name][within] = arrays[name][sources[k][within]]
            out["structures"][members] = arrays["structures"][rows[members]]
            out["index"][members] = arrays["index"][rows[members]]
        if len(groups) > 1:  # back to the asked order
            back = np.argsort(order)
            rows_of = [layout.ranges(placed[back, k], counts[back, k]) for k in levels]
            out = {name: array[rows_of[column[name]] if name in column else back] for name, array in out.items()}
            counts = counts[back]
        return out, counts

    def _sources(self, index: np.ndarray) -> list[str]:
        """'file:frame' of each row of ``index`` (the in-memory loader's ``source``)."""
        return [f"{self._paths[s]}:{f}" for s, f in zip(index[:, layout.SOURCE].tolist(), index[:, layout.FRAME].tolist())]

    def __getitem__(self, index: int) -> Data:
        index = int(self._positions([int(index)])[0])
        shard = int(np.searchsorted(self._starts, index, side="right")) - 1
        arrays, row = self._shard(shard), index - int(self._starts[shard])
        (a0, e0, b0), (a1, e1, b1) = arrays["offsets"][row : row + 2].tolist()
        rows = {"atoms": arrays["atoms"][a0:a1], "z": arrays["z"][a0:a1], "edges": arrays["edges"][e0:e1],
                "bec": arrays["bec"][b0:b1], "structures": arrays["structures"][row : row + 1],
                "index": arrays["index"][row : row + 1]}
        rows = {name: np.array(view) for name, view in rows.items()}  # out of the read-only map
        graph = graph_from_arrays(layout.unpack(**rows, atom_counts=[a1 - a0]))
        graph.source = self._sources(rows["index"])[0]
        return graph

    def __iter__(self) -> Iterator[Data]:
        return (self[i] for i in range(len(self)))

    def batch(self, indices: Sequence[int]) -> Batch:
        """The structures ``indices`` as one PyG ``Batch``, equal (fields, dtypes, values, and the
        slice and increment tables ``to_data_list`` needs) to ``Batch.from_data_list`` of
        ``[self[i] for i in indices]``, but read with one gather per array and shard and built
        without a ``Data`` per structure (reading and collating those took 30 % of a
        4-atom training step, see ``benchmarks/large_dataset.py``). A batch mixing structures
        with and without charges takes the per-item path, whatever PyG's collate makes of it."""
        indices = self._positions(indices)
        arrays, counts = self._read(indices)
        charged = arrays["index"][:, layout.HAS_CHARGES]
        if charged.any() and not charged.all():
            return Batch.from_data_list([self[int(i)] for i in indices])
        fields = layout.unpack(**arrays, atom_counts=counts[:, layout.ATOM_ROW])
        node_start = _exclusive_cumsum(counts[:, 0])
        fields["edge_index"] = fields["edge_index"] + np.repeat(node_start, counts[:, 1])
        graphs = graph_from_arrays({key: np.ascontiguousarray(value) for key, value in fields.items()})
        return _collated(graphs, self._sources(arrays["index"]), counts)

    # -- what the manifest knows ----------------------------------------------------------------
    @property
    def elements(self) -> list[int]:
        """Atomic numbers present in the store."""
        return list(self.manifest["statistics"]["elements"])

    def statistics(self, indices: Sequence[int] | None = None) -> StreamingStatistics:
        """Statistics of the structures ``indices`` (default: all, from the manifest).

        A subset is summed shard by shard from the per-structure columns (atomic numbers,
        energy, stress, flags, force sums; the charges of charged structures): a few bytes per
        atom, no positions or edges.
        """
        if indices is None:
            return StreamingStatistics.from_dict(self.manifest["statistics"])
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"structure indices outside a graph store of {len(self)}")
        starts = self._starts
        owners = np.searchsorted(starts, indices, side="right") - 1
        parts = []
        for shard in np.unique(owners):
            rows = indices[owners == shard] - starts[shard]
            parts.append(StreamingStatistics.from_tables(self._shard(int(shard)), rows))
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

    def batch(self, positions: Sequence[int]) -> Batch:
        """The structures at ``positions`` of the subset as one ``Batch`` (:meth:`GraphStore.batch`)."""
        return self.dataset.batch([self.indices[p] for p in positions])


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
