"""Learned charge equilibration (``qeq``): the 4G-HDNNP charges, non-local through the Coulomb law.

Ko, Finkler, Goedecker and Behler (Nat. Commun. 12, 398 (2021)) predict an environment-dependent
electronegativity per atom and let the charges equilibrate over the whole structure. Here
chi_i = chi0(Z_i) + MLP_{s_i}(x_i) from the local features, J_i = J0(Z_i) exp(rho_{s_i}) > 0 with
one learned factor per element (chi0, J0: the free atoms' measured values, or zero and a
constant), and the charges minimise the charge-equilibration energy of Gaussian charge clouds

    E_Qeq(q) = sum_i [chi_i q_i + 1/2 (J_i + k_e / (sigma_i sqrt(pi))) q_i^2]
             + 1/2 sum_{i != j} q_i q_j k_e erf(r_ij / (sqrt(2) gamma_ij)) / r_ij,
    gamma_ij = sqrt(sigma_i^2 + sigma_j^2),   sigma = covalent radius (scaled),

over every periodic image, subject to sum_i q_i = Q for each structure: the linear system

    [[A, 1], [1^T, 0]] [q; -mu] = [-chi; Q]      (mu: the structure's chemical potential).

Why it matters: a latent charge model (``latent``) gives each atom a charge from its own
environment and spreads the missing total charge evenly, so a distant dopant or an extra proton
at the far end of a chain moves every charge by the same amount. Here the charge flows to where
the electronegativity and the electrostatics put it (to the Au2 adsorbed on Al-doped MgO, to the
protonated end of C10H3+), which a local model cannot see.

The point-charge part of A comes from the long-range solver the electrostatic model uses
(Ewald / PME / P3M for periodic cells, direct sums for molecules): its potentials of one unit
charge per atom, one channel per atom of the largest structure, so periodic images and the
solver's accuracy are the model's own. The Gaussian screening, k_e erfc(r/(sqrt2 gamma))/r, is
subtracted over the neighbour list within ``screening_cutoff``, switched off smoothly over the
last ``screening_switch_width`` Å so the charges stay smooth functions of the positions (the
model cutoff must reach ``screening_cutoff``). Dense O(n^3) solve per structure: meant for the
molecules, clusters and slabs of up to a few hundred atoms these models are trained on.
"""

from __future__ import annotations

import math

import torch
from ase.data import covalent_radii
from torch import nn

from mlip_plugins.charges.ensemble.atomic_data import MissingAtomicDataError, chemical_hardness, mulliken_electronegativity
from mlip_plugins.charges.ensemble.coulomb import gaussian_widths, smooth_switch
from mlip_plugins.charges.local import scale_last_layer
from mlip_plugins.errors import MLIPError
from mlip_plugins.graph import AtomicGraph
from mlip_plugins.models.readout import MLPReadout
from mlip_plugins.units import COULOMB_CONSTANT


class QEqSizeError(MLIPError, ValueError):
    """A structure is larger than the dense equilibration accepts (``max_atoms``)."""


