"""Turn ASE ``Atoms`` (with labels) into graphs that follow the data contract of docs/architecture.md."""

from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from ase import Atoms

from mlip_plugins.data.neighbors import neighbor_estimate, neighbor_list
from mlip_plugins.errors import MLIPError

if TYPE_CHECKING:
    from torch_geometric.data import Data


class DataError(MLIPError, ValueError):
    """Bad input data; the message names the file, the structure index and the field."""


@dataclass
class LabelKeys:
    """Where labels live in an ASE ``Atoms`` (``info``, ``arrays`` or the attached calculator).

    ``stress`` (ASE's convention: eV/Å³, positive = tensile) is read first; if absent,
    ``stress_kB_vasp`` (when set) names a VASP stress in kB, six values in VASP's order
    xx yy zz xy yz xz, positive = compressive, as the mlearn files store it
    (``virial_stress_kB_vasp``), converted by :func:`stress_from_vasp_kB`; else ``virial``
    (eV, GPUMD convention) is converted to stress = -virial / volume.
    """

    energy: str = "energy"
    forces: str = "forces"
    stress: str = "stress"
    virial: str = "virial"
    stress_kB_vasp: str | None = None
    charges: str = "charges"
    total_charge: str = "total_charge"
    weight: str = "weight"
    bec: str = "bec"
    dipole: str = "dipole"
    polarizability: str = "pol"  # GPUMD's name: 9 values row-major, or 6 (xx yy zz xy yz zx)
    extra: dict = field(default_factory=dict)


def _calc_results(atoms: Atoms) -> dict:
    calc = atoms.calc
    return dict(getattr(calc, "results", {}) or {}) if calc is not None else {}


def _lookup(atoms: Atoms, key: str):
    if key in atoms.info:
        return atoms.info[key]
    if key in atoms.arrays:
        return atoms.arrays[key]
    results = _calc_results(atoms)
    if key in results:
        return results[key]
    return None


#: ASE's own names for per-atom and structure charges, read when the configured key (the
#: default ``charges`` / ``total_charge``) is absent: extxyz files written by ASE (and the n2p2 /
#: RuNNer conversions of the reference datasets) store per-atom charges as
#: ``atoms.arrays["initial_charges"]``; ``atoms.info["charge"]`` is the structure's net charge.
#: ``MLIPCalculator`` falls back to the same names at inference. Default key -> (where, ASE's name).
ASE_LABEL_FALLBACKS = {"charges": ("arrays", "initial_charges"), "total_charge": ("info", "charge")}


def lookup_with_ase_fallback(atoms: Atoms, key: str):
    """(key found, value) of label ``key``, else of ASE's own name for it when ``key`` is a
    default of :data:`ASE_LABEL_FALLBACKS`; (key, None) when neither is there."""
    value = _lookup(atoms, key)
    if value is None and key in ASE_LABEL_FALLBACKS:
        where, name = ASE_LABEL_FALLBACKS[key]
        found = getattr(atoms, where)
        if name in found:
            return name, found[name]
    return key, value


def _scalar_label(value, where: str) -> float:
    """One finite number (a structure's total charge, ...), else a ``DataError`` naming the field."""
    try:
        number = float(np.asarray(value, dtype=np.float64).reshape(-1)[0])
    except (TypeError, ValueError, IndexError) as exc:
        raise DataError(f"{where}: not a number ({value!r})") from exc
    if not np.isfinite(number):
        raise DataError(f"{where}: not finite ({value!r})")
    return number


def _as_stress_matrix(value, where: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64).reshape(-1)
    if arr.size == 9:
        return arr.reshape(3, 3)
    if arr.size == 6:  # Voigt order xx yy zz yz xz xy
        xx, yy, zz, yz, xz, xy = arr
        return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    raise DataError(f"{where}: expected 6 or 9 components, got {arr.size}")


#: VASP's stress order (OUTCAR "in kB" line, mlearn's ``virial_stress``) -> ASE's Voigt order
#: xx yy zz yz xz xy
_VASP_TO_ASE_VOIGT = [0, 1, 2, 4, 5, 3]


