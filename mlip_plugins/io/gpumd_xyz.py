"""GPUMD's ``train.xyz`` / ``test.xyz`` (extended XYZ as the NEP trainer reads it), as an ASE format.

GPUMD's rules differ from ASE's extxyz in ways that silently lose data with ``ase.io.read``:
keys are case-insensitive (``Lattice=``/``lattice=``, ``Energy=``, ``Properties=``), forces may
be called ``force`` or ``forces``, a ``virial`` (eV, positive when compressed) may stand in for
the stress (eV/Å^3, ``virial = -stress * V``), and every frame is periodic in all directions
unless a ``pbc`` key says otherwise.

Registered with ASE through the ``ase.ioformats`` entry point as ``gpumd-xyz``, so
``ase.io.read("train.xyz", ":", format="gpumd-xyz")`` and the training data config
``data.file_format=gpumd-xyz`` read it. Each frame comes back with normalised, lower-case
labels that :class:`~mlip_plugins.data.structures.LabelKeys` finds by default:
``info["energy"]``, ``info["virial"]`` or ``info["stress"]`` (3x3), ``info["weight"]`` and
``arrays["forces"]``; other keys are kept lower-cased in ``info`` / ``arrays``.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator

import numpy as np
from ase import Atoms
from ase.utils.plugins import ExternalIOFormat
from mlip_plugins.errors import MLIPError

gpumd_xyz_format = ExternalIOFormat(
    desc="GPUMD NEP train.xyz (extended XYZ, GPUMD's case-insensitive keys)",
    code="+F",
    module="mlip_plugins.io.gpumd_xyz",
)


class GPUMDXYZError(MLIPError, ValueError):
    """A malformed frame; the message names the frame, the line and the field."""


def _parse_comment(line: str, where: str) -> dict[str, str]:
    """key=value pairs (values may be quoted); keys lower-cased."""
    try:
        tokens = shlex.split(line, posix=True)
    except ValueError as exc:
        raise GPUMDXYZError(f"{where}: cannot parse the comment line ({exc})") from exc
    pairs: dict[str, str] = {}
    for token in tokens:
        if "=" not in token:
            pairs[token.lower()] = "T"  # a bare flag, as extxyz allows
            continue
        key, value = token.split("=", 1)
        pairs[key.strip().lower()] = value.strip()
    return pairs


def _numbers(value: str, count: int | None, where: str, key: str) -> np.ndarray:
    try:
        array = np.array([float(v) for v in value.replace(",", " ").split()])
    except ValueError as exc:
        raise GPUMDXYZError(f"{where}: field {key!r}: not numbers ({value!r})") from exc
    if count is not None and array.size != count:
        raise GPUMDXYZError(f"{where}: field {key!r}: expected {count} values, got {array.size}")
    return array


def _bools(value: str) -> list[bool]:
    return [v.upper() in ("T", "TRUE", "1") for v in value.split()]


def _properties(value: str, where: str) -> list[tuple[str, str, int]]:
    fields = value.split(":")
    if len(fields) % 3 != 0:
        raise GPUMDXYZError(f"{where}: field 'properties': expected name:type:count triples, got {value!r}")
    columns = []
    for k in range(0, len(fields), 3):
        name, kind, count = fields[k].lower(), fields[k + 1].upper(), fields[k + 2]
        try:
            columns.append((name, kind, int(count)))
        except ValueError as exc:
            raise GPUMDXYZError(f"{where}: field 'properties': bad count {count!r}") from exc
    return columns


def _frame(lines: list[str], start: int, frame: int, name: str) -> tuple[Atoms, int]:
    where = f"{name}: frame {frame} (line {start + 1})"
    try:
        n_atoms = int(lines[start].split()[0])
    except (ValueError, IndexError) as exc:
        raise GPUMDXYZError(f"{where}: expected the number of atoms") from exc
    if start + 2 + n_atoms > len(lines):
        raise GPUMDXYZError(f"{where}: file ends before the {n_atoms} atom lines")
    info = _parse_comment(lines[start + 1], where)
    if "lattice" not in info:
        raise GPUMDXYZError(f"{where}: field 'lattice': missing (GPUMD requires it)")
    cell = _numbers(info.pop("lattice"), 9, where, "lattice").reshape(3, 3)
    columns = _properties(info.pop("properties", "species:S:1:pos:R:3"), where)
    names = [c[0] for c in columns]
    if "species" not in names or "pos" not in names:
        raise GPUMDXYZError(f"{where}: field 'properties': needs species:S:1 and pos:R:3")
    rows = [lines[start + 2 + k].split() for k in range(n_atoms)]
    width = sum(c[2] for c in columns)
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for column, kind, count in columns:
        try:
            block = [row[offset : offset + count] for row in rows]
            if any(len(b) != count for b in block):
                raise ValueError("short line")
            if kind == "S":
                arrays[column] = np.array([b[0] if count == 1 else " ".join(b) for b in block])
            elif kind == "I":
                arrays[column] = np.array(block, dtype=int).reshape(n_atoms, -1).squeeze(-1) if count == 1 else np.array(block, dtype=int)
            elif kind == "L":
                arrays[column] = np.array([[v.upper() in ("T", "TRUE", "1") for v in b] for b in block]).squeeze(-1)
            else:
                values = np.array(block, dtype=float)
                arrays[column] = values[:, 0] if count == 1 else values
        except ValueError as exc:
            raise GPUMDXYZError(f"{where}: column {column!r}: cannot read {n_atoms} rows of {width} values ({exc})") from exc
        offset += count
    pbc = _bools(info.pop("pbc")) if "pbc" in info else [True, True, True]
    atoms = Atoms(symbols=list(arrays.pop("species")), positions=arrays.pop("pos"), cell=cell, pbc=pbc)
    for force_key in ("force", "forces"):
        if force_key in arrays:
            atoms.arrays["forces"] = np.asarray(arrays.pop(force_key), dtype=float).reshape(n_atoms, 3)
            break
    for key, value in arrays.items():
        atoms.arrays[key] = value
    for key, value in info.items():
        if key in ("virial", "stress"):
            atoms.info[key] = _numbers(value, 9, where, key).reshape(3, 3)
        elif key in ("energy", "weight", "energy_weight", "charge", "temperature"):
            atoms.info[key] = float(_numbers(value, 1, where, key)[0])
        else:
            try:
                numbers = np.array([float(v) for v in value.split()])
                atoms.info[key] = numbers[0] if numbers.size == 1 else numbers
            except ValueError:
                atoms.info[key] = value
    return atoms, start + 2 + n_atoms


def read_gpumd_xyz(fileobj, index=slice(None)) -> Iterator[Atoms]:
    """Yield the frames of a GPUMD train.xyz selected by ``index`` (a slice or an int)."""
    name = getattr(fileobj, "name", "<stream>")
    lines = [line for line in fileobj.read().splitlines()]
    frames: list[Atoms] = []
    cursor, frame = 0, 0
    while cursor < len(lines):
        if not lines[cursor].strip():
            cursor += 1
            continue
        atoms, cursor = _frame(lines, cursor, frame, name)
        frames.append(atoms)
        frame += 1
    selected = frames[index] if isinstance(index, slice) else [frames[index]]
    yield from selected


def write_gpumd_xyz(fileobj, images, write_virial: bool = True) -> None:
    """Write labelled structures as a GPUMD train.xyz (energy, virial, weight, forces)."""
    if isinstance(images, Atoms):
        images = [images]
    for atoms in images:
        results = dict(getattr(atoms.calc, "results", {}) or {}) if atoms.calc is not None else {}
        energy = atoms.info.get("energy", results.get("energy"))
        forces = atoms.arrays.get("forces", results.get("forces"))
        stress = atoms.info.get("stress", results.get("stress"))
        fields = ['lattice="' + " ".join(f"{v:.10f}" for v in atoms.cell.array.reshape(-1)) + '"']
        if energy is not None:
            fields.append(f"energy={float(energy):.10f}")
        if stress is not None and write_virial:
            s = np.asarray(stress, dtype=float)
            if s.size == 6:
                xx, yy, zz, yz, xz, xy = s
                s = np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
            virial = -s.reshape(3, 3) * atoms.get_volume()
            fields.append('virial="' + " ".join(f"{v:.10f}" for v in virial.reshape(-1)) + '"')
        if "weight" in atoms.info:
            fields.append(f"weight={float(atoms.info['weight'])}")
        if not all(atoms.pbc):
            fields.append('pbc="' + " ".join("T" if p else "F" for p in atoms.pbc) + '"')
        props = "species:S:1:pos:R:3" + (":force:R:3" if forces is not None else "")
        fields.append(f"properties={props}")
        fileobj.write(f"{len(atoms)}\n{' '.join(fields)}\n")
        for k, (symbol, position) in enumerate(zip(atoms.get_chemical_symbols(), atoms.positions)):
            row = f"{symbol} " + " ".join(f"{v:.10f}" for v in position)
            if forces is not None:
                row += " " + " ".join(f"{v:.10f}" for v in np.asarray(forces)[k])
            fileobj.write(row + "\n")