class QEqCharges(nn.Module):
    """Charges from learned electronegativities and hardnesses by charge equilibration.

    Args:
        in_dim: feature dimension D (injected).
        num_species: number of elements (injected).
        hidden: widths of the per-element electronegativity MLP.
        activation: activation name (see ``mlip_plugins.nn.ACTIVATIONS``).
        start: ``physical`` (default): chi starts at each element's Mulliken electronegativity
            (IP + EA)/2 and the diagonal of A at its measured hardness IP - EA (the free atom's
            parabola, Rappé-Goddard QEq; :mod:`mlip_plugins.charges.ensemble.atomic_data`, H..Rn),
            so the untrained model already gives QEq's charges (Mg+ O- in MgO) and training
            corrects them; ``zero``: chi starts at zero and J at ``hardness`` for every element.
            The electronegativities are in eV and move slowly under Adam: from zero, charges
            of a few tenths of e need hundreds of steps.
        hardness: with ``start: zero``, the initial hardness J (eV/e^2) of every element.
        width_scale: Gaussian widths sigma = width_scale x covalent radius (ASE's table).
        screening_cutoff: distance (Å) beyond which the charges interact as points; at most the
            model cutoff (the neighbour list must hold every pair within it).
        screening_switch_width: width (Å) of the smooth switch that ends at ``screening_cutoff``.
        initial_scale: factor on the initial weights of the electronegativity head's last layer;
            0 starts the learned environment term at zero, so chi starts at its element's start
            value (with ``start: zero``: neutral structures start uncharged, charged ones with
            the electrostatically best spread of their charge).
        max_atoms: the largest structure accepted (the matrix is dense: n^2 memory, n^3 solve, and
            one solver channel per atom); a larger one is a clear error, not an out-of-memory.
        solver: a long-range solver spec of its own (``{name: ewald, cutoff: ...}``); by default
            the electrostatic energy model lends its solver (:meth:`use_solver`), and without
            either only molecules can be handled (direct sums).
    """

    conformance_config = {"solver": {"name": "ewald", "cutoff": 4.0}, "screening_cutoff": 4.0}

    def __init__(
        self,
        in_dim: int,
        num_species: int,
        hidden: list[int] | tuple[int, ...] = (16,),
        activation: str = "silu",
        start: str = "physical",
        hardness: float = 10.0,
        width_scale: float = 1.0,
        screening_cutoff: float = 4.0,
        screening_switch_width: float = 1.0,
        initial_scale: float = 1.0,
        max_atoms: int = 2000,
        solver: dict | None = None,
    ):
        super().__init__()
        if hardness <= 0:
            raise ValueError(f"charge model 'qeq': hardness must be positive, got {hardness}")
        if width_scale <= 0:
            raise ValueError(f"charge model 'qeq': width_scale must be positive, got {width_scale}")
        if not 0 < screening_switch_width <= screening_cutoff:
            raise ValueError("charge model 'qeq': need 0 < screening_switch_width <= screening_cutoff, "
                             f"got {screening_switch_width} and {screening_cutoff}")
        self.electronegativity = scale_last_layer(MLPReadout(in_dim, num_species, hidden=list(hidden), activation=activation),
                                                  initial_scale)
        if start not in ("physical", "zero"):
            raise ValueError(f"charge model 'qeq': start must be 'physical' or 'zero', got {start!r}")
        self.start = start
        self.width_scale = float(width_scale)
        chi0, j0, known = _start_tables(start, float(hardness), self.width_scale)
        self.register_buffer("chi0", chi0)  # [Z]: electronegativity at the start (eV)
        self.register_buffer("hardness0", j0)  # [Z]: J at the start (eV/e^2), the Gaussian self-energy excluded
        self.register_buffer("known", known)  # [Z]: elements with start values
        # J_i = hardness0[z_i] exp(rho_{s_i}): positive, learned per element
        self.log_hardness = nn.Parameter(torch.zeros(int(num_species), dtype=torch.float64))
        self.screening_cutoff = float(screening_cutoff)
        self.screening_switch_width = float(screening_switch_width)
        self.max_atoms = int(max_atoms)
        self.own_solver = None
        if solver is not None:
            from mlip_plugins.models.builder import build

            self.own_solver = build("long_range", dict(solver), "qeq.solver")
        self._lent_solver: list[nn.Module] = []  # not a submodule: the energy model owns it

    def use_solver(self, solver: nn.Module) -> None:
        """Use the electrostatic model's long-range solver for the point-charge part of A."""
        self._lent_solver = [solver]

    @property
    def cutoff(self) -> float:
        """The neighbour-list reach the screening needs."""
        return self.screening_cutoff

    def hardness(self, graph: AtomicGraph) -> torch.Tensor:
        """J_i (eV/e^2) of every atom (the Gaussian self-energy not included)."""
        return self.hardness0.index_select(0, graph.z) * torch.exp(self.log_hardness).index_select(0, graph.species)

    def electronegativities(self, features: torch.Tensor, graph: AtomicGraph) -> torch.Tensor:
        """chi_i (eV): the start value of the element plus the learned environment term."""
        chi0 = self.chi0.index_select(0, graph.z)
        known = self.known.index_select(0, graph.z)
        if not bool(known.all()):
            missing = sorted({int(z) for z in graph.z[~known]})
            raise MissingAtomicDataError(f"charge model 'qeq' (start: physical): no measured ionisation energy for Z={missing}; "
                                         "the table holds H..Rn (Z=1..86); use start: zero")
        return chi0.to(features.dtype) + self.electronegativity(features, graph)

    def _solver(self) -> nn.Module:
        if self.own_solver is not None:
            return self.own_solver
        if self._lent_solver:
            return self._lent_solver[0]
        from mlip_plugins.long_range.direct import DirectSolver

        self._lent_solver = [DirectSolver()]
        return self._lent_solver[0]

    def forward(self, features: torch.Tensor, graph: AtomicGraph) -> torch.Tensor:
        chi = self.electronegativities(features, graph)
        matrix, row, col = self.equilibration_matrix(graph)
        return solve_equilibration(matrix, chi, graph.total_charge.to(chi.dtype).view(-1), row, col)

    def equilibration_matrix(self, graph: AtomicGraph) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A [B, n, n] of each structure (padded to the largest, n atoms) and each atom's (structure, slot)."""
        dtype = graph.pos.dtype
        num_atoms, num_graphs = graph.num_atoms, graph.num_graphs
        counts = torch.bincount(graph.batch, minlength=num_graphs)
        starts = torch.cumsum(counts, 0) - counts
        row = graph.batch
        col = torch.arange(num_atoms, device=row.device) - starts.index_select(0, row)
        n_max = int(counts.max())
        if n_max > self.max_atoms:
            raise QEqSizeError(f"charge model 'qeq': a structure of {n_max} atoms exceeds max_atoms={self.max_atoms} "
                               "(dense charge equilibration: n^2 memory, n^3 time); raise model.energy.model.charges.max_atoms "
                               "or use model/charges=latent")
        unit = torch.zeros(num_atoms, n_max, dtype=dtype, device=graph.pos.device)
        unit[torch.arange(num_atoms, device=row.device), col] = 1.0
        phi = self._solver().potentials(graph, unit)  # phi[a, c]: at atom a, of a unit charge on slot c of its structure
        point = phi.new_zeros(num_graphs, n_max, n_max).index_put((row, col), phi)
        sigma = self.width_scale * gaussian_widths(graph.z).to(dtype)
        src, dst, r = graph.edge_index[0], graph.edge_index[1], graph.edge_len
        near = r < self.screening_cutoff
        src, dst, r = src[near], dst[near], r[near]
        gamma = torch.sqrt(sigma.index_select(0, src) ** 2 + sigma.index_select(0, dst) ** 2)
        screening = (COULOMB_CONSTANT * torch.erfc(r / (math.sqrt(2.0) * gamma)) / r
                     * smooth_switch(r, self.screening_cutoff, self.screening_switch_width))
        matrix = point.index_put((row.index_select(0, dst), col.index_select(0, dst), col.index_select(0, src)),
                                 -screening, accumulate=True)
        matrix = 0.5 * (matrix + matrix.transpose(1, 2))  # symmetric analytically; drop rounding
        diagonal = self.hardness(graph).to(dtype) + gaussian_self_energy(sigma)
        matrix = matrix.index_put((row, col, col), diagonal, accumulate=True)
        return matrix, row, col