def stress_from_vasp_kB(value, where: str) -> np.ndarray:
    """ASE stress (3x3, eV/Å³, positive = tensile) from a VASP stress in kB.

    VASP prints the stress as a pressure (positive = compressive: the cell wants to expand)
    in kB = 0.1 GPa, in the order xx yy zz xy yz xz; ASE's stress is the derivative of the
    energy by the strain over the volume (positive = tensile), so
    ``stress_ase = -0.1 * ase.units.GPa * value`` after reordering (as ASE's own VASP reader
    does). ``tests/test_stress_convention.py`` checks the sign on an expanded EMT cell and on mlearn Mo.
    """
    from ase.units import GPa

    arr = np.asarray(value, dtype=np.float64).reshape(-1)
    if arr.size != 6:
        raise DataError(f"{where}: expected 6 components (VASP order xx yy zz xy yz xz, kB), got {arr.size}")
    return _as_stress_matrix(-0.1 * GPa * arr[_VASP_TO_ASE_VOIGT], where)


#: magnitudes no physical structure reaches (eV, Å, e): a value beyond them is a corrupt file
#: or wrong units. All-electron total energies of the heaviest elements are ~1e6 eV/atom.
ABSURD = {"energy per atom": 1e7, "forces": 1e5, "stress": 1e5, "positions": 1e6, "cell": 1e6, "charges": 1e3}


def _check_magnitude(array, what: str, where: str, unit: str) -> None:
    """Reject values beyond ``ABSURD[what]`` with the first offending index."""
    values = np.abs(np.asarray(array, dtype=np.float64))
    limit = ABSURD[what]
    if values.size and float(values.max()) > limit:
        at = f" at index {int(np.argmax(values.reshape(len(values), -1).max(axis=1)))}" if values.size > 1 else ""
        raise DataError(f"{where}: |{what}| = {float(values.max()):.3g} {unit}{at} exceeds {limit:.0e} "
                        f"(a corrupt value or wrong units)")


def _check_finite(array: np.ndarray, where: str) -> None:
    if not np.all(np.isfinite(array)):
        bad = np.argwhere(~np.isfinite(np.asarray(array).reshape(len(array), -1)))[0][0] if np.ndim(array) else 0
        raise DataError(f"{where}: contains NaN or inf (first at index {bad})")


def _per_atom_label(value, shape: tuple[int, ...], what: str, where: str, unit: str) -> np.ndarray:
    """A per-atom label as float64 of ``shape``, finite and of a physical magnitude."""
    array = np.asarray(value, dtype=np.float64)
    if len(shape) == 1:
        array = array.reshape(-1)
    if array.shape != shape:
        raise DataError(f"{where}: shape {array.shape}, expected {shape} ({shape[0]} atoms)")
    _check_finite(array, where)
    _check_magnitude(array, what, where, unit)
    return array


#: the per-structure tensor labels (a TNEP's targets) and their shape per structure
STRUCTURE_TENSOR_SHAPES = {"dipole": (3,), "polarizability": (3, 3)}


def _structure_tensor(value, shape: tuple[int, ...], where: str) -> np.ndarray:
    """A per-structure vector/tensor label (dipole, polarizability) as float64 of ``shape``, finite."""
    try:
        array = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where}: not numbers ({value!r})") from exc
    if array.shape != shape:
        raise DataError(f"{where}: {array.size} values, expected {shape[0]}")
    _check_finite(array, where)
    return array


