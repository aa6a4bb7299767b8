"""Turn ASE ``Atoms`` (with labels) into graphs that follow the data contract of DESIGN.md."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from ase import Atoms
from torch_geometric.data import Data

from mlip_plugins.data.neighbors import neighbor_list
from mlip_plugins.errors import MLIPError


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
        forces = np.asarray(forces, dtype=np.float64)
        if forces.shape != (n, 3):
            raise DataError(f"{where}: field {keys.forces!r}: shape {forces.shape}, expected ({n}, 3)")
        _check_finite(forces, f"{where}: field {keys.forces!r}")
        _check_magnitude(forces, "forces", f"{where}: field {keys.forces!r}", "eV/Å")
        labels["forces"] = forces
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
    charges = _lookup(atoms, keys.charges)
    if charges is not None:
        charges = np.asarray(charges, dtype=np.float64).reshape(-1)
        if charges.shape != (n,):
            raise DataError(f"{where}: field {keys.charges!r}: {charges.size} values for {n} atoms")
        _check_finite(charges, f"{where}: field {keys.charges!r}")
        _check_magnitude(charges, "charges", f"{where}: field {keys.charges!r}", "e")
        labels["charges"] = charges
    total_charge = _lookup(atoms, keys.total_charge)
    if total_charge is not None:
        labels["total_charge"] = float(np.asarray(total_charge, dtype=np.float64).reshape(-1)[0])
    elif "charges" in labels:
        labels["total_charge"] = float(labels["charges"].sum())
    weight = _lookup(atoms, keys.weight)
    if weight is not None:
        labels["weight"] = float(np.asarray(weight, dtype=np.float64).reshape(-1)[0])
        if not np.isfinite(labels["weight"]) or labels["weight"] < 0:
            raise DataError(f"{where}: field {keys.weight!r}: must be a finite non-negative number")
    return labels


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
    if len(atoms) > 1:
        # search within 1.5 Å and filter: a cell list with a 0.1 Å cutoff has ~1e6 bins per
        # 1000 Å^3 (tens of ms per structure), one with 1.5 Å a few hundred
        edge_index, shifts = neighbor_list(positions, cell, pbc, max(min_distance, 1.5))
        distances = np.linalg.norm(positions[edge_index[0]] - positions[edge_index[1]] + shifts @ cell, axis=1)
        close = np.flatnonzero(distances < min_distance)
        if close.size:
            j, i = edge_index[:, close[0]]
            raise DataError(
                f"{where}: field 'positions': atoms {i} and {j} are closer than {min_distance} Å "
                f"(duplicate atoms?)"
            )


def atoms_to_graph(atoms: Atoms, cutoff: float, labels: dict | None = None) -> Data:
    """Build one graph (data contract of DESIGN.md) with a vesin neighbour list.

    Missing labels are stored as zeros with a ``has_<label>`` flag so that structures with
    partial labels batch together and the loss masks what is absent.
    """
    labels = labels or {}
    n = len(atoms)
    positions = atoms.get_positions()
    pbc = np.asarray(atoms.pbc, dtype=bool)
    # Non-periodic structures carry a zero cell (data contract); mixed boundaries keep theirs.
    cell = atoms.cell.array.copy() if pbc.any() else np.zeros((3, 3))
    edge_index, shifts = neighbor_list(positions, cell, pbc, cutoff)
    dtype = torch.get_default_dtype()
    data = Data(
        pos=torch.tensor(positions, dtype=dtype),
        z=torch.tensor(atoms.numbers, dtype=torch.long),
        cell=torch.tensor(cell, dtype=dtype).view(1, 3, 3),
        pbc=torch.tensor(pbc).view(1, 3),
        edge_index=torch.from_numpy(edge_index),
        shifts=torch.from_numpy(shifts),
    )
    data.energy = torch.tensor([labels.get("energy", 0.0)], dtype=dtype)
    data.has_energy = torch.tensor([("energy" in labels)])
    data.forces = torch.tensor(labels["forces"], dtype=dtype) if "forces" in labels else torch.zeros(n, 3, dtype=dtype)
    data.has_forces = torch.tensor([("forces" in labels)])
    data.stress = (
        torch.tensor(labels["stress"], dtype=dtype).view(1, 3, 3) if "stress" in labels else torch.zeros(1, 3, 3, dtype=dtype)
    )
    data.has_stress = torch.tensor([("stress" in labels)])
    if "charges" in labels:
        data.charges = torch.tensor(labels["charges"], dtype=dtype)
    data.total_charge = torch.tensor([labels.get("total_charge", 0.0)], dtype=dtype)
    data.weight = torch.tensor([labels.get("weight", 1.0)], dtype=dtype)
    return data
