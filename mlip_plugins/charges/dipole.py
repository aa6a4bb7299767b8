"""The dipole of a structure from a charge model's per-atom charges: mu_b = sum_{i in b} q_i (r_i - R_b).

Every energy model that predicts charges (``electrostatic``, ``ensemble_electrostatic``) returns
it as :data:`~mlip_plugins.keys.DIPOLE` [B, 3] (e·Å), the output key a TNEP's dipole uses, so
``loss.dipole=<w>`` trains the charges against ``dipole`` labels and the validation / test
metrics report ``dipole_rmse`` / ``dipole_mae`` (per atom, as every dipole residual in
:mod:`mlip_plugins.targets`).

Origin R_b: the **centre of mass** of the structure (ASE's standard atomic masses). For a neutral
molecule the dipole does not depend on the origin; for a charged one (total charge Q) it shifts
by -Q ΔR when the origin moves by ΔR, so an origin must be fixed: the centre of mass is the
frame quantum-chemistry codes report dipoles in (Psi4, which labelled SPICE, moves a molecule
to its centre of mass unless told not to), and it moves with the molecule, so a translated
molecule keeps its dipole whatever its charge. (The SPICE subsets here are all neutral:
total_charge 0 and Born-charge sums below 0.01 e on each of the 673 structures, so these data
cannot tell origins apart.)

Periodic structures (any periodic direction) have **no** dipole from point charges: the
polarisation of a periodic cell is defined only modulo a polarisation quantum (Berry phase), and
sum q r of wrapped positions changes when an atom is wrapped. Their entries are zeros, and
:data:`~mlip_plugins.keys.DIPOLE_DEFINED` [B] is false for them, so the residuals mask them: a
periodic structure's ``dipole`` label is neither trained nor scored, while the molecules of the
same data set are (mixed sets, e.g. clusters beside bulk frames that carry a cell polarisation,
train as they are).
"""

from __future__ import annotations

import torch
from ase.data import atomic_masses

from mlip_plugins import keys
from mlip_plugins.graph import AtomicGraph
from mlip_plugins.nn import sum_per_structure


def charge_dipole(graph: AtomicGraph, charges: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(dipole [B, 3] in e·Å about each structure's centre of mass, defined [B] bool).

    Differentiable in ``charges`` (and the positions); zeros where ``defined`` is false
    (structures with a periodic direction)."""
    num = graph.num_graphs
    dtype = charges.dtype
    pos = graph.pos.to(dtype)
    mass = torch.as_tensor(atomic_masses, dtype=dtype, device=pos.device)[graph.z]
    centre = sum_per_structure(mass.unsqueeze(-1) * pos, graph.batch, num) / sum_per_structure(mass, graph.batch, num).unsqueeze(-1)
    moment = sum_per_structure(charges.unsqueeze(-1) * (pos - centre.index_select(0, graph.batch)), graph.batch, num)
    defined = ~graph.pbc.view(num, 3).bool().any(dim=1)
    return torch.where(defined.unsqueeze(-1), moment, torch.zeros_like(moment)), defined


def dipole_extras(graph: AtomicGraph, charges: torch.Tensor) -> dict[str, torch.Tensor]:
    """``{DIPOLE: [B, 3], DIPOLE_DEFINED: [B]}``: the node-output extras of a charge-producing model."""
    dipole, defined = charge_dipole(graph, charges)
    return {keys.DIPOLE: dipole, keys.DIPOLE_DEFINED: defined}