def extract_labels(atoms: Atoms, keys: LabelKeys, where: str, require_energy: bool = False) -> dict:
    """Read and check the labels of one structure. Missing labels are simply absent."""
    n = len(atoms)
    labels: dict = {}
    energy = _lookup(atoms, keys.energy)
    if energy is not None:
        try:
            labels["energy"] = float(np.asarray(energy, dtype=np.float64).reshape(-1)[0])
        except (TypeError, ValueError, IndexError) as exc:
            raise DataError(f"{where}: field {keys.energy!r}: not a number ({energy!r})") from exc
        _check_finite(np.array([labels["energy"]]), f"{where}: field {keys.energy!r}")
        _check_magnitude(np.array([labels["energy"] / max(n, 1)]), "energy per atom", f"{where}: field {keys.energy!r}", "eV")
    elif require_energy:
        raise DataError(f"{where}: field {keys.energy!r}: missing (no such key in info, arrays or calculator results)")
    forces = _lookup(atoms, keys.forces)
    if forces is not None:
        labels["forces"] = _per_atom_label(forces, (n, 3), "forces", f"{where}: field {keys.forces!r}", "eV/Å")
    stress = _lookup(atoms, keys.stress)
    vasp_stress = _lookup(atoms, keys.stress_kB_vasp) if keys.stress_kB_vasp else None
    if stress is None and vasp_stress is not None:
        field_name = f"{where}: field {keys.stress_kB_vasp!r}"
        labels["stress"] = stress_from_vasp_kB(vasp_stress, field_name)
        _check_finite(labels["stress"], field_name)
        _check_magnitude(labels["stress"], "stress", f"{field_name} (as stress)", "eV/Å³")
    elif stress is not None:
        labels["stress"] = _as_stress_matrix(stress, f"{where}: field {keys.stress!r}")
        _check_finite(labels["stress"], f"{where}: field {keys.stress!r}")
        _check_magnitude(labels["stress"], "stress", f"{where}: field {keys.stress!r}", "eV/Å³")
    else:
        virial = _lookup(atoms, keys.virial)
        if virial is not None:
            volume = abs(np.linalg.det(atoms.cell.array))
            if volume < 1e-8:
                raise DataError(f"{where}: field {keys.virial!r}: a virial needs a cell with non-zero volume")
            labels["stress"] = -_as_stress_matrix(virial, f"{where}: field {keys.virial!r}") / volume
            _check_finite(labels["stress"], f"{where}: field {keys.virial!r}")
            _check_magnitude(labels["stress"], "stress", f"{where}: field {keys.virial!r} (as stress)", "eV/Å³")
    charges_key, charges = lookup_with_ase_fallback(atoms, keys.charges)
    if charges is not None:
        labels["charges"] = _per_atom_label(charges, (n,), "charges", f"{where}: field {charges_key!r}", "e")
    bec = _lookup(atoms, keys.bec)
    if bec is not None:  # GPUMD's bec:R:9, row-major xx xy xz yx ... (row = polarisation direction)
        where_bec = f"{where}: field {keys.bec!r}"
        flat = _per_atom_label(np.asarray(bec, dtype=np.float64).reshape(n, -1) if np.size(bec) == 9 * n else bec,
                               (n, 9), "charges", where_bec, "e")
        labels["bec"] = flat.reshape(n, 3, 3)
    dipole = _lookup(atoms, keys.dipole)
    if dipole is not None:
        labels["dipole"] = _structure_tensor(dipole, (3,), f"{where}: field {keys.dipole!r}")
    polarizability = _lookup(atoms, keys.polarizability)
    if polarizability is not None:
        where_pol = f"{where}: field {keys.polarizability!r}"
        values = np.asarray(polarizability, dtype=np.float64).reshape(-1)
        if values.size == 6:  # GPUMD's reduced order xx yy zz xy yz zx
            xx, yy, zz, xy, yz, zx = values
            values = np.array([xx, xy, zx, xy, yy, yz, zx, yz, zz])
        labels["polarizability"] = _structure_tensor(values, (9,), where_pol).reshape(3, 3)
    total_key, total_charge = lookup_with_ase_fallback(atoms, keys.total_charge)
    if total_charge is not None:
        labels["total_charge"] = _scalar_label(total_charge, f"{where}: field {total_key!r}")
    elif "charges" in labels:
        labels["total_charge"] = float(labels["charges"].sum())
    weight = _lookup(atoms, keys.weight)
    if weight is not None:
        labels["weight"] = float(np.asarray(weight, dtype=np.float64).reshape(-1)[0])
        if not np.isfinite(labels["weight"]) or labels["weight"] < 0:
            raise DataError(f"{where}: field {keys.weight!r}: must be a finite non-negative number")
    return labels


