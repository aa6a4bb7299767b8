"""A synthetic ionic data set where long-range electrostatics matter: rattled, strained and
polarised rock-salt crystals labelled with Born-Mayer/Buckingham short-range + Coulomb energies.

    E = sum_{i<j} s(r_ij) [A exp(-r_ij/rho) - C/r_ij^6]  +  E_Coulomb({q_i}, Ewald)

The ions carry fixed charges (+q, -q; default q = 0.8 e). The Coulomb term is computed with
torch-pme's ``EwaldCalculator`` directly (converged, independent of the plugin code), the
Buckingham term is switched off smoothly (s) before ``sr_cutoff`` so that a local model with a
larger cutoff can represent it exactly. Each structure is a cubic rock-salt supercell with
randomly placed Schottky vacancy pairs (one cation and one anion removed: a neutral cell with
two opposite effective charges at a random separation), a random lattice strain, an optional
long-wavelength polar displacement (cations and anions moving against each other along a
lattice wave) and random rattling. Labels: energy, forces, stress (ASE convention), the
reference charges in ``atoms.arrays["charges"]`` and ``atoms.info["total_charge"] = 0``.

A short-range model sees only the atoms within its cutoff; the field of a vacancy beyond it
(not determined by the local environment, as it depends on where the partner vacancy sits)
gives it an error floor that a model with charges and a long-range solver does not have.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torchpme
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from mlip_plugins.data.neighbors import neighbor_list
from mlip_plugins.units import COULOMB_CONSTANT

MADELUNG_ROCKSALT = 1.7475645946


@dataclass
class IonicModel:
    """Parameters of the reference model (units eV, Å, e)."""

    cation: str = "Na"
    anion: str = "Cl"
    charge: float = 0.8
    lattice: float = 5.64
    rho: float = 0.3165
    anion_repulsion: tuple[float, float, float] = (1228.9, 0.3214, 50.0)  # A, rho, C for anion-anion
    sr_cutoff: float = 3.6
    sr_switch: float = 0.5
    coulomb_cutoff: float = 9.0
    extra: dict = field(default_factory=dict)

    def cation_anion_repulsion(self) -> tuple[float, float, float]:
        """(A, rho, 0) such that the perfect crystal is in equilibrium at ``lattice`` (nearest-neighbour balance)."""
        r0 = self.lattice / 2
        a = COULOMB_CONSTANT * self.charge**2 * MADELUNG_ROCKSALT * self.rho * math.exp(r0 / self.rho) / (6 * r0**2)
        return a, self.rho, 0.0


def _switch(r: torch.Tensor, cutoff: float, width: float) -> torch.Tensor:
    x = torch.clamp((r - (cutoff - width)) / width, 0.0, 1.0)
    return 1.0 - x**3 * (10 - 15 * x + 6 * x**2)  # smoothstep: C2, 1 inside, 0 beyond the cutoff


def reference_labels(atoms: Atoms, model: IonicModel) -> dict:
    """Energy (eV), forces (eV/Å) and stress (eV/Å³, ASE sign) of ``atoms`` under ``model``."""
    dtype = torch.float64
    pos0 = torch.tensor(atoms.get_positions(), dtype=dtype)
    cell0 = torch.tensor(atoms.cell.array, dtype=dtype)
    strain = torch.zeros(3, 3, dtype=dtype, requires_grad=True)
    pos0.requires_grad_(True)
    deformation = torch.eye(3, dtype=dtype) + strain
    pos = pos0 @ deformation
    cell = cell0 @ deformation
    symbols = np.array(atoms.get_chemical_symbols())
    charges = np.where(symbols == model.cation, model.charge, -model.charge)
    q = torch.tensor(charges, dtype=dtype).view(-1, 1)

    # Buckingham, full neighbour list -> half the sum
    edge_index, shifts = neighbor_list(atoms.get_positions(), atoms.cell.array, atoms.pbc, model.sr_cutoff)
    j, i = torch.from_numpy(edge_index)
    r = (pos[j] - pos[i] + torch.from_numpy(shifts).to(dtype) @ cell).norm(dim=1)
    is_anion = torch.tensor(symbols == model.anion)
    pair_a = torch.zeros_like(r)
    pair_rho = torch.ones_like(r)
    pair_c = torch.zeros_like(r)
    mixed = is_anion[i] != is_anion[j]
    both_anion = is_anion[i] & is_anion[j]
    a_ca, rho_ca, _ = model.cation_anion_repulsion()
    pair_a = torch.where(mixed, torch.full_like(r, a_ca), pair_a)
    pair_rho = torch.where(mixed, torch.full_like(r, rho_ca), pair_rho)
    a_aa, rho_aa, c_aa = model.anion_repulsion
    pair_a = torch.where(both_anion, torch.full_like(r, a_aa), pair_a)
    pair_rho = torch.where(both_anion, torch.full_like(r, rho_aa), pair_rho)
    pair_c = torch.where(both_anion, torch.full_like(r, c_aa), pair_c)
    e_sr = 0.5 * ((pair_a * torch.exp(-r / pair_rho) - pair_c / r**6) * _switch(r, model.sr_cutoff, model.sr_switch)).sum()

    # Coulomb with torch-pme's Ewald (half neighbour list), converged to ~1e-9 relative
    rc = model.coulomb_cutoff
    smearing = rc / 6.0
    from vesin import NeighborList

    nl = NeighborList(cutoff=rc, full_list=False)
    ii, jj, ss = nl.compute(points=atoms.get_positions(), box=atoms.cell.array, periodic=True, quantities="ijS")
    pairs = torch.stack([torch.from_numpy(ii.astype(np.int64)), torch.from_numpy(jj.astype(np.int64))], 1)
    dist = (pos[pairs[:, 1]] - pos[pairs[:, 0]] + torch.from_numpy(ss.astype(np.int64)).to(dtype) @ cell).norm(dim=1)
    calculator = torchpme.EwaldCalculator(
        torchpme.CoulombPotential(smearing=smearing, prefactor=COULOMB_CONSTANT), lr_wavelength=smearing / 2.0
    ).to(dtype)
    potentials = calculator(q, cell, pos, pairs, dist)
    e_coul = (q * potentials).sum()

    energy = e_sr + e_coul
    grad_pos, grad_strain = torch.autograd.grad(energy, [pos0, strain])
    volume = abs(float(torch.linalg.det(cell0)))
    stress = (grad_strain / volume).detach().numpy()
    return {
        "energy": float(energy.detach()),
        "forces": -grad_pos.numpy(),
        "stress": 0.5 * (stress + stress.T),
        "charges": charges,
        "coulomb_energy": float(e_coul.detach()),
    }


def make_structure(
    rng: np.random.Generator,
    model: IonicModel,
    repeat=(2, 2, 2),
    strain: float = 0.03,
    polar: float = 0.05,
    rattle: float = 0.06,
    vacancy_pairs: int = 1,
) -> Atoms:
    """One rock-salt supercell: Schottky vacancy pairs, random strain, a polar lattice wave and rattling."""
    a = model.lattice
    base = Atoms(
        [model.cation] * 4 + [model.anion] * 4,
        scaled_positions=[[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0], [0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5], [0.5, 0.5, 0.5]],
        cell=a * np.eye(3),
        pbc=True,
    )
    atoms = base.repeat(repeat)
    eps = rng.uniform(-strain, strain, size=(3, 3))
    eps = 0.5 * (eps + eps.T)
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + eps), scale_atoms=True)
    frac = atoms.get_scaled_positions(wrap=False)
    sign = np.where(np.array(atoms.get_chemical_symbols()) == model.cation, 1.0, -1.0)
    # polar wave: wave vector along a random lattice direction with one wavelength per supercell
    wave = np.zeros(3)
    wave[rng.integers(3)] = 1.0
    amplitude = rng.normal(size=3)
    amplitude *= polar * rng.uniform(0.3, 1.0) / np.linalg.norm(amplitude)
    phase = rng.uniform(0, 2 * np.pi)
    displacement = np.cos(2 * np.pi * frac @ wave + phase)[:, None] * amplitude[None, :]
    atoms.positions += sign[:, None] * displacement + rng.normal(scale=rattle, size=atoms.positions.shape)
    if vacancy_pairs:
        cations = np.flatnonzero(sign > 0)
        anions = np.flatnonzero(sign < 0)
        removed = list(rng.choice(cations, vacancy_pairs, replace=False)) + list(rng.choice(anions, vacancy_pairs, replace=False))
        del atoms[sorted(int(k) for k in removed)]
    return atoms


def make_ionic_dataset(
    n_structures: int = 48,
    seed: int = 0,
    model: IonicModel | None = None,
    repeats: tuple = ((2, 2, 2),),
    strain: float = 0.03,
    polar: float = 0.05,
    rattle: float = 0.06,
    vacancy_pairs: tuple[int, ...] = (1, 2),
) -> list[Atoms]:
    """Labelled structures (energy, forces, stress in a SinglePointCalculator; charges in arrays).

    Structure k uses ``repeats[k % len(repeats)]`` and ``vacancy_pairs[k % len(vacancy_pairs)]``.
    """
    model = model or IonicModel()
    rng = np.random.default_rng(seed)
    structures = []
    for k in range(n_structures):
        atoms = make_structure(rng, model, repeats[k % len(repeats)], strain, polar, rattle, vacancy_pairs[k % len(vacancy_pairs)])
        labels = reference_labels(atoms, model)
        atoms.arrays["charges"] = labels["charges"]
        atoms.info["total_charge"] = 0.0
        atoms.info["coulomb_energy"] = labels["coulomb_energy"]
        atoms.calc = SinglePointCalculator(atoms, energy=labels["energy"], forces=labels["forces"], stress=labels["stress"])
        structures.append(atoms)
    return structures
