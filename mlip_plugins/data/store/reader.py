"""Read a graph store: a torch ``Dataset`` of graphs, one memory-mapped structure at a time.

:class:`GraphStore` opens shards lazily, in the process that reads (so each DataLoader worker
and each DDP process opens its own handles, and a pickled store carries only its folder and
manifest), and returns for index i the ``Data`` that
:func:`~mlip_plugins.data.structures.atoms_to_graph` makes of that structure (plus its
``source``, 'file:frame', as the in-memory loader sets it).
"""

from __future__ import annotations

import bisect
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
from mlip_plugins.data.structures import graph_from_arrays

#: shards kept open per process (each handle maps its file; the pages are the kernel's cache)
OPEN_SHARDS = 64


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

    # -- pickling (DataLoader workers, spawn): handles are reopened where they are used -------
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_handles"] = OrderedDict()
        return state

    def _handle(self, shard: int):
        handle = self._handles.get(shard)
        if handle is None:
            handle = safe_open(str(self.directory / self._shards[shard]), framework="pt")
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
        handle = self._handle(shard)
        offsets = handle.get_slice("offsets")[row:row + 2]
        (a0, e0), (a1, e1) = offsets.tolist()
        flags = handle.get_slice("index")[row:row + 1][0]
        arrays = layout.unpack_item(
            offsets, handle.get_slice("atoms")[a0:a1], handle.get_slice("z")[a0:a1],
            handle.get_slice("edges")[e0:e1], handle.get_slice("structures")[row:row + 1][0], flags,
        )
        graph = graph_from_arrays(arrays)
        graph.source = f"{self._paths[int(flags[layout.SOURCE])]}:{int(flags[layout.FRAME])}"
        return graph

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
