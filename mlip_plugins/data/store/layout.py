"""The layout of a graph store: the arrays of a shard, the manifest, and the store's errors.

A shard of S structures with N atoms, E edges and B atoms with Born effective charges (those of
the structures labelled with them) holds seven arrays (safetensors):

======================  ============  =====================================================
``offsets``             [S+1, 3] i64  first atom, first edge and first BEC row of each
                                      structure (CSR)
``atoms``               [N, 7] f64    position (0:3), forces (3:6), charge (6)
``z``                   [N] int       atomic numbers (the smallest int type that holds them)
``edges``               [E, 5] int    j, i (indices within the structure), cell shift (2:5)
``bec``                 [B, 9] f64    Born effective charges, row-major, of the atoms of the
                                      structures that have them (none stored for the others)
``structures``          [S, 34] f64   cell (0:9), stress (9:18), energy, total charge,
                                      weight, sum of squared force components, dipole
                                      (22:25), polarizability (25:34, row-major)
``index``               [S, 12] i64   source frame, source file, pbc (2:5), has_energy,
                                      has_forces, has_stress, has_charges, has_bec,
                                      has_dipole, has_polarizability
======================  ============  =====================================================

Floats are stored in float64 whatever torch's default dtype (an item is converted on read,
exactly as :func:`~mlip_plugins.data.structures.graph_from_arrays` converts a fresh graph),
so one store serves float32 and float64 runs. Missing labels are zeros with their flag false,
as in a graph. An item costs seven memory-mapped slices, one per array.

Format history: 1 had no ``bec`` array, two offset columns, 22 structure and 9 index columns
(BEC, dipole and polarizability labels were refused); a store of another format is refused in
one line (:func:`check_format`): rebuilding it is the way to read it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mlip_plugins.atomic_files import atomic_write_text
from mlip_plugins.data.structures import STRUCTURE_TENSOR_SHAPES, DataError

#: version of the layout below; a store of another version is refused (rebuild it)
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
LOCK = ".lock"

# columns of ``offsets``
ATOM_ROW, EDGE_ROW, BEC_ROW = 0, 1, 2
# columns of ``atoms``
POS, FORCES, CHARGE = slice(0, 3), slice(3, 6), 6
# columns of ``structures``: then each per-structure tensor label (dipole, polarizability), flattened
CELL, STRESS, ENERGY, TOTAL_CHARGE, WEIGHT, FORCE_SQ = slice(0, 9), slice(9, 18), 18, 19, 20, 21
# columns of ``index``: then the flag of each per-structure tensor label
FRAME, SOURCE, PBC, HAS_ENERGY, HAS_FORCES, HAS_STRESS, HAS_CHARGES, HAS_BEC = 0, 1, slice(2, 5), 5, 6, 7, 8, 9


def _tensor_columns() -> tuple[dict[str, slice], dict[str, int], int, int]:
    """The ``structures`` columns and the ``index`` flag of each of ``STRUCTURE_TENSOR_SHAPES``,
    and the widths of both tables."""
    columns, flags, start, flag = {}, {}, FORCE_SQ + 1, HAS_BEC + 1
    for name, shape in STRUCTURE_TENSOR_SHAPES.items():
        width = int(np.prod(shape))
        columns[name], flags[name] = slice(start, start + width), flag
        start, flag = start + width, flag + 1
    return columns, flags, start, flag


TENSOR_COLUMNS, HAS_TENSOR, STRUCTURE_WIDTH, INDEX_WIDTH = _tensor_columns()
SHARD_ARRAYS = ("offsets", "atoms", "z", "edges", "bec", "structures", "index")


class StoreError(DataError):
    """A graph store that cannot be used as it is (the message says which folder and why)."""


class StoreMismatchError(StoreError):
    """The store was built from other data or settings than those asked for."""


class StoreLockedError(StoreError):
    """Another process holds the store's build lock."""


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.safetensors"


def ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The concatenated index ranges ``[start, start + length)``: the rows of several structures."""
    ends = np.cumsum(lengths)
    return np.repeat(starts - ends + lengths, lengths) + np.arange(ends[-1] if len(ends) else 0)


def compact_int(array: np.ndarray) -> np.ndarray:
    """``array`` in the smallest signed integer type that holds its values (int8 ... int64)."""
    array = np.asarray(array, dtype=np.int64)
    bound = int(np.abs(array).max()) if array.size else 0
    for dtype in (np.int8, np.int16, np.int32):
        if bound <= np.iinfo(dtype).max:
            return array.astype(dtype)
    return array


def pack_shard(items: Sequence[tuple[dict, int, int]]) -> dict[str, np.ndarray]:
    """The shard arrays of ``items``: (graph arrays of ``graph_arrays``, source frame, source file)."""
    n_atoms = np.array([len(arrays["z"]) for arrays, _, _ in items], dtype=np.int64)
    n_edges = np.array([arrays["edge_index"].shape[1] for arrays, _, _ in items], dtype=np.int64)
    n_bec = np.array([len(arrays["z"]) if bool(arrays["has_bec"][0]) else 0 for arrays, _, _ in items], dtype=np.int64)
    offsets = np.zeros((len(items) + 1, 3), dtype=np.int64)
    offsets[1:, ATOM_ROW], offsets[1:, EDGE_ROW], offsets[1:, BEC_ROW] = np.cumsum(n_atoms), np.cumsum(n_edges), np.cumsum(n_bec)
    atoms = np.zeros((int(n_atoms.sum()), 7))
    edges = np.zeros((int(n_edges.sum()), 5), dtype=np.int64)
    bec = np.zeros((int(n_bec.sum()), 9))
    structures = np.zeros((len(items), STRUCTURE_WIDTH))
    index = np.zeros((len(items), INDEX_WIDTH), dtype=np.int64)
    z = np.zeros(int(n_atoms.sum()), dtype=np.int64)
    for k, (arrays, frame, source) in enumerate(items):
        (a0, e0, b0), (a1, e1, b1) = offsets[k], offsets[k + 1]
        atoms[a0:a1, POS], atoms[a0:a1, FORCES] = arrays["pos"], arrays["forces"]
        if "charges" in arrays:
            atoms[a0:a1, CHARGE] = arrays["charges"]
        z[a0:a1] = arrays["z"]
        edges[e0:e1, :2], edges[e0:e1, 2:] = arrays["edge_index"].T, arrays["shifts"]
        if b1 > b0:
            bec[b0:b1] = arrays["bec"].reshape(-1, 9)
        row = structures[k]
        row[CELL], row[STRESS] = arrays["cell"].reshape(9), arrays["stress"].reshape(9)
        row[ENERGY], row[TOTAL_CHARGE], row[WEIGHT] = arrays["energy"][0], arrays["total_charge"][0], arrays["weight"][0]
        row[FORCE_SQ] = float(np.square(arrays["forces"]).sum()) if arrays["has_forces"][0] else 0.0
        index[k, FRAME], index[k, SOURCE], index[k, PBC] = frame, source, arrays["pbc"].reshape(3)
        index[k, HAS_ENERGY], index[k, HAS_FORCES] = arrays["has_energy"][0], arrays["has_forces"][0]
        index[k, HAS_STRESS], index[k, HAS_CHARGES], index[k, HAS_BEC] = arrays["has_stress"][0], "charges" in arrays, b1 > b0
        for name, columns in TENSOR_COLUMNS.items():
            row[columns], index[k, HAS_TENSOR[name]] = arrays[name].reshape(-1), arrays[f"has_{name}"][0]
    return {"offsets": offsets, "atoms": atoms, "z": compact_int(z), "edges": compact_int(edges), "bec": bec,
            "structures": structures, "index": index}


#: the graph fields that are per atom and per edge (concatenated in a batch); every other field
#: has one row per structure
ATOM_FIELDS, EDGE_FIELDS = ("pos", "z", "forces", "charges", "bec"), ("edge_index", "shifts")


def unpack(atoms, z, edges, bec, structures, index, atom_counts) -> dict:
    """The graph fields (``graph_arrays``' names and order) of consecutive structures from their
    rows of the shard arrays (``atom_counts``: the atoms of each): per-atom and per-edge fields
    concatenated (``edge_index`` counted within each structure), per-structure fields with one
    row each (``cell`` [S, 3, 3], ``energy`` [S], ...). For one structure these are exactly
    ``graph_arrays``' shapes. ``charges`` is present if every structure has charges; ``bec``
    is zero for the atoms of structures without (their rows are not stored)."""
    fields = {
        "pos": atoms[:, POS], "z": z, "cell": structures[:, CELL].reshape(-1, 3, 3), "pbc": index[:, PBC] != 0,
        "edge_index": edges[:, :2].T, "shifts": edges[:, 2:],
        "energy": structures[:, ENERGY], "has_energy": index[:, HAS_ENERGY] != 0,
        "forces": atoms[:, FORCES], "has_forces": index[:, HAS_FORCES] != 0,
        "stress": structures[:, STRESS].reshape(-1, 3, 3), "has_stress": index[:, HAS_STRESS] != 0,
    }
    if index[:, HAS_CHARGES].all():
        fields["charges"] = atoms[:, CHARGE]
    has_bec = index[:, HAS_BEC] != 0
    fields["bec"] = np.zeros((len(z), 3, 3))
    fields["bec"][np.repeat(has_bec, atom_counts)] = np.asarray(bec).reshape(-1, 3, 3)
    fields["has_bec"] = has_bec
    for name, shape in STRUCTURE_TENSOR_SHAPES.items():
        fields[name] = structures[:, TENSOR_COLUMNS[name]].reshape(-1, *shape)
        fields[f"has_{name}"] = index[:, HAS_TENSOR[name]] != 0
    fields["total_charge"], fields["weight"] = structures[:, TOTAL_CHARGE], structures[:, WEIGHT]
    return fields


#: safetensors' dtype names of the arrays a shard holds, as numpy dtypes
_NUMPY_DTYPES = {"F64": "<f8", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1"}


def map_shard(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The arrays of a shard as read-only numpy views of the memory-mapped file (nothing is read
    until indexed; the kernel pages in what a gather touches).

    Why not safetensors' ``get_slice``: it copies one contiguous range per call (~20 µs), and a
    batch of 32 structures needs a hundred ranges; a numpy view gathers them all in one
    fancy-indexing call per array. The file was written (and its header validated on build) by
    safetensors; this reads its documented layout: an 8-byte little-endian header length, a JSON
    header giving each tensor's dtype, shape and byte range, then the data.
    """
    try:
        mapped = np.memmap(path, dtype=np.uint8, mode="r").view(np.ndarray)  # plain views index faster
        length = int.from_bytes(mapped[:8].tobytes(), "little")
        header = json.loads(mapped[8 : 8 + length].tobytes())
        arrays = {}
        for name in SHARD_ARRAYS:
            info = header[name]
            begin, end = (8 + length + offset for offset in info["data_offsets"])
            arrays[name] = mapped[begin:end].view(_NUMPY_DTYPES[info["dtype"]]).reshape(info["shape"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StoreError(f"{path}: unreadable graph store shard ({type(exc).__name__}: {exc}); "
                         "remove the store folder to rebuild it") from exc
    return arrays


# -- the manifest ------------------------------------------------------------------------------
def build_key(sources: Sequence[dict], cutoff: float, settings: dict, shard_size: int) -> dict:
    """What a store must have been built from to serve a request: the sources' content
    fingerprints (not their paths: a moved file is the same data), cutoff, label settings,
    shard size and format version."""
    return {
        "format": FORMAT_VERSION,
        "sources": [source["fingerprint"] for source in sources],
        "cutoff": float(cutoff),
        "settings": json.loads(json.dumps(settings, sort_keys=True, default=str)),
        "shard_size": int(shard_size),
    }


def key_difference(built: dict, wanted: dict) -> str | None:
    """The first field in which two build keys differ, as words; None if they agree."""
    for field in ("format", "sources", "cutoff", "settings", "shard_size"):
        if built.get(field) != wanted.get(field):
            what = {"sources": "source content (fingerprints)"}.get(field, field)
            return f"{what} {built.get(field)!r} (store) != {wanted.get(field)!r} (requested)"
    return None


def check_format(directory: str | os.PathLike, manifest: dict) -> None:
    """Refuse a store of another layout than :data:`FORMAT_VERSION` (in one line: which file,
    which formats, what to do)."""
    built = manifest.get("format", manifest.get("key", {}).get("format"))
    if built != FORMAT_VERSION:
        raise StoreError(f"{Path(directory) / MANIFEST}: graph store format {built!r}, this version reads format "
                         f"{FORMAT_VERSION} (format 2 added BEC, dipole and polarizability labels); remove the folder "
                         f"to rebuild it from its sources")


def read_manifest(directory: str | os.PathLike) -> dict | None:
    """The store's manifest, None if there is none; a damaged one is a ``StoreError``."""
    path = Path(directory) / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise StoreError(f"{path}: unreadable graph store manifest ({exc}); remove the folder to rebuild it") from exc
    if not isinstance(manifest, dict) or "key" not in manifest:
        raise StoreError(f"{path}: not a graph store manifest; remove the folder to rebuild it")
    return manifest


def write_manifest(directory: str | os.PathLike, manifest: dict) -> None:
    atomic_write_text(json.dumps(manifest, indent=1), Path(directory) / MANIFEST)