#: predicted neighbours per atom beyond which a structure is refused before any list is built:
#: dense solids have ~50-1500 within 5-12 Å; at this limit a list costs ~1 MB per atom
MAX_NEIGHBORS_PER_ATOM = 10_000


def check_neighbor_count(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float, where: str) -> None:
    """Refuse a structure whose neighbour list within ``cutoff`` would exceed ``MAX_NEIGHBORS_PER_ATOM``
    per atom (a crafted or mis-scaled tiny periodic cell), before anything is allocated."""
    estimate = neighbor_estimate(positions, cell, pbc, cutoff)
    if estimate.per_atom > MAX_NEIGHBORS_PER_ATOM:
        field = "cell" if np.any(pbc) else "positions"
        raise DataError(
            f"{where}: field {field!r}: density {estimate.density:.3g} atoms/Å³ (smallest periodic cell height "
            f"{estimate.min_height:.3g} Å) predicts ~{estimate.per_atom:.3g} neighbours per atom within {cutoff:g} Å, "
            f"above the limit of {MAX_NEIGHBORS_PER_ATOM} (cell in the wrong units, or atoms piled up?)"
        )


def check_geometry(atoms: Atoms, where: str, min_distance: float = 0.1) -> None:
    """Reject NaN/inf positions, degenerate periodic cells and atoms on top of each other."""
    if len(atoms) == 0:
        raise DataError(f"{where}: field 'positions': structure has no atoms")
    positions = atoms.get_positions()
    _check_finite(positions, f"{where}: field 'positions'")
    _check_magnitude(positions, "positions", f"{where}: field 'positions'", "Å")
    pbc = np.asarray(atoms.pbc, dtype=bool)
    cell = atoms.cell.array
    _check_finite(cell, f"{where}: field 'cell'")
    _check_magnitude(cell, "cell", f"{where}: field 'cell'", "Å")
    if pbc.any():
        lengths = np.linalg.norm(cell, axis=1)
        if np.any(lengths[pbc] < 1e-8) or abs(np.linalg.det(cell)) < 1e-8:
            raise DataError(f"{where}: field 'cell': zero-volume cell with periodic boundaries {pbc.tolist()}")
    search = max(min_distance, 1.5)
    check_neighbor_count(positions, cell, pbc, search, where)
    if len(atoms) > 1:
        # search within 1.5 Å and filter: a cell list with a 0.1 Å cutoff has ~1e6 bins per
        # 1000 Å^3 (tens of ms per structure), one with 1.5 Å a few hundred
        edge_index, shifts = neighbor_list(positions, cell, pbc, search)
        distances = np.linalg.norm(positions[edge_index[0]] - positions[edge_index[1]] + shifts @ cell, axis=1)
        close = np.flatnonzero(distances < min_distance)
        if close.size:
            j, i = edge_index[:, close[0]]
            raise DataError(
                f"{where}: field 'positions': atoms {i} and {j} are closer than {min_distance} Å "
                f"(duplicate atoms?)"
            )


