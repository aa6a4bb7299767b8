"""Charge models (entry-point group ``mlip_plugins.charge_models``), in one package.

* :mod:`.local`: charges from species or local features: ``fixed`` (from the data), ``species``
  (one learned charge per element), ``latent`` (a head on the local features), all with each
  structure's total charge conserved exactly (:func:`conserve_total_charge`).
* :mod:`.ensemble`: atoms as ensembles of atomic states (cation, neutral, anion, ...), weights by
  chemical-potential equalisation; the ``ensemble`` charge model and the
  ``ensemble_electrostatic`` energy model.

The solvers that turn charges into potentials and energies are :mod:`mlip_plugins.long_range`.
"""

from mlip_plugins.charges.local import FixedCharges, LatentCharges, SpeciesCharges, conserve_total_charge

__all__ = ["FixedCharges", "LatentCharges", "SpeciesCharges", "conserve_total_charge"]
