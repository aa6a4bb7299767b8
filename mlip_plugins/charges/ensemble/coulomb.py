"""Shielded Coulomb kernel and smooth switching shared by the ensemble prior and the QEq reference.

Charges are Gaussian clouds of width sigma_i (default: the covalent radius, Cordero et al.
2008, as tabulated by ASE), so the pair kernel is finite at short range:

    J_ij(r) = k_e erf(r / (sqrt(2) gamma_ij)) / r,   gamma_ij = sqrt(sigma_i^2 + sigma_j^2),

with k_e the project's Coulomb constant (:data:`mlip_plugins.units.COULOMB_CONSTANT`, 14.3996 eV Å / e^2).
"""

from __future__ import annotations

import math

import torch
from ase.data import covalent_radii

from mlip_plugins.nn import cosine_switch
from mlip_plugins.units import COULOMB_CONSTANT


def gaussian_widths(atomic_numbers: torch.Tensor) -> torch.Tensor:
    """Charge-cloud widths sigma_i (Å) = covalent radius of each atom's element."""
    table = torch.as_tensor(covalent_radii, dtype=torch.float64, device=atomic_numbers.device)
    return table[atomic_numbers]


def shielded_coulomb(distance: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """k_e erf(r / (sqrt(2) gamma)) / r, the energy (eV) of two unit Gaussian charges at distance r."""
    return COULOMB_CONSTANT * torch.erf(distance / (math.sqrt(2.0) * gamma)) / distance


def smooth_switch(distance: torch.Tensor, cutoff: float, width: float) -> torch.Tensor:
    """1 below ``cutoff - width``, 0 beyond ``cutoff``, a cosine step in between (C1 continuous)."""
    if width <= 0:
        raise ValueError(f"switch width must be positive, got {width}")
    return cosine_switch(distance, cutoff - width, width)
