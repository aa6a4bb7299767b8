"""The embedded default dataset: seven EMT metals and their alloys, generated in-process.

ASE's EMT calculator covers Al, Ni, Cu, Pd, Ag, Pt and Au. The set mixes strained and
rattled fcc bulk (pure and random alloys), vacancies, (111)/(100) surfaces and short
Langevin-MD snapshots; it is deterministic for a seed and cached on disk as extxyz.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from ase import Atoms, units
from ase.build import bulk, fcc100, fcc111
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

EMT_ELEMENTS = ("Al", "Ni", "Cu", "Pd", "Ag", "Pt", "Au")
#: experimental fcc lattice constants (Å), a starting point before strain
LATTICE_CONSTANTS = {"Al": 4.05, "Ni": 3.52, "Cu": 3.61, "Pd": 3.89, "Ag": 4.09, "Pt": 3.92, "Au": 4.08}
DATASET_VERSION = 1


def cache_dir() -> Path:
    """Where generated data and neighbour-list caches go (``MLIP_PLUGINS_CACHE`` overrides)."""
    root = os.environ.get("MLIP_PLUGINS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "mlip_plugins")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _label(atoms: Atoms, tag: str) -> Atoms:
    atoms.calc = EMT()
    energy = atoms.get_potential_energy()
    forces = atoms.get_forces()
    stress = atoms.get_stress(voigt=False) if atoms.pbc.all() else None
    results = {"energy": energy, "forces": forces}
    if stress is not None:
        results["stress"] = stress
    atoms.calc = SinglePointCalculator(atoms, **results)
    atoms.info["config_type"] = tag
    return atoms


def _random_alloy(rng: np.random.Generator, size: tuple[int, int, int]) -> Atoms:
    elements = list(rng.choice(EMT_ELEMENTS, size=rng.integers(1, 4), replace=False))
    a = float(np.mean([LATTICE_CONSTANTS[e] for e in elements]))
    atoms = bulk("Cu", "fcc", a=a, cubic=True).repeat(size)
    atoms.set_chemical_symbols(list(rng.choice(elements, size=len(atoms))))
    return atoms


def _strained_rattled(rng: np.random.Generator, atoms: Atoms, strain: float, rattle: float) -> Atoms:
    eps = rng.uniform(-strain, strain, size=(3, 3))
    eps = 0.5 * (eps + eps.T)
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + eps), scale_atoms=True)
    atoms.positions += rng.normal(scale=rattle, size=atoms.positions.shape)
    return atoms


def generate_default_dataset(n_structures: int = 240, seed: int = 0) -> list[Atoms]:
    """Generate the labelled structures (deterministic for ``seed``)."""
    rng = np.random.default_rng(seed)
    structures: list[Atoms] = []
    kinds = ["pure_bulk", "alloy_bulk", "vacancy", "surface", "md"]
    while len(structures) < n_structures:
        kind = kinds[len(structures) % len(kinds)]
        if kind == "pure_bulk":
            element = str(rng.choice(EMT_ELEMENTS))
            atoms = bulk(element, "fcc", a=LATTICE_CONSTANTS[element], cubic=True).repeat((2, 2, 2))
            if rng.random() < 0.5:  # also primitive (triclinic) cells
                atoms = bulk(element, "fcc", a=LATTICE_CONSTANTS[element]).repeat((2, 2, 2))
            atoms = _strained_rattled(rng, atoms, 0.04, 0.08)
        elif kind == "alloy_bulk":
            atoms = _strained_rattled(rng, _random_alloy(rng, (2, 2, 2)), 0.03, 0.1)
        elif kind == "vacancy":
            atoms = _random_alloy(rng, (2, 2, 2))
            del atoms[int(rng.integers(len(atoms)))]
            atoms = _strained_rattled(rng, atoms, 0.02, 0.08)
        elif kind == "surface":
            element = str(rng.choice(EMT_ELEMENTS))
            maker = fcc111 if rng.random() < 0.5 else fcc100
            atoms = maker(element, size=(2, 2, 4), a=LATTICE_CONSTANTS[element], vacuum=6.0, periodic=True)
            symbols = atoms.get_chemical_symbols()
            other = str(rng.choice(EMT_ELEMENTS))
            for k in rng.choice(len(atoms), size=len(atoms) // 4, replace=False):
                symbols[k] = other
            atoms.set_chemical_symbols(symbols)
            atoms.positions += rng.normal(scale=0.06, size=atoms.positions.shape)
        else:
            atoms = _random_alloy(rng, (2, 2, 2))
            atoms.calc = EMT()
            MaxwellBoltzmannDistribution(atoms, temperature_K=float(rng.uniform(300, 1200)), rng=rng)
            dyn = Langevin(atoms, 2 * units.fs, temperature_K=800, friction=0.02, rng=rng, fixcm=False)
            dyn.run(int(rng.integers(10, 40)))
            atoms = atoms.copy()
        structures.append(_label(atoms, kind))
    return structures


def default_dataset_path(n_structures: int = 240, seed: int = 0) -> Path:
    """Path of the cached extxyz of the default dataset, generating it on first use.

    Written to a temporary file and renamed, so an interrupted generation never leaves a
    truncated cache behind.
    """
    path = cache_dir() / f"emt_metals_v{DATASET_VERSION}_n{n_structures}_seed{seed}.extxyz"
    if path.exists():
        return path
    structures = generate_default_dataset(n_structures, seed)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    write(tmp, structures, format="extxyz")
    os.replace(tmp, path)
    return path


def load_default_dataset(n_structures: int = 240, seed: int = 0) -> list[Atoms]:
    """The default dataset as a list of labelled ``Atoms``."""
    return read(default_dataset_path(n_structures, seed), index=":")
