"""Long-range electrostatics: solvers, charge models, exterior-potential features.

Solvers (entry-point group ``mlip_plugins.long_range``: ``ewald``, ``pme``, ``p3m``, ``direct``)
------------------------------------------------------------------------------------------
``Solver(**cfg)`` with ``cutoff`` (real-space cutoff, Å; at most the cutoff of the graphs'
neighbour list), ``smearing`` (Å), method parameters (``lr_wavelength``; ``mesh_spacing``,
``interpolation_nodes``), ``accuracy`` (target for every parameter not given) and
``prefactor`` (Coulomb constant, default :data:`mlip_plugins.units.COULOMB_CONSTANT` = 14.3996455 eV Å/e², so
charges in e give potentials in V and energies in eV).

``forward(graph: AtomicGraph, charges: Tensor[N]) -> {"potentials": [N], "energy": [B]}``
where potentials are the physical phi_i = k sum_j' q_j / r_ij (all images, self excluded;
neutralising background for charged cells) and energy_b = 1/2 sum_{i in b} q_i phi_i.
``potentials(graph, charges [N] | [N, C], exclusion_radius=None)`` gives phi per charge channel,
optionally with the near field removed (exterior potentials). A batch may mix periodic (3D, or
2D slabs with a vacuum cell vector) and non-periodic structures: the latter are summed
directly. Forces and stress follow from autograd (positions, edge lengths and cells carry the
strain). Parameters for an accuracy on a given structure: :func:`tune_parameters`.

Charge models (entry-point group ``mlip_plugins.charge_models``: ``fixed``, ``latent``)
-----------------------------------------------------------------------------------
``ChargeModel(in_dim: int, num_species: int, **cfg)``;
``forward(features: Tensor[N, D], graph: AtomicGraph) -> Tensor[N]`` charges in e whose sum
over each structure b equals ``graph.total_charge[b]`` exactly (to rounding); use
:func:`conserve_total_charge` to enforce it. A charge model may instead return a dict with
``"charges"`` [N] and extra entries (e.g. ``"charge_std"`` [N], ``"aux_loss"`` scalar) that the
``electrostatic`` energy model passes up to the Potential's output.

Energy model ``electrostatic`` (group ``mlip_plugins.energy_models``)
--------------------------------------------------------------------
E_i = E_i^short(features [+ exterior potentials]) + 1/2 q_i phi_i; see :mod:`.model`.

For users: :func:`electrostatics` (energy and forces of an ASE ``Atoms``).
"""

from mlip_plugins.long_range.solver import LongRangeError, LongRangeSolver
from mlip_plugins.long_range.ewald import EwaldSolver
from mlip_plugins.long_range.pme import PMESolver
from mlip_plugins.long_range.p3m import P3MSolver
from mlip_plugins.long_range.direct import DirectSolver
from mlip_plugins.charges.local import FixedCharges, LatentCharges, SpeciesCharges, conserve_total_charge
from mlip_plugins.long_range.tuning import tune_parameters
from mlip_plugins.long_range.ase_electrostatics import electrostatics
from mlip_plugins.units import COULOMB_CONSTANT  # re-exported: public API (defined in mlip_plugins.units)

__all__ = [
    "COULOMB_CONSTANT",
    "LongRangeError",
    "LongRangeSolver",
    "EwaldSolver",
    "PMESolver",
    "P3MSolver",
    "DirectSolver",
    "FixedCharges",
    "LatentCharges",
    "SpeciesCharges",
    "conserve_total_charge",
    "tune_parameters",
    "electrostatics",
]
