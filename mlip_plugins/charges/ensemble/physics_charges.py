"""Physics-only (untrained) ensemble charges of an ASE ``Atoms``.

``ensemble_charges(atoms, total_charge=0, temperature=0.1)`` runs the ``ensemble`` charge model
with no learned corrections: state energies from measured ionisation energies and electron
affinities, lowered for charged states by the ion-pair stabilisation prior within ``cutoff``,
weights from the grand-canonical ensemble with one chemical potential fixing the total charge.
``ensemble_state_weights`` returns the full per-atom picture (weights, costs, a table and a plot).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from ase import Atoms
from torch_geometric.data import Batch

from mlip_plugins.data.structures import atoms_to_graph
from mlip_plugins.graph import build_atomic_graph
from mlip_plugins.charges.ensemble.atomic_data import DEFAULT_STATE_CHARGES
from mlip_plugins.charges.ensemble.charge_model import EnsembleChargeModel
from mlip_plugins.charges.ensemble.report import StateWeights, state_weights_of


def physics_model(
    temperature: float = 0.1,
    states: Sequence[int] = DEFAULT_STATE_CHARGES,
    cutoff: float = 8.0,
    switch_width: float = 3.0,
    prior_scale: float = 1.0,
    coupling_temperature: float = 0.0,
) -> EnsembleChargeModel:
    """The untrained ensemble charge model (one fixed temperature, no learned corrections)."""
    return EnsembleChargeModel(
        in_dim=0,
        num_species=1,
        states=states,
        temperature=temperature,
        temperature_range=(0.5 * temperature, 2.0 * temperature),
        learn_temperature=False,
        prior_scale=prior_scale,
        prior_cutoff=cutoff,
        prior_switch_width=switch_width,
        coupling_temperature=coupling_temperature,
    )


def _graph_of(structures: Sequence[Atoms], total_charges: Sequence[float], cutoff: float):
    data = [atoms_to_graph(a, cutoff, labels={"total_charge": float(q)}) for a, q in zip(structures, total_charges)]
    batch = Batch.from_data_list(data)
    batch.pos = batch.pos.to(torch.float64)
    batch.cell = batch.cell.to(torch.float64)
    species = torch.zeros(batch.num_nodes, dtype=torch.long)
    return build_atomic_graph(batch, species)


def ensemble_state_weights(
    atoms: Atoms,
    total_charge: float = 0.0,
    temperature: float = 0.1,
    states: Sequence[int] = DEFAULT_STATE_CHARGES,
    cutoff: float = 8.0,
    switch_width: float = 3.0,
    prior_scale: float = 1.0,
    coupling_temperature: float = 0.0,
) -> StateWeights:
    """Per-atom state weights, charges and their explanation for one structure (see ``report``)."""
    model = physics_model(temperature, states, cutoff, switch_width, prior_scale, coupling_temperature)
    graph = _graph_of([atoms], [total_charge], cutoff)
    with torch.no_grad():
        output = model.ensemble(torch.zeros(len(atoms), 0, dtype=torch.float64), graph)
    return state_weights_of(output, graph, 0)


def ensemble_charges(
    atoms: Atoms,
    total_charge: float = 0.0,
    temperature: float = 0.1,
    states: Sequence[int] = DEFAULT_STATE_CHARGES,
    cutoff: float = 8.0,
    switch_width: float = 3.0,
    prior_scale: float = 1.0,
    coupling_temperature: float = 0.0,
) -> np.ndarray:
    """Physics-only ensemble charges (e) of ``atoms``; they sum to ``total_charge`` exactly.

    Args:
        atoms: any ASE structure (periodic or not), elements H..Rn.
        total_charge: the structure's total charge (e).
        temperature: electronic temperature (eV); smaller = sharper ionic/covalent switching.
        states: state charges per atom, a subset of (2, 1, 0, -1) containing 0.
        cutoff: range (Å) of the ion-pair stabilisation prior; beyond it atoms stay neutral.
        switch_width: width (Å) of the smooth switch-off ending at ``cutoff``.
        prior_scale: strength of the prior (0: free atoms, i.e. no charge transfer).
        coupling_temperature: alpha of the environment temperature T_i = T + alpha C_i (see
            ``EnsembleChargeModel``). 0 keeps bonded atoms near integer charges; 0.1-0.25 mixes
            states in bonded environments (LiH at 1.6 Å: 0.77 e at 0.1), at the price of charge
            flowing between separated fragments that are soft, through the common chemical potential.
    """
    return ensemble_state_weights(
        atoms, total_charge, temperature, states, cutoff, switch_width, prior_scale, coupling_temperature
    ).charges


def ensemble_charges_many(
    structures: Sequence[Atoms],
    total_charges: Sequence[float] | None = None,
    temperature: float = 0.1,
    states: Sequence[int] = DEFAULT_STATE_CHARGES,
    cutoff: float = 8.0,
    switch_width: float = 3.0,
    prior_scale: float = 1.0,
    coupling_temperature: float = 0.0,
) -> list[np.ndarray]:
    """:func:`ensemble_charges` of many structures in one batched solve (one mu per structure)."""
    totals = [0.0] * len(structures) if total_charges is None else list(total_charges)
    model = physics_model(temperature, states, cutoff, switch_width, prior_scale, coupling_temperature)
    graph = _graph_of(structures, totals, cutoff)
    with torch.no_grad():
        charges = model.ensemble(torch.zeros(graph.num_atoms, 0, dtype=torch.float64), graph).charges.numpy()
    batch = graph.batch.numpy()
    return [charges[batch == k] for k in range(len(structures))]
