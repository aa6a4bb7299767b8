"""Properties a candidate is judged on: errors on held-out structures and, optionally, the
equation of state of each element against a reference ASE calculator.

Errors use :mod:`mlip_plugins.evaluation` (energy per atom, force components, stress). The
equation of state (EOS) compares, for every element of the model with a reference, the fcc
E(V) curve over ±``strain`` volumetric strain: the RMSE of the energy per atom after
aligning the minima' energies (shape only, since E0 is arbitrary) and the relative error of
the bulk modulus from ASE's Birch-Murnaghan fit.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from mlip_plugins.models.builder import ConfigError


def validation_errors(potential: nn.Module, graphs: Sequence, batch_size: int = 16) -> dict[str, float]:
    """RMSE and MAE per labelled property (eV/atom, eV/Å, eV/Å³)."""
    from mlip_plugins.evaluation import metrics_from_predictions, predict

    with torch.enable_grad():
        return metrics_from_predictions(predict(potential, list(graphs), batch_size=batch_size))


def reference_calculator(name: str):
    """An ASE calculator by name (``emt`` is the reference of the embedded dataset)."""
    if name.lower() == "emt":
        from ase.calculators.emt import EMT

        return EMT()
    raise ConfigError(f"unknown EOS reference calculator {name!r} (known: emt)")


def _fcc(symbol: str, lattice: float):
    from ase.build import bulk

    return bulk(symbol, "fcc", a=lattice)


def eos_errors(potential: nn.Module, reference: str = "emt", strain: float = 0.06, points: int = 7) -> dict[str, float]:
    """EOS energy-shape RMSE (eV/atom) and bulk-modulus relative error, averaged over elements."""
    from ase.calculators.emt import parameters as emt_parameters
    from ase.data import chemical_symbols
    from ase.eos import EquationOfState
    from torch_geometric.data import Batch

    from mlip_plugins.data.default_dataset import LATTICE_CONSTANTS
    from mlip_plugins.data.structures import atoms_to_graph

    calculator = reference_calculator(reference)
    rmses, bulk_errors = [], []
    dtype = potential.e0.dtype
    for z in potential.atomic_numbers:
        symbol = chemical_symbols[z]
        if reference == "emt" and symbol not in emt_parameters:
            continue
        a0 = LATTICE_CONSTANTS.get(symbol, 4.0)
        scales = np.linspace(1 - strain, 1 + strain, points) ** (1 / 3)
        volumes, e_ref, graphs = [], [], []
        for s in scales:
            atoms = _fcc(symbol, a0 * s)
            atoms.calc = calculator
            e_ref.append(atoms.get_potential_energy() / len(atoms))
            volumes.append(atoms.get_volume() / len(atoms))
            graph = atoms_to_graph(atoms, potential.cutoff)
            graph.pos = graph.pos.to(dtype)
            graph.cell = graph.cell.to(dtype)
            graphs.append(graph)
        batch = Batch.from_data_list(graphs)
        with torch.no_grad():
            e_model = (potential(batch, compute_forces=False)["energy"]).double().numpy()  # one atom per cell
        e_ref = np.array(e_ref)
        rmses.append(float(np.sqrt(np.mean(((e_model - e_model.min()) - (e_ref - e_ref.min())) ** 2))))
        try:
            with warnings.catch_warnings():  # a model without a minimum in range makes the fit complain
                warnings.simplefilter("ignore")
                b_ref = EquationOfState(volumes, e_ref, eos="birchmurnaghan").fit(warn=False)[2]
                b_model = EquationOfState(volumes, e_model, eos="birchmurnaghan").fit(warn=False)[2]
            if not np.isfinite(b_model):
                raise ValueError("no bulk modulus")
            bulk_errors.append(abs(b_model - b_ref) / abs(b_ref))
        except (RuntimeError, ValueError, TypeError):  # no minimum in range: count as 100 % error
            bulk_errors.append(1.0)
    if not rmses:
        return {}
    return {"eos_rmse": float(np.mean(rmses)), "bulk_modulus_rel_error": float(np.mean(bulk_errors))}
