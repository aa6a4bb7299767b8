"""Physics prior for the environment dependence of ionic-state energies: ion-pair stabilisation.

An ion of charge q_k next to atoms that can take the opposite charge is stabilised by their
Coulomb attraction. The prior lowers the energy of every charged state by

    Delta E_ik = -q_k^2 S_i,    S_i = 1/2 sum_{j != i} J_ij(r_ij) s(r_ij),

with J_ij the shielded Coulomb kernel of :mod:`mlip_plugins.latent.coulomb` and s a smooth
switch to zero at ``cutoff``. For a dimer A-B this puts the ionic/covalent crossing where the
diabatic ion-pair energy IP_A - EA_B - J_AB(R) changes sign (3.1 Å for LiH), and the factor
1/2 shares the pair's Coulomb energy between the two ions.

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

from mlip_plugins.latent.coulomb import gaussian_widths, shielded_coulomb, smooth_switch


def ion_pair_stabilisation(
    edge_index: torch.Tensor,
    edge_len: torch.Tensor,
    atomic_numbers: torch.Tensor,
    num_atoms: int,
    cutoff: float,
    switch_width: float,
) -> torch.Tensor:
    """S_i = 1/2 sum_j J_ij(r_ij) s(r_ij) over the edges (row 0 = neighbour j, row 1 = centre i), in eV."""
    src, dst = edge_index[0], edge_index[1]
    r = edge_len.to(torch.float64)
    sigma = gaussian_widths(atomic_numbers)
    gamma = torch.sqrt(sigma[src] ** 2 + sigma[dst] ** 2)
    inside = r < cutoff
    r_safe = torch.where(inside, r, torch.full_like(r, cutoff))
    pair = torch.where(inside, shielded_coulomb(r_safe, gamma) * smooth_switch(r_safe, cutoff, switch_width), torch.zeros_like(r))
    return 0.5 * torch.zeros(num_atoms, dtype=torch.float64, device=r.device).index_add(0, dst, pair)
