"""Ionic crystals with known Madelung constants (for tests, calibration and benchmarks).

Geometries follow torch-pme's test suite (lattice scale 1, charges +-1/+-2); the reference
constant M is minus the electrostatic energy per formula unit in Gaussian units,
M = -E / n_fu. Values are independent high-precision Ewald sums (see
/work/shared/research/seed_longrange.md, "numpy" column, which corrects the rounded CsCl,
wurtzite and Wigner values of the literature at the 1e-7..3e-6 level).
Wigner crystals are one species (q = +1) in a neutralising background; there the reference
is the energy per particle, -M/2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from ase import Atoms


@dataclass(frozen=True)
class Crystal:
    name: str
    cell: np.ndarray        # rows are lattice vectors (scale 1)
    fractional: np.ndarray  # fractional coordinates
    charges: np.ndarray
    formula_units: int
    madelung: float         # M = -E / formula_units (E per particle = -M/2 for Wigner crystals)

    def atoms(self, scale: float = 1.0, repeat: tuple[int, int, int] = (1, 1, 1)) -> Atoms:
        """ASE Atoms (numbers: +1 -> 11 (Na), -1 -> 17 (Cl), +2 -> 20 (Ca), -2 -> 8 (O)) with initial charges."""
        numbers = {1.0: 11, -1.0: 17, 2.0: 20, -2.0: 8}
        atoms = Atoms(
            numbers=[numbers[float(q)] for q in self.charges],
            scaled_positions=self.fractional,
            cell=self.cell * scale,
            pbc=True,
        )
        atoms.set_initial_charges(self.charges)
        return atoms.repeat(repeat) if repeat != (1, 1, 1) else atoms


_FCC = np.array([[0.0, 1.0, 1.0], [1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
_C_WZ = math.sqrt(8.0 / 3.0)
_U_WZ = 3.0 / 8.0


def _wurtzite_fractional() -> np.ndarray:
    cell = np.array([[0.5, -math.sqrt(3) / 2, 0.0], [0.5, math.sqrt(3) / 2, 0.0], [0.0, 0.0, _C_WZ]])
    cart = np.array(
        [
            [0.5, 0.5 / math.sqrt(3), 0.0],
            [0.5, 0.5 / math.sqrt(3), _U_WZ * _C_WZ],
            [0.5, -0.5 / math.sqrt(3), 0.5 * _C_WZ],
            [0.5, -0.5 / math.sqrt(3), (0.5 + _U_WZ) * _C_WZ],
        ]
    )
    return cart @ np.linalg.inv(cell)


def _rocksalt_cubic_fractional() -> np.ndarray:
    na = [[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]]
    cl = [[0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5], [0.5, 0.5, 0.5]]
    return np.array(na + cl, dtype=float)


CRYSTALS: dict[str, Crystal] = {
    "NaCl_primitive": Crystal("NaCl_primitive", _FCC, np.array([[0, 0, 0], [0.5, 0.5, 0.5]]), np.array([1.0, -1.0]), 1, 1.7475645946),
    "NaCl_cubic": Crystal("NaCl_cubic", 2.0 * np.eye(3), _rocksalt_cubic_fractional(), np.array([1.0] * 4 + [-1.0] * 4), 4, 1.7475645946),
    "CsCl": Crystal("CsCl", np.eye(3), np.array([[0, 0, 0], [0.5, 0.5, 0.5]]), np.array([-1.0, 1.0]), 1, 2.0353615095),
    "zincblende": Crystal("zincblende", _FCC, np.array([[0, 0, 0], [0.25, 0.25, 0.25]]), np.array([1.0, -1.0]), 1, 1.8914630520),
    "wurtzite": Crystal(
        "wurtzite",
        np.array([[0.5, -math.sqrt(3) / 2, 0.0], [0.5, math.sqrt(3) / 2, 0.0], [0.0, 0.0, _C_WZ]]),
        _wurtzite_fractional(),
        np.array([1.0, -1.0, 1.0, -1.0]),
        2,
        2.6802669939,
    ),
    "fluorite": Crystal(
        "fluorite",
        np.array([[1.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]) / 2,
        np.array([[0.25, 0.25, 0.25], [0.75, 0.75, 0.75], [0, 0, 0]]),
        np.array([-1.0, -1.0, 2.0]),
        1,
        11.6365752271,
    ),
    # one species + neutralising background: energy per particle = -M/2
    "wigner_sc": Crystal("wigner_sc", np.eye(3), np.zeros((1, 3)), np.array([1.0]), 1, 2.8372974795),
    "wigner_bcc_cubiccell": Crystal("wigner_bcc_cubiccell", np.eye(3), np.array([[0, 0, 0], [0.5, 0.5, 0.5]]), np.array([1.0, 1.0]), 1, 3.6392334495),
}
