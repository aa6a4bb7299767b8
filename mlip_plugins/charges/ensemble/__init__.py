"""Latent space from physics: atomic-state ensembles whose weights are interpretable latents.

Each atom is a mixture of free-atom charge states (cation, neutral, anion, optionally the
dication) with energies from measured ionisation energies and electron affinities plus learned
environment corrections; one chemical potential per structure fixes the total charge
(chemical-potential equalisation). See ``ensemble.py`` for the formalism, ``charge_model.py``
for the ``ensemble`` charge-model plugin, ``qeq.py`` for the quadratic reference.
"""

from mlip_plugins.charges.ensemble.atomic_data import state_table
from mlip_plugins.charges.ensemble.charge_model import EnsembleChargeModel, EnsembleOutput
from mlip_plugins.charges.ensemble.ensemble import EnsembleResult, InfeasibleChargeError, solve_ensemble
from mlip_plugins.charges.ensemble.physics_charges import ensemble_charges, ensemble_charges_many, ensemble_state_weights, physics_model
from mlip_plugins.charges.ensemble.qeq import qeq_charges, qeq_charges_of_atoms
from mlip_plugins.charges.ensemble.report import StateWeights

__all__ = [
    "EnsembleChargeModel",
    "EnsembleOutput",
    "EnsembleResult",
    "InfeasibleChargeError",
    "StateWeights",
    "ensemble_charges",
    "ensemble_charges_many",
    "ensemble_state_weights",
    "physics_model",
    "qeq_charges",
    "qeq_charges_of_atoms",
    "solve_ensemble",
    "state_table",
]