def gaussian_self_energy(sigma: torch.Tensor) -> torch.Tensor:
    """k_e / (sigma sqrt(pi)) (eV/e^2): twice the Coulomb self-energy of a unit Gaussian charge of width sigma."""
    return COULOMB_CONSTANT / (sigma * math.sqrt(math.pi))


#: the smallest start hardness (eV/e^2) where the measured IP - EA is below the Gaussian self-energy
MIN_START_HARDNESS = 0.5


def _start_tables(start: str, hardness: float, width_scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """chi0, J0 and the elements that have them, indexed by atomic number (all, with ``zero``)."""
    size = len(covalent_radii)
    if start == "zero":
        return (torch.zeros(size, dtype=torch.float64), torch.full((size,), float(hardness), dtype=torch.float64),
                torch.ones(size, dtype=torch.bool))
    chi0 = torch.zeros(size, dtype=torch.float64)
    j0 = torch.ones(size, dtype=torch.float64)
    known = torch.zeros(size, dtype=torch.bool)
    self_energy = gaussian_self_energy(width_scale * torch.as_tensor(covalent_radii, dtype=torch.float64))
    for z in range(1, size):
        try:
            chi0[z] = mulliken_electronegativity(z)
            j0[z] = max(chemical_hardness(z) - float(self_energy[z]), MIN_START_HARDNESS)
            known[z] = True
        except MissingAtomicDataError:
            continue
    return chi0, j0, known


def solve_equilibration(matrix: torch.Tensor, chi: torch.Tensor, total: torch.Tensor, row: torch.Tensor,
                        col: torch.Tensor) -> torch.Tensor:
    """Charges [N] minimising chi.q + 1/2 q^T A q per structure with sum q = total (differentiable).

    ``matrix`` [B, n, n] is padded; padded slots get a unit diagonal and no coupling, so their
    charges are zero."""
    num_graphs, n_max, _ = matrix.shape
    valid = torch.zeros(num_graphs, n_max, dtype=matrix.dtype, device=matrix.device).index_put((row, col), torch.ones_like(chi))
    system = matrix.new_zeros(num_graphs, n_max + 1, n_max + 1)
    system[:, :n_max, :n_max] = matrix * valid.unsqueeze(1) * valid.unsqueeze(2) + torch.diag_embed(1.0 - valid)
    system[:, :n_max, n_max] = valid
    system[:, n_max, :n_max] = valid
    rhs = matrix.new_zeros(num_graphs, n_max + 1).index_put((row, col), -chi)
    rhs[:, n_max] = total
    solution = torch.linalg.solve(system, rhs)
    return solution[row, col]
