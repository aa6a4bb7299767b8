"""Build graphs once and cache them on disk in a safe (weights-only) tensor format.

The cache key covers the source file's *content* (an xxHash of its bytes,
:func:`mlip_plugins.data.fingerprint.file_fingerprint`: a copy with the same size and mtime but
other labels is a different key), its path, the cutoff, the label keys and the dtype, so a
changed input or setting rebuilds. The cache is a flat dict of tensors (loaded with
``torch.load(weights_only=True)``: no pickled objects) written atomically.

The cache is an optimisation: :func:`cached_graphs` goes on without it (one warning) when it
cannot be written, for instance on a full disk, and removes the temporaries of writers that
were killed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch_geometric.data import Data

from mlip_plugins.atomic_files import atomic_torch_save, is_disk_full, sweep_stale_temporaries
from mlip_plugins.data.fingerprint import file_fingerprint
from mlip_plugins.data.reading import LabelledStructure
from mlip_plugins.data.structures import atoms_to_graph

log = logging.getLogger(__name__)

CACHE_FORMAT = 3  # 2: keyed on the file's content hash; 3: graphs carry bec/has_bec
_NODE_FIELDS = ("pos", "z", "forces", "charges", "bec")
_EDGE_FIELDS = ("edge_index", "shifts")


def build_graphs(structures: list[LabelledStructure], cutoff: float) -> list[Data]:
    """One graph per structure; each keeps its ``source`` ('file:frame') for error messages."""
    graphs = []
    for item in structures:
        path, _, frame = item.source.rpartition(":")
        graph = atoms_to_graph(item.atoms, cutoff, item.labels, where=f"{path}: frame {frame}")
        graph.source = item.source
        graphs.append(graph)
    return graphs


def cache_key(path: str, cutoff: float, settings: dict) -> str:
    """Name of the cache entry of ``path`` built with ``cutoff`` and ``settings`` (label keys, ...)."""
    blob = json.dumps(
        {
            "path": os.path.abspath(path),
            "content": file_fingerprint(path),
            "cutoff": float(cutoff),
            "dtype": str(torch.get_default_dtype()),
            "settings": settings,
            "format": CACHE_FORMAT,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def save_graphs(graphs: list[Data], path: Path) -> None:
    """Concatenate the graphs' tensors and write them atomically."""
    payload: dict[str, torch.Tensor] = {
        "num_nodes": torch.tensor([g.num_nodes for g in graphs]),
        "num_edges": torch.tensor([g.edge_index.shape[1] for g in graphs]),
        "has_charges": torch.tensor([hasattr(g, "charges") and g.charges is not None for g in graphs]),
    }
    keys = [k for k in graphs[0].keys() if k != "source"] if graphs else []
    for key in keys:
        if key == "charges":
            continue
        dim = 1 if key in _EDGE_FIELDS and key == "edge_index" else 0
        payload[key] = torch.cat([g[key] for g in graphs], dim=dim)
    charged = [g.charges for g in graphs if getattr(g, "charges", None) is not None]
    if charged:
        payload["charges"] = torch.cat(charged)
    sources = "\n".join(getattr(g, "source", "") for g in graphs)
    payload["sources"] = torch.frombuffer(bytearray(sources.encode()), dtype=torch.uint8).clone()
    atomic_torch_save(payload, path)


def load_graphs(path: Path) -> list[Data]:
    payload = torch.load(path, weights_only=True)
    num_nodes = payload.pop("num_nodes").tolist()
    num_edges = payload.pop("num_edges").tolist()
    has_charges = payload.pop("has_charges").tolist()
    sources = bytes(payload.pop("sources").tolist()).decode().split("\n")
    charges = payload.pop("charges", None)
    graphs = []
    node_start = edge_start = charge_start = 0
    for k, (n, e) in enumerate(zip(num_nodes, num_edges)):
        fields = {}
        for key, value in payload.items():
            if key in _NODE_FIELDS:
                fields[key] = value[node_start : node_start + n]
            elif key == "edge_index":
                fields[key] = value[:, edge_start : edge_start + e]
            elif key in _EDGE_FIELDS:
                fields[key] = value[edge_start : edge_start + e]
            else:
                fields[key] = value[k : k + 1]
        if has_charges[k]:
            fields["charges"] = charges[charge_start : charge_start + n]
            charge_start += n
        graph = Data(**fields)
        graph.source = sources[k] if k < len(sources) else ""
        graphs.append(graph)
        node_start += n
        edge_start += e
    return graphs


_swept: set[Path] = set()


def cached_graphs(directory: Path, path: str, cutoff: float, settings: dict,
                  build: Callable[[], list[Data]]) -> list[Data]:
    """The graphs of ``path`` from the cache in ``directory``, else ``build()`` them and cache them.

    A corrupt entry is rebuilt, never trusted. A failed write (full disk, read-only or
    missing folder) is one warning and the graphs are returned uncached. The first call per
    process and folder removes stale ``.graphs_*.tmp<pid>`` files of killed writers.
    """
    cached = Path(directory) / f"graphs_{cache_key(path, cutoff, settings)}.pt"
    if cached.parent not in _swept:
        _swept.add(cached.parent)
        for stale in sweep_stale_temporaries(cached.parent, "graphs_*"):
            log.info("removed %s (a graph cache write that was killed)", stale)
    if cached.exists():
        try:
            return load_graphs(cached)
        except Exception:  # noqa: BLE001 - a corrupt cache is rebuilt, never trusted
            cached.unlink(missing_ok=True)
    graphs = build()
    try:
        save_graphs(graphs, cached)
    except OSError as exc:
        reason = "no space left on device" if is_disk_full(exc) else f"{type(exc).__name__}: {exc}"
        log.warning("graph cache of %s not written (%s): %s; going on without the cache", path, cached, reason)
    return graphs
