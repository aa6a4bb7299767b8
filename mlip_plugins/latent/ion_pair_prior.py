"""Physics prior for the environment dependence of ionic-state energies: ion-pair stabilisation.

An ion next to atoms that can take the opposite charge is stabilised by their Coulomb
attraction. A cation on atom i is stabilised by neighbours that are more electronegative than
i (they take the electron), an anion by neighbours that are less electronegative:

    Delta E_ik = -q_k^2 S_i^{sign q_k},
    S_i^+ = 1/2 sum_{j != i} J_ij(r_ij) s(r_ij) p(chi_j - chi_i),
    S_i^- = 1/2 sum_{j != i} J_ij(r_ij) s(r_ij) p(chi_i - chi_j),

with J_ij the shielded Coulomb kernel of :mod:`mlip_plugins.latent.coulomb`, s a smooth switch
to zero at ``cutoff``, chi the Mulliken electronegativity from the measured IP and EA, and
p(x) = 1 / (1 + exp(-x / w)) a soft step of width w (eV). For a dimer A-B with chi_B >> chi_A
this puts the ionic/covalent crossing where the diabatic ion-pair energy IP_A - EA_B - J_AB(R)
changes sign (3.1 Å for LiH); the factor 1/2 shares the pair's Coulomb energy between the ions;
between like atoms p = 1/2 in both directions.

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
    electronegativity: torch.Tensor,
    num_atoms: int,
    cutoff: float,
    switch_width: float,
    electronegativity_width: float = 1.0,
) -> torch.Tensor:
    """[N, 2] (S_i^+, S_i^-) in eV over the edges (row 0 = neighbour j, row 1 = centre i).

    ``electronegativity`` is [N] chi_i (eV) of each atom.
    """
    src, dst = edge_index[0], edge_index[1]
    r = edge_len.to(torch.float64)
    sigma = gaussian_widths(atomic_numbers)
    gamma = torch.sqrt(sigma[src] ** 2 + sigma[dst] ** 2)
    inside = r < cutoff
    r_safe = torch.where(inside, r, torch.full_like(r, cutoff))
    pair = torch.where(inside, shielded_coulomb(r_safe, gamma) * smooth_switch(r_safe, cutoff, switch_width), torch.zeros_like(r))
    chi = electronegativity.to(torch.float64)
    towards_neighbour = torch.sigmoid((chi[src] - chi[dst]) / electronegativity_width)
    per_edge = 0.5 * torch.stack([pair * towards_neighbour, pair * (1.0 - towards_neighbour)], dim=-1)
    return torch.zeros(num_atoms, 2, dtype=torch.float64, device=r.device).index_add(0, dst, per_edge)
