"""The ``electrostatic`` energy model: short-range local energy + Coulomb energy of charges.

    E_i = E_i^short(x_i [, f_i^ext]) + [short_range child]_i + 1/2 q_i phi_i

* x = descriptor(graph): local features (any ``mlip_plugins.descriptors`` plugin);
* q = charge_model(x, graph): charges with exact structure totals (``mlip_plugins.charge_models``);
* phi = solver.potentials(graph, q): the Coulomb potential of all charges and periodic images
  (``mlip_plugins.long_range``: ewald / pme / p3m / direct). The solver's real-space part runs
  on the model's neighbour list, the rest in k space, so E = E_short + E_long is range
  separated and forces and stress follow from autograd through the Potential;
* f^ext (optional ``exterior``): exterior potentials of the charges and of latent feature
  charges, appended to x for the readout (see :mod:`.exterior`);
* an optional ``short_range`` energy spec (any energy tree, built with ``build(ENERGY_TREE, ...)``) is added.

Returns ``{"energy": [N], "charges": [N], "electrostatic_energy": [N], "dipole": [B, 3], "dipole_defined": [B],
**charge-model extras}`` (the dipole of the charges about the centre of mass, molecules only:
:mod:`mlip_plugins.charges.dipole`; ``loss.dipole`` trains it),
where ``"energy"`` is the learned short-range part (scaled by the Potential's ``energy_scale``)
and the Coulomb energy, already in eV, is also returned under ``UNSCALED_ENERGY_KEY`` so the
Potential adds it unscaled: charges are in units of e whatever the force scale of the data.

Config (``model.energy``)::

    model:
      name: electrostatic
      descriptor: {name: radial, n_max: 8, basis_size: 8}
      readout: {name: mlp, hidden: [32, 32]}
      charges: {name: latent, hidden: [16]}
      solver: {name: ewald, accuracy: 1.0e-4}   # cutoff defaults to the model cutoff
      exterior: {channels: 4, exclusion_radius: 4.0}   # or null
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from mlip_plugins.charges.dipole import dipole_extras
from mlip_plugins.graph import AtomicGraph
from mlip_plugins.long_range.exterior import ExteriorPotentialFeatures
from mlip_plugins import keys
from mlip_plugins.models.outputs import NodeOutput


def _split_charges(output) -> tuple[torch.Tensor, dict]:
    if isinstance(output, Mapping):
        extras = {k: v for k, v in output.items() if k != "charges"}
        return output["charges"], extras
    return output, {}


class ElectrostaticModel(nn.Module):
    """Local model + charges + long-range solver (+ exterior features); see the module docstring."""

    conformance_config = {
        "descriptor": {"name": "radial", "n_max": 4, "basis_size": 5},
        "readout": {"name": "linear"},
        "charges": {"name": "latent"},
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
        exterior: Mapping | None = None,
        short_range: Mapping | None = None,
        name: str = "electrostatic",
    ):
        super().__init__()
        from mlip_plugins.models.builder import ENERGY_TREE, ConfigError, build

        self.name = name
        self.descriptor = build("descriptors", descriptor, f"{name}.descriptor", num_species=num_species, cutoff=cutoff)
        dim = int(self.descriptor.dim)
        self.charge_model = build(
            "charge_models", dict(charges or {"name": "latent"}), f"{name}.charges", in_dim=dim, num_species=num_species
        )
        self.solver = build("long_range", dict(solver or {"name": "ewald"}), f"{name}.solver", cutoff=cutoff)
        if hasattr(self.charge_model, "use_solver"):  # charge equilibration needs the Coulomb law of the same solver
            self.charge_model.use_solver(self.solver)
        self.exterior = None
        if exterior:
            exterior = dict(exterior)
            exterior.setdefault("exclusion_radius", cutoff)
            if float(exterior["exclusion_radius"]) > cutoff + 1e-12:
                raise ConfigError(f"{name}.exterior: exclusion_radius {exterior['exclusion_radius']} exceeds the model cutoff {cutoff}")
            self.exterior = ExteriorPotentialFeatures(in_dim=dim, num_species=num_species, **exterior)
        readout_in = dim + (self.exterior.dim if self.exterior is not None else 0)
        self.readout = build(
            "readouts", dict(readout or {"name": "mlp"}), f"{name}.readout", in_dim=readout_in, num_species=num_species
        )
        self.short_range = None
        if short_range is not None:
            self.short_range = build(ENERGY_TREE, short_range, f"{name}.short_range", num_species=num_species, cutoff=cutoff)
        self._model_cutoff = float(cutoff)

    @property
    def cutoff(self) -> float:
        parts = [float(self.descriptor.cutoff)]
        if self.solver.cutoff is not None:
            parts.append(float(self.solver.cutoff))
        if self.exterior is not None:
            parts.append(self.exterior.exclusion_radius)
        if getattr(self.charge_model, "cutoff", None) is not None:
            parts.append(float(self.charge_model.cutoff))
        if self.short_range is not None:
            parts.append(float(self.short_range.cutoff))
        return max(parts)

    def charge_parameters(self) -> list[nn.Parameter]:
        """What the charges depend on (the charge model and the descriptor it reads): held fixed
        after a charges-first stage (``loss.initial.freeze: charges``)."""
        return [*self.charge_model.parameters(), *self.descriptor.parameters()]

    def parameter_counts(self) -> dict[str, int]:
        def count(module: nn.Module | None) -> int:
            return 0 if module is None else sum(p.numel() for p in module.parameters() if p.requires_grad)

        counts = {
            f"{self.name}.short": count(self.descriptor) + count(self.readout),
            f"{self.name}.charges": count(self.charge_model),
            f"{self.name}.exterior": count(self.exterior),
        }
        if self.short_range is not None:
            counts.update(self.short_range.parameter_counts() if hasattr(self.short_range, "parameter_counts") else {"short_range": count(self.short_range)})
        return counts

    def forward(self, graph: AtomicGraph) -> NodeOutput:
        features = self.descriptor(graph)
        charges, extras = _split_charges(self.charge_model(features, graph))
        if self.exterior is not None:
            channels = torch.cat([charges.unsqueeze(-1), self.exterior.feature_charges(features, graph, charges)], dim=1)
            radii = [None] + [self.exterior.exclusion_radius] * self.exterior.dim
            phi_all = self.solver.potentials(graph, channels, exclusion_radius=radii, exclusion_degree=self.exterior.exclusion_degree)
            phi = phi_all[:, 0]
            features = torch.cat([features, phi_all[:, 1:] / self.solver.prefactor], dim=1)
        else:
            phi = self.solver.potentials(graph, charges)
        electrostatic = 0.5 * charges * phi
        out = NodeOutput(torch.zeros_like(electrostatic), dict(extras), {k: f"{self.name}.charges" for k in extras})
        readout = NodeOutput.of(self.readout(features, graph), f"{self.name}.readout")
        out.merge(readout)
        out.energy = readout.energy
        if self.short_range is not None:
            child = NodeOutput.of(self.short_range(graph), f"{self.name}.short_range")
            out.merge(child)
            out.energy = out.energy + child.energy
        out.merge(NodeOutput(out.energy, {
            keys.ATOMIC_ENERGY_UNSCALED: electrostatic, keys.CHARGES: charges, keys.ELECTROSTATIC_ENERGY: electrostatic,
            **dipole_extras(graph, charges),
        }), self.name)
        return out
