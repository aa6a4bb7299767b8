"""Shared fixtures: an isolated cache, float64 scope, small structures and a tiny dataset."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from mlip_plugins.dtypes import default_dtype

os.environ.setdefault("WANDB_MODE", "offline")
# One intra-op thread: on small CPU machines multi-threaded scatter kernels stall on
# contention (tiny tensors), and tests should not depend on the core count.
torch.set_num_threads(1)
os.environ["OMP_NUM_THREADS"] = "1"  # and the commands (mlip_plugins.threads) choose one too, in-process and in subprocesses


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Generated datasets and graph caches go to a per-session folder, never ~/.cache."""
    path = tmp_path_factory.mktemp("mlip_cache")
    previous = os.environ.get("MLIP_PLUGINS_CACHE")
    os.environ["MLIP_PLUGINS_CACHE"] = str(path)
    yield path
    if previous is None:
        os.environ.pop("MLIP_PLUGINS_CACHE", None)
    else:
        os.environ["MLIP_PLUGINS_CACHE"] = previous


@pytest.fixture
def float64():
    """Run a test with float64 as the default dtype, restoring the previous default."""
    with default_dtype(torch.float64):
        yield


@pytest.fixture
def alloy():
    """A rattled, strained 32-atom Cu/Au fcc cell (triclinic after the strain)."""
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=3.7, cubic=True).repeat((2, 2, 2))
    rng = np.random.default_rng(3)
    symbols = atoms.get_chemical_symbols()
    for k in rng.choice(len(atoms), 10, replace=False):
        symbols[k] = "Au"
    atoms.set_chemical_symbols(symbols)
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + [[0.02, 0.03, 0.0], [0.0, -0.01, 0.02], [0.01, 0.0, 0.015]]), scale_atoms=True)
    atoms.positions += rng.normal(scale=0.08, size=atoms.positions.shape)
    return atoms


@pytest.fixture(scope="session")
def tiny_xyz(tmp_path_factory):
    """A small labelled extxyz (EMT metals) for end-to-end runs."""
    from ase.io import write

    from mlip_plugins.data.default_dataset import generate_default_dataset

    path = tmp_path_factory.mktemp("data") / "tiny.xyz"
    write(path, generate_default_dataset(n_structures=24, seed=1), format="extxyz")
    return path


@pytest.fixture(scope="session")
def cuau_frames():
    """A factory: ``cuau_frames(n, seed)`` gives n rattled 4-atom Cu/Au fcc cells with EMT energy, forces
    and stress (two elements: none of the demo set's other five metals)."""
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    def make(n: int, seed: int = 0) -> list:
        rng = np.random.default_rng(seed)
        frames = []
        for k in range(n):
            atoms = bulk("Cu", "fcc", a=3.7, cubic=True)
            atoms.symbols[k % 4] = "Au"
            atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
            atoms.calc = EMT()
            results = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces(), "stress": atoms.get_stress()}
            atoms.calc = SinglePointCalculator(atoms, **results)
            frames.append(atoms)
        return frames

    return make
