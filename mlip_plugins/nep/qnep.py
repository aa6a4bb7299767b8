"""GPUMD's charge NEP (qNEP): neutral charges, GPUMD's Coulomb energy, Born effective charges.

A qNEP network has a second output per atom, the raw charge q~_i (Fan et al., qNEP; GPUMD
``nep4_charge1`` / ``nep4_charge2`` files). What GPUMD computes from it, and what this module
computes the same way (in torch, differentiable, batched over structures):

* **neutral charges**: q_i = q~_i - mean of q~ over the atoms of i's structure. The energy is
  computed from these q, so autograd through the subtraction gives the forces with
  dE/dq~_j = dE/dq_j - mean_k dE/dq_k, the neutralised derivative;
* **Coulomb energy** with Ewald splitting parameter alpha = pi / rc_R (rc_R: the radial
  cutoff) and GPUMD's constant k_e = 14.399645 eV Å / e² (:data:`GPUMD_COULOMB_CONSTANT`):

  - k space, every reciprocal vector 0 < |k| < 2 pi alpha of the cell:
    E_k = k_e (2 pi / V) sum_k exp(-k² / (4 alpha²)) / k² |sum_j q_j exp(i k.r_j)|²;
  - ``charge_mode 1`` adds the real-space part over the pairs closer than rc_R and the self
    term: E_r = k_e [1/2 sum_{i != j, r_ij < rc_R} q_i q_j erfc(alpha r_ij) / r_ij
    - alpha / sqrt(pi) sum_i q_i²] (a complete Ewald sum truncated where GPUMD truncates it);
  - ``charge_mode 2`` keeps k space only: the short-range remainder is the network's to learn.

  GPUMD's molecular dynamics can replace the k-space sum by PPPM (``kspace pppm`` in run.in), an
  approximation of the same sum; calorine's CPUNEP and this module evaluate the Ewald sum;
* **Born effective charges** (GPUMD's definition, per atom a 3 x 3 tensor, row = polarisation
  direction a, column = displacement direction b): Z_i = sqrt(eps_inf) [q_i 1 +
  1/2 sum over the edges e = (i -> j) of r_e (x) dq~_i/dr_e - 1/2 sum over the edges
  e = (j -> i) of r_e (x) dq~_j/dr_e], where r_e is the edge vector and sqrt(eps_inf) the
  network's extra trained scalar (``sqrt_epsilon_infinity`` in nep.txt).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mlip_plugins.data.structures import DataError
from mlip_plugins.graph import AtomicGraph
from mlip_plugins.nn import sum_per_atom
from mlip_plugins.nn.segments import mean_per_structure
from mlip_plugins.units import GPUMD_COULOMB_CONSTANT

#: the charge modes GPUMD's qNEP files name (``nep4[_zbl]_charge<mode>``) that this module evaluates
CHARGE_MODES = (1, 2)


def neutral_charges(raw: torch.Tensor, graph: AtomicGraph) -> torch.Tensor:
    """q = q~ - (mean of q~ over each structure): [N], zero total charge per structure."""
    return raw - mean_per_structure(raw, graph.batch, graph.num_graphs)[graph.batch]


def _reciprocal_vectors(cell: torch.Tensor, alpha: float) -> torch.Tensor:
    """[K, 3] reciprocal vectors with 0 < |k| < 2 pi alpha, one of each pair +-k
    (differentiable in ``cell``, whose rows are the lattice vectors)."""
    reciprocal = 2.0 * math.pi * torch.linalg.inv(cell).transpose(0, 1)  # rows b_j, a_i . b_j = 2 pi delta_ij
    k_max = 2.0 * math.pi * alpha
    # |n_i| = |k . a_i| / (2 pi) < alpha |a_i| covers the sphere
    extent = [int(math.floor(alpha * float(v))) for v in torch.linalg.norm(cell.detach(), dim=1)]
    ranges = [torch.arange(-m, m + 1, device=cell.device, dtype=cell.dtype) for m in extent]
    n = torch.cartesian_prod(*ranges)
    # half space: the first nonzero integer coordinate is positive
    first = torch.where(n[:, 0] != 0, n[:, 0], torch.where(n[:, 1] != 0, n[:, 1], n[:, 2]))
    n = n[first > 0]
    k = n @ reciprocal
    k_sq = (k.detach() ** 2).sum(-1)
    return k[k_sq < k_max * k_max]


class QNEPCoulomb(nn.Module):
    """GPUMD's Coulomb energy of a qNEP's neutral charges (module docstring): per-atom energies [N] in eV.

    Args:
        charge_mode: 1 (Ewald: k space + real space + self term) or 2 (k space only).
        cutoff: the NEP's radial cutoff rc_R (Å); alpha = pi / rc_R.
    """

    def __init__(self, charge_mode: int, cutoff: float):
        super().__init__()
        if int(charge_mode) not in CHARGE_MODES:
            raise ValueError(f"qNEP charge_mode must be one of {CHARGE_MODES}, got {charge_mode!r}")
        self.charge_mode = int(charge_mode)
        self.cutoff = float(cutoff)
        self.alpha = math.pi / self.cutoff

    def forward(self, graph: AtomicGraph, charges: torch.Tensor) -> torch.Tensor:
        energy = self.reciprocal(graph, charges)
        if self.charge_mode == 1:
            energy = energy + self.real_space(graph, charges)
        return energy

    def reciprocal(self, graph: AtomicGraph, charges: torch.Tensor) -> torch.Tensor:
        """k-space energy, split per atom as 1/2 q_i phi_i^k: [N]."""
        if not bool(graph.pbc.all()):
            raise DataError("a qNEP (GPUMD charge NEP) needs periodic structures: its Coulomb energy is an Ewald sum "
                            "(set pbc=True and a cell)")
        out = torch.zeros_like(charges)
        four_alpha_sq = 4.0 * self.alpha * self.alpha
        for b in range(graph.num_graphs):
            index = (graph.batch == b).nonzero().view(-1)
            cell = graph.cell[b]
            k = _reciprocal_vectors(cell, self.alpha)
            if k.shape[0] == 0:
                continue
            volume = torch.linalg.det(cell).abs()
            k_sq = (k * k).sum(-1)
            # half space: each vector stands for +-k, hence 2 x (2 pi / V)
            weight = (4.0 * math.pi / volume) * torch.exp(-k_sq / four_alpha_sq) / k_sq  # [K]
            q = charges.index_select(0, index)
            phase = graph.pos.index_select(0, index) @ k.T  # [n, K]
            cos, sin = torch.cos(phase), torch.sin(phase)
            c, s = q @ cos, q @ sin  # [K]
            atom = q * ((cos * c + sin * s) @ weight)
            out = out.index_add(0, index, GPUMD_COULOMB_CONSTANT * atom)
        return out

    def real_space(self, graph: AtomicGraph, charges: torch.Tensor) -> torch.Tensor:
        """erfc-screened pair energy within rc_R (half to each atom) minus the self term: [N]."""
        src, dst = graph.edge_index[0], graph.edge_index[1]
        r = graph.edge_len
        inside = r < self.cutoff
        pair = torch.where(inside, torch.erfc(self.alpha * r) / r, torch.zeros_like(r))
        pair = 0.5 * charges[dst] * charges[src] * pair
        self_term = (self.alpha / math.sqrt(math.pi)) * charges * charges
        return GPUMD_COULOMB_CONSTANT * (sum_per_atom(pair, dst, graph.num_atoms) - self_term)


def born_effective_charges(graph: AtomicGraph, raw: torch.Tensor, charges: torch.Tensor,
                           sqrt_epsilon_inf: torch.Tensor, create_graph: bool = False) -> torch.Tensor | None:
    """GPUMD's Born effective charges [N, 3, 3] (module docstring), or None when the edge vectors
    carry no gradient (forces not requested)."""
    if not graph.edge_vec.requires_grad:
        return None
    (grad,) = torch.autograd.grad(raw.sum(), graph.edge_vec, create_graph=create_graph, retain_graph=True, allow_unused=True)
    n = graph.num_atoms
    eye = torch.eye(3, dtype=charges.dtype, device=charges.device)
    bec = charges.view(-1, 1, 1) * eye
    if grad is not None:
        # dq~_centre / dr_e lands on the centre with +, on the neighbour with -
        outer = 0.5 * graph.edge_vec.unsqueeze(-1) * grad.unsqueeze(-2)  # [E, 3, 3]: a = r_e, b = d/dr_e
        flat = outer.reshape(-1, 9)
        src, dst = graph.edge_index[0], graph.edge_index[1]
        bec = bec + (sum_per_atom(flat, dst, n) - sum_per_atom(flat, src, n)).view(n, 3, 3)
    return sqrt_epsilon_inf * bec