def graph_arrays(atoms: Atoms, cutoff: float, labels: dict | None = None, where: str = "structure") -> dict[str, np.ndarray]:
    """The fields of one graph (data contract of docs/architecture.md) as float64/int64/bool numpy
    arrays, with a vesin neighbour list; :func:`graph_from_arrays` makes the ``Data``.

    ``where`` ('file: frame k') names the structure in the error raised when its neighbour list
    would be too large (:func:`check_neighbor_count`). Missing labels are stored as zeros with
    a ``has_<label>`` flag so that structures with partial labels batch together and the loss
    masks what is absent; ``charges`` is present only when labelled. The on-disk graph store
    (:mod:`mlip_plugins.data.store`) stores exactly these arrays.
    """
    labels = labels or {}
    n = len(atoms)
    positions = np.asarray(atoms.get_positions(), dtype=np.float64)
    pbc = np.asarray(atoms.pbc, dtype=bool)
    # Non-periodic structures carry a zero cell (data contract); mixed boundaries keep theirs.
    cell = atoms.cell.array.copy() if pbc.any() else np.zeros((3, 3))
    check_neighbor_count(positions, cell, pbc, cutoff, where)
    edge_index, shifts = neighbor_list(positions, cell, pbc, cutoff)
    arrays = {
        "pos": positions,
        "z": np.array(atoms.numbers, dtype=np.int64),  # copies: a graph never aliases the Atoms
        "cell": np.asarray(cell, dtype=np.float64).reshape(1, 3, 3),
        "pbc": pbc.reshape(1, 3),
        "edge_index": edge_index,
        "shifts": shifts,
        "energy": np.array([labels.get("energy", 0.0)], dtype=np.float64),
        "has_energy": np.array([("energy" in labels)]),
        "forces": np.array(labels["forces"], dtype=np.float64) if "forces" in labels else np.zeros((n, 3)),
        "has_forces": np.array([("forces" in labels)]),
        "stress": np.array(labels["stress"], dtype=np.float64).reshape(1, 3, 3) if "stress" in labels else np.zeros((1, 3, 3)),
        "has_stress": np.array([("stress" in labels)]),
    }
    if "charges" in labels:
        arrays["charges"] = np.array(labels["charges"], dtype=np.float64)
    arrays["bec"] = np.array(labels["bec"], dtype=np.float64) if "bec" in labels else np.zeros((n, 3, 3))
    arrays["has_bec"] = np.array([("bec" in labels)])
    for name, shape in STRUCTURE_TENSOR_SHAPES.items():  # one row: this structure
        arrays[name] = np.array(labels[name], dtype=np.float64).reshape(1, *shape) if name in labels else np.zeros((1, *shape))
        arrays[f"has_{name}"] = np.array([(name in labels)])
    arrays["total_charge"] = np.array([labels.get("total_charge", 0.0)], dtype=np.float64)
    arrays["weight"] = np.array([labels.get("weight", 1.0)], dtype=np.float64)
    return arrays


#: fields of a graph that are integer (torch.long) or bool; every other field is a float
#: converted to torch's default dtype
_INTEGER_FIELDS = ("z", "edge_index", "shifts")


def graph_from_arrays(arrays: dict) -> Data:
    """The ``Data`` of :func:`graph_arrays`' fields (numpy arrays or tensors): integers as
    ``torch.long``, flags as ``torch.bool``, floats in torch's default dtype."""
    # imported here: torch_geometric (with torch._dynamo) costs a graph-store build worker,
    # which only makes graph_arrays, ~150 MB and a second
    from torch_geometric.data import Data

    dtype = torch.get_default_dtype()
    fields = {}
    for key, value in arrays.items():
        value = torch.as_tensor(value)
        if key in _INTEGER_FIELDS:
            fields[key] = value.long()
        elif value.dtype == torch.bool:
            fields[key] = value
        else:
            fields[key] = value.to(dtype)
    return Data(**fields)


def atoms_to_graph(atoms: Atoms, cutoff: float, labels: dict | None = None, where: str = "structure") -> Data:
    """Build one graph (data contract of docs/architecture.md) with a vesin neighbour list
    (:func:`graph_arrays`, then :func:`graph_from_arrays`)."""
    return graph_from_arrays(graph_arrays(atoms, cutoff, labels, where))


def chunk_graphs(graphs: Sequence, max_atoms: int = 128) -> list[list[int]]:
    """Consecutive groups of structure indices with at most ``max_atoms`` atoms (or one structure):
    the batches of a pass that must bound its memory (the Fisher analysis, the full-batch refinement)."""
    chunks: list[list[int]] = []
    current: list[int] = []
    atoms = 0
    for k, graph in enumerate(graphs):
        n = int(graph.num_nodes)
        if current and atoms + n > max_atoms:
            chunks.append(current)
            current, atoms = [], 0
        current.append(k)
        atoms += n
    if current:
        chunks.append(current)
    return chunks
