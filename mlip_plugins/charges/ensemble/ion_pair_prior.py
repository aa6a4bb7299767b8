"""Physics prior for the environment dependence of ionic-state energies: ion-pair stabilisation.

An ion is stabilised by the Coulomb attraction of neighbours that can take the opposite charge
at that distance. A cation on atom i counts neighbour j to the extent that the diabatic ion
pair (i+, j-) is bound, i.e. its Coulomb energy J_ij exceeds its cost IP_i - EA_j; an anion on
i counts j to the extent that (j+, i-) is bound:

    Delta E_ik = -q_k^2 S_i^{sign q_k},
    S_i^+ = sum_j w_ij^+ J_ij / (1 + sum_j w_ij^+),   w_ij^+ = s(r_ij) p(J_ij - (IP_i - EA_j)),
    S_i^- = sum_j w_ij^- J_ij / (1 + sum_j w_ij^-),   w_ij^- = s(r_ij) p(J_ij - (IP_j - EA_i)),

with J_ij the shielded Coulomb kernel of :mod:`mlip_plugins.charges.ensemble.coulomb` with
gamma_ij = sigma_i + sigma_j (covalent radii; wider than the sqrt(sigma_i^2 + sigma_j^2) of the
QEq reference, so that bonded charge clouds overlap), s a smooth switch to zero at ``cutoff``, IP / EA the measured values and p(x) = 1 / (1 + exp(-x / w)) a soft step
of width w (eV).

* A bound dimer A-B (one counter-ion, w = 1) gets S = J/2 on each ion: the ion pair is
  stabilised by J_AB(R); as R grows and the pair unbinds (J < IP_A - EA_B) the weight fades,
  which sharpens the ionic/covalent switch around the diabatic crossing.
* n equivalent counter-ions give an ion-pair stabilisation 2n/(n+1) J(r_nn): 1.71 for n = 6,
  1.78 for n = 8, 1.60 for n = 4, within 3 % of the Madelung constants of rock salt (1.748),
  CsCl (1.763) and zincblende (1.638). The saturation stands for the repulsion between the
  counter-ions, which a sum of attractions alone would miss (it would give n J).
* Covalent neighbours whose ion pair is not bound (O-H at 0.96 Å: J = 10.2 eV < IP_H - EA_O =
  12.1 eV) do not
  stabilise ions, so a molecule's atoms are not made cheap electron acceptors that a distant
  fragment would fill through the common chemical potential.
* The denominator is at least 1, so S is smooth where neighbours leave the cutoff.

The prior is deliberately *not* self-consistent (it does not depend on the charges): the
mean-field ensemble with the charge-dependent Coulomb energy -q^2 J is concave along the
charge-transfer coordinate, so its minimum jumps from neutral to ionic at the crossing (a
first-order transition, hence discontinuous forces) unless T exceeds about J/4 ~ 1 eV, which
in turn leaves a spurious charge transfer at dissociation. A q-independent stabilisation plus a
single chemical potential keeps q(R) smooth for any T > 0 and exactly neutral beyond the cutoff.
Its energetic counterpart is the Coulomb energy computed by the long-range solver from the
resulting charges, so the prior only steers the weights and is not added to the energy.
"""

from __future__ import annotations

import torch

from mlip_plugins.charges.ensemble.coulomb import gaussian_widths, shielded_coulomb, smooth_switch
from mlip_plugins.nn import sum_per_atom


def ion_pair_stabilisation(
    edge_index: torch.Tensor,
    edge_len: torch.Tensor,
    atomic_numbers: torch.Tensor,
    ionisation: torch.Tensor,
    affinity: torch.Tensor,
    num_atoms: int,
    cutoff: float,
    switch_width: float,
    pair_width: float = 1.0,
) -> torch.Tensor:
    """[N, 2] (S_i^+, S_i^-) in eV over the edges (row 0 = neighbour j, row 1 = centre i).

    ``ionisation`` and ``affinity`` are [N] IP_i and EA_i (eV) of each atom.
    """
    src, dst = edge_index[0], edge_index[1]
    r = edge_len.to(torch.float64)
    sigma = gaussian_widths(atomic_numbers)
    gamma = sigma[src] + sigma[dst]  # wider than sqrt(s_i^2 + s_j^2): covalent bonds stay unbound pairs
    inside = r < cutoff
    r_safe = torch.where(inside, r, torch.full_like(r, cutoff))
    switch = torch.where(inside, smooth_switch(r_safe, cutoff, switch_width), torch.zeros_like(r))
    coulomb = torch.where(inside, shielded_coulomb(r_safe, gamma), torch.zeros_like(r))
    ip, ea = ionisation.to(torch.float64), affinity.to(torch.float64)
    cation_pair = torch.sigmoid((coulomb - (ip[dst] - ea[src])) / pair_width)  # (i+, j-) bound
    anion_pair = torch.sigmoid((coulomb - (ip[src] - ea[dst])) / pair_width)  # (j+, i-) bound
    weights = switch.unsqueeze(-1) * torch.stack([cation_pair, anion_pair], dim=-1)
    numerator = sum_per_atom(weights * coulomb.unsqueeze(-1), dst, num_atoms)
    count = sum_per_atom(weights, dst, num_atoms)
    return numerator / (1.0 + count)
