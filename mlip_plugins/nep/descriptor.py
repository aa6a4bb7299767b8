"""The NEP4 descriptor of GPUMD: radial, 3-body angular and optional 4-/5-body invariants.

For atom i of type t_i and a neighbour j of type t_j at distance r_ij (Fan et al., PRB 104,
104309 (2021); GPUMD ``nep.txt`` conventions):

    f_c(r)   = (1 + cos(pi r / r_c)) / 2                       (r < r_c, else 0)
    f_k(r)   = (T_k(2 (r/r_c - 1)^2 - 1) + 1) / 2 * f_c(r)      k = 0..basis_size
    g_n(r)   = sum_k c[t_i, t_j, n, k] f_k(r)                   n = 0..n_max

    radial   q_n      = sum_j g^R_n(r_ij)                                      n = 0..n_max^R
    3-body   q_nl     = sum_m A_nlm^2 = (2l+1)/(4 pi) sum_jk g^A_n g^A_n P_l(cos theta_ijk)
                                                                               l = 1..l_max
    4-body   q_n222   = a cubic invariant of the l = 2 moments (GPUMD's ``C4B`` form)
    5-body   q_n1111  = a quartic invariant of the l = 1 moments (GPUMD's ``C5B`` form)

with moments ``A_nlm = sum_j g^A_n(r_ij) Y_lm(r_hat_ij)`` (orthonormal real harmonics), so
the angular part costs O(neighbours) per atom; the double sum includes j = k, as in GPUMD.
Radial and angular channels have their own cutoff, basis size and n_max, and their own
coefficients c for every ordered element pair (centre, neighbour). Optional per-element
cutoffs use r_c(a, b) = (r_c(a) + r_c(b)) / 2, as GPUMD does.

Feature order (what GPUMD's networks and ``q_scaler`` expect): radial n = 0..n_max^R, then
for l = 1..l_max all n = 0..n_max^A, then the 4-body block, then the 5-body block.

The 4- and 5-body invariants are written, as in GPUMD, in terms of the unnormalised
Cartesian moments ``s_1 = sum_j g (z, x, y)`` and
``s_2 = sum_j g (3z^2 - 1, xz, yz, x^2 - y^2, 2xy)`` of the unit vector (x, y, z):

    q_n222   = C0 s20^3 + C1 s20 (s21c^2 + s21s^2) + C2 s20 (s22c^2 + s22s^2)
               + C3 s22c (s21s^2 - s21c^2) + C4 s21c s21s s22s
    q_n1111  = D (s10^2 + s11c^2 + s11s^2)^2,   D = 21 / (80 pi^2)

(``tests/nep/test_nep_descriptor.py`` checks that q_n222 equals the Wigner-3j contraction
sum (2 2 2; m1 m2 m3) A_2m1 A_2m2 A_2m3 of the complex moments, and the calorine parity tests
check both terms against GPUMD's C++ code).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from mlip_plugins.descriptors.harmonics import real_spherical_harmonics
from mlip_plugins.graph import AtomicGraph
from mlip_plugins.nn import chebyshev_basis

#: Coefficients of the 4-body invariant q_n222 in the Cartesian l = 2 moments: the Wigner symbol
#: (2 2 2; 0 0 0) = -sqrt(2/35) times the cube of the Y_20 normalisation sqrt(5/(16 pi)), times
#: the ratios 1 : 18 : -9 : -54 : 108 of the monomials (GPUMD's ``C4B`` values).
_C4B_SCALE = -math.sqrt(2.0 / 35.0) * (5.0 / (16.0 * math.pi)) ** 1.5
C4B = tuple(_C4B_SCALE * k for k in (1.0, 18.0, -9.0, -54.0, 108.0))
#: GPUMD's coefficient of the 5-body invariant: q_n1111 = C5B * |s_1|^4 = 21 / (80 pi^2) |s_1|^4.
C5B = 21.0 / (80.0 * math.pi**2)


def _pair(value, name: str) -> tuple:
    """(radial, angular) from a scalar or a two-element sequence."""
    if isinstance(value, (int, float)):
        return value, value
    values = list(value)
    if len(values) != 2:
        raise ValueError(f"{name}: expected one value or [radial, angular], got {value!r}")
    return values[0], values[1]


def parse_l_max(l_max) -> tuple[int, bool, bool]:
    """(l_max^3b, has q_n222, has q_n1111) from ``4`` or ``[4, 2, 1]`` (GPUMD's nep.in form)."""
    if isinstance(l_max, int):
        return int(l_max), False, False
    values = [int(v) for v in l_max]
    if not 1 <= len(values) <= 3:
        raise ValueError(f"l_max: expected [l_3b, l_4b, l_5b], got {l_max!r}")
    values += [0] * (3 - len(values))
    if values[1] not in (0, 2):
        raise ValueError(f"l_max: the 4-body entry must be 0 or 2, got {values[1]}")
    if values[2] not in (0, 1):
        raise ValueError(f"l_max: the 5-body entry must be 0 or 1, got {values[2]}")
    if values[2] and not values[1]:
        raise ValueError("l_max: the 5-body term needs the 4-body term (GPUMD: l_max L 2 1)")
    return values[0], bool(values[1]), bool(values[2])


def cartesian_moments_l12(unit: torch.Tensor) -> torch.Tensor:
    """GPUMD's unnormalised l = 1 and l = 2 polynomials of unit vectors, [E, 8]:
    (z, x, y, 3z^2 - 1, xz, yz, x^2 - y^2, 2xy)."""
    x, y, z = unit[:, 0], unit[:, 1], unit[:, 2]
    return torch.stack([z, x, y, 3.0 * z * z - 1.0, x * z, y * z, x * x - y * y, 2.0 * x * y], dim=-1)


def q222_from_moments(s2: torch.Tensor) -> torch.Tensor:
    """4-body invariant from the Cartesian l = 2 moments [..., 5] (order 20, 21c, 21s, 22c, 22s)."""
    s0, s1, s2_, s3, s4 = s2.unbind(-1)
    return (
        C4B[0] * s0**3
        + C4B[1] * s0 * (s1 * s1 + s2_ * s2_)
        + C4B[2] * s0 * (s3 * s3 + s4 * s4)
        + C4B[3] * s3 * (s2_ * s2_ - s1 * s1)
        + C4B[4] * s1 * s2_ * s4
    )


def q1111_from_moments(s1: torch.Tensor) -> torch.Tensor:
    """5-body invariant from the Cartesian l = 1 moments [..., 3]."""
    square = (s1 * s1).sum(-1)
    return C5B * square * square


def neighbor_slots(center: torch.Tensor, num_atoms: int) -> tuple[torch.Tensor, int]:
    """Position of each edge among its centre's edges, and the largest neighbour count.

    (center[e], slot[e]) indexes a padded [num_atoms, width] per-atom neighbour table.
    """
    if center.numel() == 0:
        return center.clone(), 1
    order = torch.argsort(center, stable=True)
    counts = torch.bincount(center, minlength=num_atoms)
    start = torch.cumsum(counts, 0) - counts
    slot = torch.empty_like(center)
    slot[order] = torch.arange(center.numel(), device=center.device) - start[center[order]]
    return slot, max(int(counts.max()), 1)


class NEPDescriptor(nn.Module):
    """GPUMD's NEP4 descriptor (see the module docstring), without the ``q_scaler``.

    Args:
        num_species: number of elements (injected by the model builder).
        cutoff: radial cutoff, or ``[radial, angular]`` (Å).
        cutoff_angular: angular cutoff (Å); defaults to the radial one.
        n_max: ``[n_max^R, n_max^A]`` (or one value for both).
        basis_size: ``[N_bas^R, N_bas^A]`` (or one value for both).
        l_max: ``l_3b`` or ``[l_3b, 0|2, 0|1]`` as in nep.in (3-body up to 8, 4-body, 5-body).
        typewise_cutoffs: optional ``[[rc_R, rc_A], ...]`` per element (model order); a pair
            of elements uses the mean of their cutoffs, as GPUMD does.
        init: c ~ 0.1 N(0,1) + U(-0.5, 0.5) (GNEP) when ``"gnep"``, else U(-init, init).
        seed: seed of the initial coefficients.
    """

    #: a small configuration for the conformance kit (mlip_plugins.testing)
    conformance_config = {"cutoff_angular": 3.5, "n_max": [2, 2], "basis_size": [3, 3], "l_max": [3, 2, 1]}

    def __init__(
        self,
        num_species: int,
        cutoff: float | Sequence[float] = 5.0,
        cutoff_angular: float | None = None,
        n_max: int | Sequence[int] = (4, 4),
        basis_size: int | Sequence[int] = (8, 8),
        l_max: int | Sequence[int] = 4,
        typewise_cutoffs: Sequence[Sequence[float]] | None = None,
        init: str | float = "gnep",
        seed: int = 0,
    ):
        super().__init__()
        rc_r, rc_a = _pair(cutoff, "cutoff")
        if cutoff_angular is not None:
            rc_a = cutoff_angular
        self.rc_radial, self.rc_angular = float(rc_r), float(rc_a)
        if self.rc_angular > self.rc_radial + 1e-12:
            raise ValueError(f"NEP needs the angular cutoff ({self.rc_angular}) <= the radial cutoff ({self.rc_radial})")
        n_r, n_a = _pair(n_max, "n_max")
        k_r, k_a = _pair(basis_size, "basis_size")
        self.n_max_radial, self.n_max_angular = int(n_r), int(n_a)
        self.basis_size_radial, self.basis_size_angular = int(k_r), int(k_a)
        self.l_max, self.has_q222, self.has_q1111 = parse_l_max(l_max)
        if not 0 <= self.l_max <= 8:
            raise ValueError(f"l_max: the 3-body degree must be 0..8, got {self.l_max}")
        self.num_species = int(num_species)
        self.num_angular_blocks = self.l_max + int(self.has_q222) + int(self.has_q1111)
        self.radial_dim = self.n_max_radial + 1
        self.angular_dim = (self.n_max_angular + 1) * self.num_angular_blocks
        self.dim = self.radial_dim + self.angular_dim

        # per-pair cutoffs (buffers so that they follow .to(device) and the state dict)
        if typewise_cutoffs is not None:
            table = torch.tensor([[float(a), float(b)] for a, b in typewise_cutoffs], dtype=torch.float64)
            if table.shape != (self.num_species, 2):
                raise ValueError(f"typewise_cutoffs: expected {self.num_species} pairs [rc_R, rc_A], got {list(typewise_cutoffs)!r}")
            self.typewise_cutoffs = table.tolist()
            pair_r = 0.5 * (table[:, None, 0] + table[None, :, 0])
            pair_a = 0.5 * (table[:, None, 1] + table[None, :, 1])
            self.rc_radial = float(table[:, 0].max())
            self.rc_angular = float(table[:, 1].max())
        else:
            self.typewise_cutoffs = None
            pair_r = torch.full((self.num_species, self.num_species), self.rc_radial, dtype=torch.float64)
            pair_a = torch.full((self.num_species, self.num_species), self.rc_angular, dtype=torch.float64)
        dtype = torch.get_default_dtype()
        self.register_buffer("pair_cutoff_radial", pair_r.to(dtype).flatten(), persistent=False)
        self.register_buffer("pair_cutoff_angular", pair_a.to(dtype).flatten(), persistent=False)
        self.cutoff = self.rc_radial

        generator = torch.Generator().manual_seed(int(seed))
        s = self.num_species
        self.c_radial = nn.Parameter(self._init((s, s, self.radial_dim, self.basis_size_radial + 1), init, generator))
        self.c_angular = nn.Parameter(
            self._init((s, s, self.n_max_angular + 1, self.basis_size_angular + 1), init, generator)
        )

    @staticmethod
    def _init(shape: tuple[int, ...], init: str | float, generator: torch.Generator) -> torch.Tensor:
        dtype = torch.get_default_dtype()
        if init == "gnep":  # GNEP: 0.1 N(0, 1) + U(-0.5, 0.5)
            return 0.1 * torch.randn(shape, generator=generator, dtype=dtype) + torch.rand(shape, generator=generator, dtype=dtype) - 0.5
        scale = float(init)
        return scale * (2.0 * torch.rand(shape, generator=generator, dtype=dtype) - 1.0)

    # -- pieces ------------------------------------------------------------------------------
    # g_n(r_ij) = sum_k c[t_i, t_j, n, k] f_k(r_ij) is never formed per edge: the basis is summed
    # per (atom, neighbour element) first, and each atom's coefficients c[t_i] are applied to
    # those sums (radial) or to the angular moments of those sums, which keeps the per-edge
    # work at K+1 numbers whatever the number of elements.
    def _atom_coefficients(self, coefficients: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        """c[t_i] arranged as [N, S (K+1), n+1] for every atom i."""
        c = coefficients[species]  # [N, S, n+1, K+1]
        return c.transpose(2, 3).reshape(species.shape[0], -1, coefficients.shape[2])

    def radial(self, graph: AtomicGraph) -> torch.Tensor:
        """Radial features q_n: [N, n_max^R + 1]."""
        src, dst = graph.edge_index[0], graph.edge_index[1]
        s = self.num_species
        pair = graph.species[dst] * s + graph.species[src]
        rc = self.pair_cutoff_radial.to(graph.edge_len.dtype)[pair]
        basis = chebyshev_basis(graph.edge_len, rc, self.basis_size_radial)  # [E, K+1]
        sums = basis.new_zeros(graph.num_atoms * s, basis.shape[1]).index_add(0, dst * s + graph.species[src], basis)
        sums = sums.view(graph.num_atoms, 1, -1)  # [N, 1, S (K+1)]
        return torch.bmm(sums, self._atom_coefficients(self.c_radial, graph.species)).squeeze(1)

    def angular(self, graph: AtomicGraph) -> torch.Tensor:
        """Angular features [N, (n_max^A + 1) * blocks], blocks ordered l = 1..l_max, q222, q1111."""
        n_atoms = graph.num_atoms
        if self.num_angular_blocks == 0:
            return graph.edge_len.new_zeros(n_atoms, 0)
        src, dst = graph.edge_index[0], graph.edge_index[1]
        s = self.num_species
        pair = graph.species[dst] * s + graph.species[src]
        rc = self.pair_cutoff_angular.to(graph.edge_len.dtype)[pair]
        keep = (graph.edge_len < rc).nonzero().view(-1)
        r, vec, rc, dst, neighbor = graph.edge_len[keep], graph.edge_vec[keep], rc[keep], dst[keep], graph.species[src[keep]]
        basis = chebyshev_basis(r, rc, self.basis_size_angular)  # [Ea, K+1]
        unit = vec / r.unsqueeze(-1)
        columns = []
        if self.l_max > 0:
            columns.append(real_spherical_harmonics(unit, self.l_max)[:, 1:])  # l = 1..l_max
        if self.has_q222 or self.has_q1111:
            columns.append(cartesian_moments_l12(unit))
        angular = torch.cat(columns, dim=1)  # [Ea, M]
        # moments A[i, n, m] = sum_j g_n(r_ij) Y_m(r_ij) = sum_{t,k} c[t_i, t, n, k] F[i, t, k, m] with
        # F[i, t, k, m] = sum_{j of element t} f_k(r_ij) Y_m(r_ij): batched products over each
        # atom's padded neighbour slots (no per-edge outer products, no large scatters)
        slot, width = neighbor_slots(dst, n_atoms)
        k1 = basis.shape[1]
        f_pad = basis.new_zeros(n_atoms, width, s, k1).index_put((dst, slot, neighbor), basis)
        y_pad = angular.new_zeros(n_atoms, width, angular.shape[1]).index_put((dst, slot), angular)
        # matmul, not bmm: for float64 it picks a faster kernel for the transposed operand (~2x)
        per_type = torch.matmul(f_pad.view(n_atoms, width, s * k1).transpose(1, 2), y_pad)  # [N, S (K+1), M]
        coefficients = self._atom_coefficients(self.c_angular, graph.species)  # [N, S (K+1), nA+1]
        moments = torch.bmm(coefficients.transpose(1, 2), per_type)  # [N, nA+1, M]
        blocks = []
        if self.l_max > 0:
            squares = moments[..., : self.l_max * (self.l_max + 2)] ** 2
            for l in range(1, self.l_max + 1):
                blocks.append(squares[..., l * l - 1 : (l + 1) * (l + 1) - 1].sum(-1))
        if self.has_q222 or self.has_q1111:
            s = moments[..., self.l_max * (self.l_max + 2) :]
            if self.has_q222:
                blocks.append(q222_from_moments(s[..., 3:8]))
            if self.has_q1111:
                blocks.append(q1111_from_moments(s[..., 0:3]))
        return torch.cat(blocks, dim=1)

    def forward(self, graph: AtomicGraph) -> torch.Tensor:
        return torch.cat([self.radial(graph), self.angular(graph)], dim=1)

    def config(self) -> dict:
        """The constructor arguments that rebuild this descriptor's architecture."""
        return {
            "cutoff": [self.rc_radial, self.rc_angular],
            "n_max": [self.n_max_radial, self.n_max_angular],
            "basis_size": [self.basis_size_radial, self.basis_size_angular],
            "l_max": [self.l_max, 2 if self.has_q222 else 0, 1 if self.has_q1111 else 0],
            "typewise_cutoffs": self.typewise_cutoffs,
        }

    def extra_repr(self) -> str:
        return (
            f"cutoff=({self.rc_radial}, {self.rc_angular}), n_max=({self.n_max_radial}, {self.n_max_angular}), "
            f"basis_size=({self.basis_size_radial}, {self.basis_size_angular}), l_max={self.l_max}, "
            f"q222={self.has_q222}, q1111={self.has_q1111}, dim={self.dim}"
        )
