"""A small charge-equilibration (QEq) reference: the quadratic model the ensemble replaces.

Rappé-Goddard QEq with measured data: per atom E_i(q) = chi_i q + 1/2 J_i q^2 with the
Mulliken electronegativity chi_i = (IP_i + EA_i)/2 and hardness J_i = IP_i - EA_i (the
parabola through the cation, neutral and anion energies), plus shielded Coulomb interactions
between Gaussian charges (widths = covalent radii, :mod:`mlip_plugins.charges.ensemble.coulomb`):

    E(q) = sum_i (chi_i q_i + 1/2 J_i q_i^2) + sum_{i<j} J_ij(r_ij) q_i q_j,   sum_i q_i = Q.

The minimiser solves the linear system [[A, 1], [1^T, 0]] [q; lambda] = [-chi; Q]. Because the
site energy is a parabola rather than the piecewise-linear E(N) of the free atom, QEq keeps a
spurious charge transfer at infinite separation, q_A = (chi_B - chi_A) / (J_A + J_B)
(0.237 e for LiH), and its charges are not bounded by the integer states (q_Li > 1 near
equilibrium). Dense O(N^3) solve, non-periodic structures: a reference, not a production solver.
"""

from __future__ import annotations

import numpy as np
import torch
from ase import Atoms

from mlip_plugins.charges.ensemble.atomic_data import chemical_hardness, mulliken_electronegativity
from mlip_plugins.charges.ensemble.coulomb import gaussian_widths, shielded_coulomb


def qeq_matrix(positions: torch.Tensor, atomic_numbers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The QEq hardness matrix A [N, N] (eV/e^2) and electronegativities chi [N] (eV), float64."""
    pos = positions.to(torch.float64)
    z = [int(v) for v in atomic_numbers]
    chi = torch.tensor([mulliken_electronegativity(v) for v in z], dtype=torch.float64, device=pos.device)
    hardness = torch.tensor([chemical_hardness(v) for v in z], dtype=torch.float64, device=pos.device)
    sigma = gaussian_widths(atomic_numbers.to(pos.device))
    gamma = torch.sqrt(sigma[:, None] ** 2 + sigma[None, :] ** 2)
    n = pos.shape[0]
    off = ~torch.eye(n, dtype=torch.bool, device=pos.device)
    diff = pos[:, None, :] - pos[None, :, :]
    dist = torch.sqrt(torch.where(off, (diff * diff).sum(-1), torch.ones_like(gamma)))
    coulomb = torch.where(off, shielded_coulomb(dist, gamma), torch.zeros_like(gamma))
    return coulomb + torch.diag(hardness), chi


def qeq_charges(positions: torch.Tensor, atomic_numbers: torch.Tensor, total_charge: float = 0.0) -> torch.Tensor:
    """QEq charges [N] (float64, differentiable w.r.t. positions) of one non-periodic structure."""
    a, chi = qeq_matrix(positions, atomic_numbers)
    n = a.shape[0]
    ones = torch.ones(n, 1, dtype=a.dtype, device=a.device)
    system = torch.cat([torch.cat([a, ones], 1), torch.cat([ones.T, torch.zeros(1, 1, dtype=a.dtype, device=a.device)], 1)], 0)
    rhs = torch.cat([-chi, torch.tensor([float(total_charge)], dtype=a.dtype, device=a.device)])
    return torch.linalg.solve(system, rhs)[:n]


def qeq_energy(positions: torch.Tensor, atomic_numbers: torch.Tensor, charges: torch.Tensor) -> torch.Tensor:
    """E(q) of the QEq model (eV) for given charges."""
    a, chi = qeq_matrix(positions, atomic_numbers)
    q = charges.to(torch.float64)
    return chi @ q + 0.5 * q @ a @ q


def qeq_charges_of_atoms(atoms: Atoms, total_charge: float = 0.0) -> np.ndarray:
    """QEq charges of an ASE ``Atoms`` (non-periodic)."""
    if np.asarray(atoms.pbc).any():
        raise ValueError("the QEq reference handles non-periodic structures only")
    pos = torch.tensor(atoms.get_positions(), dtype=torch.float64)
    z = torch.tensor(atoms.numbers, dtype=torch.long)
    return qeq_charges(pos, z, total_charge).numpy()
