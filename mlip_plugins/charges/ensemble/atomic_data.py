"""Measured ionisation energies and electron affinities: the energies of the atomic states.

The ensemble charge model (:mod:`mlip_plugins.charges.ensemble.ensemble`) describes every atom as a
mixture of integer-charge states of the free atom. Relative to the neutral atom (energy 0):

* cation  (N-1 electrons, q = +1): ``E = IP1``
* dication (N-2 electrons, q = +2): ``E = IP1 + IP2``
* neutral (N electrons, q = 0):    ``E = 0``
* anion   (N+1 electrons, q = -1): ``E = -EA``

Sources of the numbers below (eV, H..Rn), read from the database shipped with the
``mendeleev`` package (version 1.3.0) and rounded to 0.1 meV:

* ionisation energies ``IP1``, ``IP2``: NIST Atomic Spectra Database, ionisation energies
  (A. Kramida, Yu. Ralchenko, J. Reader and NIST ASD Team);
* electron affinities ``EA``: CRC Handbook of Chemistry and Physics, 95th ed. (W. M. Haynes,
  2014), with updates for Nb (Luo et al. 2016), Co (Chen et al. 2016) and Pb (Chen et al.
  2016) as documented by mendeleev.

The table is kept here (instead of a run-time dependency on mendeleev, which pulls in pandas,
SQLAlchemy and Pint, and whose table functions fail with SQLAlchemy 2.1) so that models stay
reproducible; ``tests/charges/test_latent_atomic_data.py`` checks it against mendeleev when that is
installed.

``EA = None`` marks an element with no bound anion (noble gases, Be, N, Mg, Mn, Zn, Cd,
Hg, ... : mendeleev lists either nothing or the energy of a metastable anion, negative). For
those the ensemble places the anion at the neutral energy (``EA = 0``): an unbound anion is
never more stable than the neutral atom plus a free electron at rest, so 0 is the physical
bound, and learned environment corrections can only raise or lower it from there.
``IP2 = None`` (H) means the dication does not exist; that state is masked out.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from mlip_plugins.errors import MLIPError

#: Z -> (symbol, IP1 [eV], IP2 [eV] or None, EA [eV] or None)
ATOMIC_STATE_DATA: dict[int, tuple[str, float, float | None, float | None]] = {
    1: ("H", 13.5984, None, 0.7542),
    2: ("He", 24.5874, 54.4178, None),
    3: ("Li", 5.3917, 75.6401, 0.6180),
    4: ("Be", 9.3227, 18.2111, None),
    5: ("B", 8.2980, 25.1548, 0.2797),
    6: ("C", 11.2603, 24.3831, 1.2621),
    7: ("N", 14.5341, 29.6013, None),
    8: ("O", 13.6181, 35.1211, 1.4611),
    9: ("F", 17.4228, 34.9708, 3.4012),
    10: ("Ne", 21.5645, 40.9630, None),
    11: ("Na", 5.1391, 47.2864, 0.5479),
    12: ("Mg", 7.6462, 15.0353, None),
    13: ("Al", 5.9858, 18.8285, 0.4328),
    14: ("Si", 8.1517, 16.3458, 1.3895),
    15: ("P", 10.4867, 19.7695, 0.7466),
    16: ("S", 10.3600, 23.3379, 2.0771),
    17: ("Cl", 12.9676, 23.8136, 3.6127),
    18: ("Ar", 15.7596, 27.6297, None),
    19: ("K", 4.3407, 31.6250, 0.5015),
    20: ("Ca", 6.1132, 11.8717, 0.0245),
    21: ("Sc", 6.5615, 12.7998, 0.1880),
    22: ("Ti", 6.8281, 13.5755, 0.0790),
    23: ("V", 6.7462, 14.6340, 0.5250),
    24: ("Cr", 6.7665, 16.4863, 0.6660),
    25: ("Mn", 7.4340, 15.6400, None),
    26: ("Fe", 7.9025, 16.1992, 0.1510),
    27: ("Co", 7.8810, 17.0844, 0.6623),
    28: ("Ni", 7.6399, 18.1688, 1.1560),
    29: ("Cu", 7.7264, 20.2924, 1.2350),
    30: ("Zn", 9.3942, 17.9644, None),
    31: ("Ga", 5.9993, 20.5151, 0.4300),
    32: ("Ge", 7.8994, 15.9346, 1.2327),
    33: ("As", 9.7886, 18.5892, 0.8040),
    34: ("Se", 9.7524, 21.1960, 2.0207),
    35: ("Br", 11.8138, 21.5910, 3.3636),
    36: ("Kr", 13.9996, 24.3598, None),
    37: ("Rb", 4.1771, 27.2895, 0.4859),
    38: ("Sr", 5.6949, 11.0303, 0.0480),
    39: ("Y", 6.2173, 12.2236, 0.3070),
    40: ("Zr", 6.6341, 13.1300, 0.4260),
    41: ("Nb", 6.7588, 14.3200, 0.9174),
    42: ("Mo", 7.0924, 16.1600, 0.7480),
    43: ("Tc", 7.1194, 15.2600, 0.5500),
    44: ("Ru", 7.3605, 16.7600, 1.0500),
    45: ("Rh", 7.4589, 18.0800, 1.1370),
    46: ("Pd", 8.3368, 19.4300, 0.5620),
    47: ("Ag", 7.5762, 21.4844, 1.3020),
    48: ("Cd", 8.9938, 16.9083, None),
    49: ("In", 5.7864, 18.8704, 0.3000),
    50: ("Sn", 7.3439, 14.6331, 1.1121),
    51: ("Sb", 8.6084, 16.6260, 1.0460),
    52: ("Te", 9.0098, 18.6000, 1.9709),
    53: ("I", 10.4512, 19.1313, 3.0590),
    54: ("Xe", 12.1298, 20.9750, None),
    55: ("Cs", 3.8939, 23.1575, 0.4716),
    56: ("Ba", 5.2117, 10.0038, 0.1446),
    57: ("La", 5.5769, 11.1850, 0.4700),
    58: ("Ce", 5.5386, 10.9560, 0.6500),
    59: ("Pr", 5.4702, 10.6310, 0.9620),
    60: ("Nd", 5.5250, 10.7830, 1.9160),
    61: ("Pm", 5.5819, 10.9380, None),
    62: ("Sm", 5.6437, 11.0780, None),
    63: ("Eu", 5.6704, 11.2400, 0.8640),
    64: ("Gd", 6.1498, 12.0760, None),
    65: ("Tb", 5.8638, 11.5130, 1.1650),
    66: ("Dy", 5.9391, 11.6470, 0.3520),
    67: ("Ho", 6.0215, 11.7810, None),
    68: ("Er", 6.1077, 11.9160, None),
    69: ("Tm", 6.1844, 12.0650, 1.0290),
    70: ("Yb", 6.2542, 12.1792, None),
    71: ("Lu", 5.4259, 14.1300, 0.3400),
    72: ("Hf", 6.8251, 14.6100, 0.0140),
    73: ("Ta", 7.5496, 16.2000, 0.3220),
    74: ("W", 7.8640, 16.3700, 0.8163),
    75: ("Re", 7.8335, 16.6000, 0.1500),
    76: ("Os", 8.4382, 17.0000, 1.1000),
    77: ("Ir", 8.9670, 17.0000, 1.5638),
    78: ("Pt", 8.9588, 18.5600, 2.1280),
    79: ("Au", 9.2256, 20.2030, 2.3086),
    80: ("Hg", 10.4375, 18.7569, None),
    81: ("Tl", 6.1083, 20.4283, 0.3770),
    82: ("Pb", 7.4167, 15.0325, 0.3567),
    83: ("Bi", 7.2855, 16.7030, 0.9424),
    84: ("Po", 8.4181, 19.3000, 1.9000),
    85: ("At", 9.3175, 17.8800, 2.8000),
    86: ("Rn", 10.7485, 18.9900, None),}

#: Electron affinity used for an element without a bound anion (see the module docstring).
UNBOUND_ANION_EA = 0.0

#: The charge states the ensemble knows, by name.
STATE_NAMES: dict[int, str] = {2: "dication", 1: "cation", 0: "neutral", -1: "anion"}

#: Default state set: cation, neutral, anion (charges q_k = Z - N_k).
DEFAULT_STATE_CHARGES: tuple[int, ...] = (1, 0, -1)


class MissingAtomicDataError(MLIPError, KeyError):
    """An element has no tabulated ionisation energy (beyond Rn)."""


def _record(z: int) -> tuple[str, float, float | None, float | None]:
    if z not in ATOMIC_STATE_DATA:
        raise MissingAtomicDataError(
            f"no measured ionisation energy tabulated for Z={z}; the ensemble charge model knows H..Rn (Z=1..86)"
        )
    return ATOMIC_STATE_DATA[z]


def ionisation_energy(z: int, order: int = 1) -> float | None:
    """IP1 or IP2 of element ``z`` in eV (None where the ion does not exist)."""
    _, ip1, ip2, _ = _record(int(z))
    if order == 1:
        return ip1
    if order == 2:
        return ip2
    raise ValueError(f"only first and second ionisation energies are tabulated, got order={order}")


def electron_affinity(z: int, bound_only: bool = False) -> float | None:
    """Measured electron affinity of ``z`` in eV; ``UNBOUND_ANION_EA`` (or None) if no bound anion."""
    ea = _record(int(z))[3]
    if ea is None and not bound_only:
        return UNBOUND_ANION_EA
    return ea


def state_energy(z: int, charge: int) -> float | None:
    """Energy of the free-atom state of charge ``charge`` relative to the neutral atom (eV)."""
    if charge == 0:
        return 0.0
    if charge == 1:
        return ionisation_energy(z, 1)
    if charge == 2:
        ip2 = ionisation_energy(z, 2)
        return None if ip2 is None else ionisation_energy(z, 1) + ip2
    if charge == -1:
        return -electron_affinity(z)
    raise ValueError(f"unsupported state charge {charge}; known: {sorted(STATE_NAMES)}")


def check_state_charges(state_charges: Sequence[int]) -> tuple[int, ...]:
    """Validate a state set: distinct known charges including the neutral state."""
    charges = tuple(int(q) for q in state_charges)
    unknown = [q for q in charges if q not in STATE_NAMES]
    if unknown:
        raise ValueError(f"unsupported state charge(s) {unknown}; known: {sorted(STATE_NAMES, reverse=True)}")
    if len(set(charges)) != len(charges):
        raise ValueError(f"state charges must be distinct, got {list(charges)}")
    if 0 not in charges:
        raise ValueError("the state set must contain the neutral state (charge 0)")
    if len(charges) < 2:
        raise ValueError("the ensemble needs at least two states")
    return charges


def state_table(
    atomic_numbers: Sequence[int], state_charges: Sequence[int] = DEFAULT_STATE_CHARGES
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference state energies and the mask of states that exist, for a list of elements.

    Returns:
        energies: [len(atomic_numbers), K] float64, eV relative to the neutral atom (0 where masked).
        mask: [len(atomic_numbers), K] bool, False where the state does not exist (H dication).
    """
    charges = check_state_charges(state_charges)
    energies = torch.zeros(len(atomic_numbers), len(charges), dtype=torch.float64)
    mask = torch.ones(len(atomic_numbers), len(charges), dtype=torch.bool)
    for row, z in enumerate(atomic_numbers):
        for col, q in enumerate(charges):
            value = state_energy(int(z), q)
            if value is None:
                mask[row, col] = False
            else:
                energies[row, col] = value
    return energies, mask


def mulliken_electronegativity(z: int) -> float:
    """chi = (IP1 + EA) / 2 (eV): the QEq electronegativity from the same measured data."""
    return 0.5 * (ionisation_energy(z, 1) + electron_affinity(z))


def chemical_hardness(z: int) -> float:
    """J = IP1 - EA (eV): the QEq self-Coulomb (twice the Parr-Pearson hardness)."""
    return ionisation_energy(z, 1) - electron_affinity(z)
