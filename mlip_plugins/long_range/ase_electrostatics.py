"""Electrostatic energy and forces of one ASE ``Atoms`` (a convenience for users).

    energy, forces = electrostatics(atoms)                       # charges from get_initial_charges()
    energy, forces = electrostatics(atoms, charges, method="p3m", accuracy=1e-5)

Periodic structures use the chosen method with parameters tuned on the structure for the
accuracy (:func:`mlip_plugins.long_range.tuning.tune_parameters`); non-periodic ones the
direct pair sum. Units: eV and eV/Å for charges in e and positions in Å.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from ase import Atoms
from torch_geometric.data import Batch

from mlip_plugins.data.structures import atoms_to_graph
from mlip_plugins.dtypes import default_dtype
from mlip_plugins.graph import build_atomic_graph
from mlip_plugins.long_range.direct import DirectSolver
from mlip_plugins.long_range.ewald import EwaldSolver
from mlip_plugins.long_range.p3m import P3MSolver
from mlip_plugins.long_range.pme import PMESolver
from mlip_plugins.long_range.tuning import tune_parameters
from mlip_plugins.units import COULOMB_CONSTANT

SOLVERS = {"ewald": EwaldSolver, "pme": PMESolver, "p3m": P3MSolver, "direct": DirectSolver}


class Electrostatics(NamedTuple):
    energy: float        # eV
    forces: np.ndarray   # [N, 3] eV/Å


def electrostatics(
    atoms: Atoms,
    charges: np.ndarray | None = None,
    method: str = "ewald",
    accuracy: float = 1e-6,
    cutoff: float | None = None,
    prefactor: float = COULOMB_CONSTANT,
) -> Electrostatics:
    """Coulomb energy (eV) and forces (eV/Å) of ``atoms`` with ``charges`` (e; default: initial charges).

    ``method``: ewald | pme | p3m (periodic structures; 2D slabs need a cell vector across the
    vacuum) or direct (non-periodic). ``accuracy``: torch-pme's force accuracy (e²/Å², see
    :mod:`mlip_plugins.long_range.tuning`). Computed in float64.
    """
    if method not in SOLVERS:
        raise ValueError(f"electrostatics: method must be one of {sorted(SOLVERS)}, got {method!r}")
    q = np.asarray(atoms.get_initial_charges() if charges is None else charges, dtype=np.float64).reshape(-1)
    if q.shape != (len(atoms),):
        raise ValueError(f"electrostatics: {q.size} charges for {len(atoms)} atoms")
    periodic = bool(np.any(atoms.pbc))
    if not periodic or method == "direct":
        if periodic:
            raise ValueError("electrostatics: method 'direct' is for non-periodic structures (atoms.pbc all False)")
        solver, cutoff = DirectSolver(prefactor=prefactor), 0.0
    else:
        probe = atoms.copy()
        probe.pbc = True
        params = tune_parameters(method, probe, q, cutoff=cutoff, accuracy=accuracy)
        params.pop("name")
        cutoff = params["cutoff"]
        solver = SOLVERS[method](prefactor=prefactor, accuracy=min(accuracy, 0.5), **params)
    with default_dtype(torch.float64):
        solver = solver.double()
        data = Batch.from_data_list([atoms_to_graph(atoms, max(cutoff, 1e-3))])
        data.pos = data.pos.double()
        data.cell = data.cell.double()
        pos = data.pos.detach().clone().requires_grad_(True)
        graph = build_atomic_graph(data, torch.zeros(len(atoms), dtype=torch.long), pos=pos)
        energy = solver(graph, torch.tensor(q))["energy"].sum()
        (grad,) = torch.autograd.grad(energy, pos)
    return Electrostatics(float(energy.detach()), -grad.detach().numpy())

