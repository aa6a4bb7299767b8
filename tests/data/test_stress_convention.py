"""The VASP-kB stress option (``data.keys.stress_kB_vasp``): units, order and sign.

ASE's stress is (1/V) dE/dstrain: an expanded cell pulls back, so its stress is positive
(tensile). VASP prints a pressure, positive when compressed. These tests check the sign on an
EMT cell against ASE's own stress, and on the mlearn Mo elastic set (skipped without it).
"""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.io import write
from ase.units import GPa

from mlip_plugins.data.reading import read_structures
from mlip_plugins.data.reference_datasets import DatasetNotFound, dataset_path
from mlip_plugins.data.structures import DataError, LabelKeys, stress_from_vasp_kB

MLEARN_KEYS = LabelKeys(stress_kB_vasp="virial_stress_kB_vasp")


def _sheared_expanded_cu():
    atoms = bulk("Cu", "fcc", a=3.6 * 1.03, cubic=True)  # EMT's a0 is about 3.59 Å: expanded 3 %
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + [[0, 0.02, 0.01], [0, 0, 0.015], [0, 0, 0]]), scale_atoms=True)
    atoms.calc = EMT()
    return atoms


def test_expanded_emt_cell_is_tensile_in_ase():
    """The reference fact the conversion relies on: ASE's stress of an expanded cell is positive."""
    stress = _sheared_expanded_cu().get_stress(voigt=False)
    assert np.all(np.diag(stress) > 0.01)


def test_vasp_kB_round_trip_reproduces_ase_stress(tmp_path):
    """An EMT stress written as VASP would print it (pressure in kB, order xx yy zz xy yz xz)
    is read back as ASE's stress: same values, order and sign."""
    atoms = _sheared_expanded_cu()
    ase_voigt = atoms.get_stress()                      # xx yy zz yz xz xy, eV/Å³
    xx, yy, zz, yz, xz, xy = ase_voigt
    vasp_kB = -np.array([xx, yy, zz, xy, yz, xz]) / (0.1 * GPa)  # expanded: negative pressure
    assert np.all(vasp_kB[:3] < 0)
    frame = atoms.copy()
    frame.info["energy"] = atoms.get_potential_energy()
    frame.info["virial_stress_kB_vasp"] = vasp_kB
    write(tmp_path / "vasp.extxyz", frame)
    [read] = read_structures(tmp_path / "vasp.extxyz", MLEARN_KEYS)
    np.testing.assert_allclose(read.labels["stress"], atoms.get_stress(voigt=False), rtol=1e-9, atol=1e-12)
    # without the option, the key is not a stress
    [plain] = read_structures(tmp_path / "vasp.extxyz", LabelKeys())
    assert "stress" not in plain.labels


def test_vasp_kB_needs_six_components():
    with pytest.raises(DataError, match=r"f.xyz: frame 3: .*expected 6 components"):
        stress_from_vasp_kB([1.0, 2.0, 3.0], "f.xyz: frame 3: field 'virial_stress_kB_vasp'")


def test_mlearn_mo_elastic_set_expanded_cells_are_tensile():
    """On the DFT data: among mlearn Mo's strained (Elastic) cells, the mean converted normal
    stress rises with the volume per atom (expanded = tensile = positive in ASE)."""
    try:
        path = dataset_path("mlearn_zuo2020", "Mo_training.extxyz")
    except DatasetNotFound as exc:
        pytest.skip(f"mlearn Mo not on this machine: {exc}")
    elastic = [s for s in read_structures(path, MLEARN_KEYS) if s.atoms.info.get("config_type") == "Elastic"]
    assert len(elastic) > 10
    volume = np.array([s.atoms.get_volume() / len(s.atoms) for s in elastic])
    pressure_like = np.array([np.trace(s.labels["stress"]) / 3 for s in elastic])
    assert np.corrcoef(volume, pressure_like)[0, 1] > 0.8
    # the most expanded cell is tensile, the most compressed one compressive
    assert pressure_like[np.argmax(volume)] > 0 > pressure_like[np.argmin(volume)]
