"""The ``ensemble_electrostatic`` energy model: the ensemble weights as a latent space for the readout.

    E_i = readout_{s_i}([x_i, d_i]) + A_i^ens + 1/2 q_i phi_i

* x = descriptor(graph): local features;
* (q, d, A^ens) = the ``ensemble`` charge model (:mod:`.charge_model`): charges with exact
  totals, state weights d_i (K numbers per atom: how cationic / neutral / anionic the atom is)
  and the ensemble free energy A_i^ens = sum_k d_ik E_ik + T_i sum_k d_ik ln d_ik (the energy
  of ionising the atoms, measured IP/EA plus learned corrections);
* phi = solver.potentials(graph, q): the Coulomb potential (``mlip_plugins.long_range`` solver,
  real space on the model's neighbour list, k space by torch-pme; ``direct`` for molecules).

Unlike the ``electrostatic`` model with ``charges: {name: ensemble}`` (same charges, the readout
sees only x), the readout here sees the interpretable latent d_i, and the energy contains the
ionisation cost, so charge transfer is paid for with measured ionisation energies and electron
affinities. Returns ``{"energy", "charges", "state_weights", "ensemble_energy",
"electrostatic_energy"}`` per atom and the charges' ``"dipole"`` / ``"dipole_defined"`` per structure
(:mod:`mlip_plugins.charges.dipole`); ``"energy"`` is the learned readout part and the physical
part (Coulomb + ionisation, in eV) is returned under ``UNSCALED_ENERGY_KEY`` so the Potential's
``energy_scale`` does not touch it.

Config (``model.energy``)::

    model:
      name: ensemble_electrostatic
      descriptor: {name: radial, n_max: 8, basis_size: 8}
      readout: {name: mlp, hidden: [32, 32]}
      charges: {temperature: 0.1, hidden: [16]}   # EnsembleChargeModel options
      solver: {name: ewald, accuracy: 1.0e-4}
      latent_to_readout: true
      ensemble_energy: true
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from mlip_plugins.charges.dipole import dipole_extras
from mlip_plugins.graph import AtomicGraph
from mlip_plugins.charges.ensemble.charge_model import EnsembleChargeModel
from mlip_plugins.models.composition import UNSCALED_ENERGY_KEY, split_output


class EnsembleElectrostaticModel(nn.Module):
    """Local model with the ensemble weights as extra readout features, the ensemble free energy
    and the Coulomb energy of the ensemble charges (see the module docstring)."""

    conformance_elements = ("Na", "Cl")
    conformance_config = {
        "descriptor": {"name": "radial", "n_max": 4, "basis_size": 5},
        "readout": {"name": "mlp", "hidden": [8]},
        "charges": {"temperature": 0.12, "hidden": [8]},
        "solver": {"name": "ewald"},
    }

    def __init__(
        self,
        num_species: int,
        cutoff: float,
        descriptor: Mapping,
        charges: Mapping | None = None,
        solver: Mapping | None = None,
        readout: Mapping | None = None,
        latent_to_readout: bool = True,
        ensemble_energy: bool = True,
        name: str = "ensemble_electrostatic",
    ):
        super().__init__()
        from mlip_plugins.models.builder import build

        self.name = name
        self.descriptor = build("descriptors", descriptor, f"{name}.descriptor", num_species=num_species, cutoff=cutoff)
        dim = int(self.descriptor.dim)
        charge_cfg = dict(charges or {})
        charge_cfg.pop("name", None)
        charge_cfg.setdefault("cutoff", cutoff)
        self.charge_model = EnsembleChargeModel(in_dim=dim, num_species=num_species, **charge_cfg)
        self.solver = build("long_range", dict(solver or {"name": "ewald"}), f"{name}.solver", cutoff=cutoff)
        self.latent_to_readout = bool(latent_to_readout)
        self.ensemble_energy = bool(ensemble_energy)
        readout_in = dim + (len(self.charge_model.state_charges) if self.latent_to_readout else 0)
        self.readout = build(
            "readouts", dict(readout or {"name": "mlp"}), f"{name}.readout", in_dim=readout_in, num_species=num_species
        )

    @property
    def cutoff(self) -> float:
        parts = [float(self.descriptor.cutoff), self.charge_model.prior_cutoff]
        if self.solver.cutoff is not None:
            parts.append(float(self.solver.cutoff))
        return max(parts)

    def parameter_counts(self) -> dict[str, int]:
        def count(module: nn.Module) -> int:
            return sum(p.numel() for p in module.parameters() if p.requires_grad)

        return {f"{self.name}.short": count(self.descriptor) + count(self.readout), f"{self.name}.charges": count(self.charge_model)}

    def forward(self, graph: AtomicGraph) -> dict[str, torch.Tensor]:
        features = self.descriptor(graph)
        ensemble = self.charge_model.ensemble(features, graph)
        dtype = features.dtype
        charges = ensemble.charges.to(dtype)
        weights = ensemble.weights.to(dtype)
        readout_in = torch.cat([features, weights], dim=1) if self.latent_to_readout else features
        short, extras = split_output(self.readout(readout_in, graph))
        electrostatic = 0.5 * charges * self.solver.potentials(graph, charges)
        ionisation = ensemble.energy().to(dtype)
        physical = electrostatic + ionisation if self.ensemble_energy else electrostatic
        return {
            **extras,
            "energy": short,
            UNSCALED_ENERGY_KEY: physical,
            "charges": charges,
            "state_weights": weights,
            "ensemble_energy": ionisation,
            "electrostatic_energy": electrostatic,
            **dipole_extras(graph, charges),
        }
