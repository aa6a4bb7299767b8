"""The NEP4 descriptor of GPUMD: radial, 3-body angular and optional higher-body invariants.

For atom i of type t_i and a neighbour j of type t_j at distance r_ij (Fan et al., PRB 104,
104309 (2021); GPUMD ``nep.txt`` conventions):

    f_c(r)   = (1 + cos(pi r / r_c)) / 2                       (r < r_c, else 0)
    f_k(r)   = (T_k(2 (r/r_c - 1)^2 - 1) + 1) / 2 * f_c(r)      k = 0..basis_size
    g_n(r)   = sum_k c[t_i, t_j, n, k] f_k(r)                   n = 0..n_max

    radial   q_n      = sum_j g^R_n(r_ij)                                      n = 0..n_max^R
    3-body   q_nl     = sum_m A_nlm^2 = (2l+1)/(4 pi) sum_jk g^A_n g^A_n P_l(cos theta_ijk)
                                                                               l = 1..l_max
    higher   q_n{l1 l2 l3} = sum_{m1 m2 m3} (l1 l2 l3; m1 m2 m3) A_n,l1m1 A_n,l2m2 A_n,l3m3
             (Wigner-3j contractions of the complex moments: q_222, q_112, q_123, q_233, q_134)
    5-body   q_n1111  = (7/15) |A_n1|^4 = GPUMD's 21 / (80 pi^2) |s_1|^4

with moments ``A_nlm = sum_j g^A_n(r_ij) Y_lm(r_hat_ij)`` (orthonormal harmonics), so
the angular part costs O(neighbours) per atom; the double sum includes j = k, as in GPUMD.
Radial and angular channels have their own cutoff, basis size and n_max, and their own
coefficients c for every ordered element pair (centre, neighbour). Optional per-element
cutoffs use r_c(a, b) = (r_c(a) + r_c(b)) / 2, as GPUMD does.

Feature order (what GPUMD's networks and ``q_scaler`` expect): radial n = 0..n_max^R, then
for l = 1..l_max all n = 0..n_max^A, then one block of n = 0..n_max^A per enabled higher-body
channel, in GPUMD's order q_222, q_1111, q_112, q_123, q_233, q_134 -- the order of the
entries of GPUMD's ``l_max`` line: ``l_max L q222 q1111 q112 q123 q233 q134`` (trailing
entries may be left out; the q222 entry is 2 in older files, 1 in newer ones).

GPUMD writes the cubic channels as polynomials of its unnormalised Cartesian moments with
tabulated coefficients; here they are contracted from the orthonormal moments with coupling
tensors built from Wigner-3j symbols (:func:`coupling_tensor`), so each channel is one formula.
``tests/nep/test_nep_descriptor.py`` checks the contraction against the complex-harmonic
definition, and ``tests/nep/test_nep_higher_body.py`` checks every channel against GPUMD's
own output and calorine's C++ implementation.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np

import torch
from torch import nn

from mlip_plugins.descriptors.harmonics import real_spherical_harmonics
from mlip_plugins.graph import AtomicGraph
from mlip_plugins.nn import chebyshev_basis

#: GPUMD's higher-body channels, in the order of their descriptor blocks (after the 3-body
#: blocks) and of their flags on the ``l_max`` line (entries 2..7).
HIGHER_BODY_CHANNELS = ("q222", "q1111", "q112", "q123", "q233", "q134")
#: what the flags of the ``l_max`` line switch on, per GPUMD version: today's GPUMD (and
#: calorine), and the GPUMD that made TorchNEP's May-2026 goldens (commit 90ad63d), in which the
#: fifth entry meant the quartic q_1122 (GPUMD has since put q_123 there). A nep.txt does not
#: say which it was written for; "gpumd" is assumed unless the caller says otherwise.
L_MAX_CONVENTIONS = {"gpumd": HIGHER_BODY_CHANNELS, "gpumd-2026-05": ("q222", "q1111", "q112", "q1122")}
#: the degrees (l1, l2, l3) of the moments each cubic channel contracts
CUBIC_CHANNELS = {"q222": (2, 2, 2), "q112": (1, 1, 2), "q123": (1, 2, 3), "q233": (2, 3, 3), "q134": (1, 3, 4)}
#: q_n1111 = Q1111 |A_n1|^4: GPUMD's 21 / (80 pi^2) |s_1|^4 with s_1 = sqrt(4 pi / 3) A_1
Q1111 = 7.0 / 15.0


def _pair(value, name: str) -> tuple:
    """(radial, angular) from a scalar or a two-element sequence."""
    if isinstance(value, (int, float)):
        return value, value
    values = list(value)
    if len(values) != 2:
        raise ValueError(f"{name}: expected one value or [radial, angular], got {value!r}")
    return values[0], values[1]


def _degree_needed(name: str) -> int:
    """The highest moment degree a higher-body channel uses."""
    return max(CUBIC_CHANNELS[name]) if name in CUBIC_CHANNELS else {"q1111": 1, "q1122": 2}[name]


def _convention(convention: str) -> tuple[str, ...]:
    if convention not in L_MAX_CONVENTIONS:
        raise ValueError(f"l_max_convention: expected one of {sorted(L_MAX_CONVENTIONS)}, got {convention!r}")
    return L_MAX_CONVENTIONS[convention]


def parse_l_max(l_max, convention: str = "gpumd") -> tuple[int, tuple[str, ...]]:
    """(l_max^3b, enabled higher-body channels in descriptor order) from ``4`` or a GPUMD
    ``l_max`` line ``[L, q222, q1111, q112, q123, q233, q134]`` (1 to 7 entries; missing ones
    are 0; the q222 entry may be 2, as older GPUMD versions write it, or 1); ``convention``
    names what the flags mean (:data:`L_MAX_CONVENTIONS`)."""
    names = _convention(convention)
    if isinstance(l_max, int):
        return int(l_max), ()
    values = [int(v) for v in l_max]
    if not 1 <= len(values) <= 1 + len(names):
        raise ValueError(f"l_max: expected [L, {', '.join(names)}] (1 to {1 + len(names)} values), got {l_max!r}")
    values += [0] * (1 + len(names) - len(values))
    if values[1] not in (0, 1, 2):
        raise ValueError(f"l_max: the 4-body (q222) entry must be 0, 1 or 2, got {values[1]}")
    for name, flag in zip(names[1:], values[2:]):
        if flag not in (0, 1):
            raise ValueError(f"l_max: the {name} entry must be 0 or 1, got {flag}")
    channels = tuple(name for name, flag in zip(names, values[1:]) if flag)
    for name in channels:
        top = _degree_needed(name)
        if name not in ("q222", "q1111") and values[0] < top:
            raise ValueError(f"l_max: {name} needs the 3-body degree L >= {top}, got L = {values[0]}")
    return values[0], channels


def l_max_entries(l_max: int, channels: Sequence[str], convention: str = "gpumd") -> list[int]:
    """GPUMD's ``l_max`` line for a descriptor: ``[L, 0|2, 0|1]`` (the form every GPUMD version
    reads), extended by the flags of the further channels up to the last enabled one."""
    flags = [(2 if name == "q222" else 1) if name in channels else 0 for name in _convention(convention)]
    while len(flags) > 2 and flags[-1] == 0:
        flags.pop()
    return [int(l_max)] + flags


def _complex_from_real(l: int) -> np.ndarray:
    """U[m + l, a] with Y_lm = sum_a U[m + l, a] R_a: the complex harmonics (Condon-Shortley
    phase, as in the Wigner-3j coupling) in terms of this package's real ones (column a = l + m'
    of :func:`real_spherical_harmonics`, no Condon-Shortley phase)."""
    u = np.zeros((2 * l + 1, 2 * l + 1), dtype=complex)
    u[l, l] = 1.0
    for m in range(1, l + 1):
        cos_m, sin_m = l + m, l - m
        u[l + m, cos_m], u[l + m, sin_m] = (-1) ** m / math.sqrt(2.0), 1j * (-1) ** m / math.sqrt(2.0)
        u[l - m, cos_m], u[l - m, sin_m] = 1.0 / math.sqrt(2.0), -1j / math.sqrt(2.0)
    return u


@functools.lru_cache(maxsize=None)
def coupling_tensor(l1: int, l2: int, l3: int) -> np.ndarray:
    """T[a, b, c] with sum_abc T A_l1,a A_l2,b A_l3,c = sum (l1 l2 l3; m1 m2 m3) A_l1m1 A_l2m2 A_l3m3
    for real moments A (this package's real harmonics) and their complex counterparts; real
    because l1 + l2 + l3 is even for every channel. [2 l1 + 1, 2 l2 + 1, 2 l3 + 1], float64."""
    from sympy.physics.wigner import wigner_3j

    if (l1 + l2 + l3) % 2:
        raise ValueError(f"coupling_tensor: l1 + l2 + l3 must be even, got ({l1}, {l2}, {l3})")
    w = np.zeros((2 * l1 + 1, 2 * l2 + 1, 2 * l3 + 1))
    for m1 in range(-l1, l1 + 1):
        for m2 in range(-l2, l2 + 1):
            m3 = -m1 - m2
            if abs(m3) <= l3:
                w[m1 + l1, m2 + l2, m3 + l3] = float(wigner_3j(l1, l2, l3, m1, m2, m3))
    tensor = np.einsum("ijk,ia,jb,kc->abc", w, _complex_from_real(l1), _complex_from_real(l2), _complex_from_real(l3))
    if np.abs(tensor.imag).max() > 1e-12:
        raise AssertionError(f"coupling_tensor({l1}, {l2}, {l3}) is not real")
    return np.ascontiguousarray(tensor.real)


def _degree(moments: torch.Tensor, l: int) -> torch.Tensor:
    """The degree-l moments [N, n+1, 2l+1] of moments [N, n+1, (L+1)^2 - 1] (degrees 1..L, real
    harmonics' column order without l = 0)."""
    return moments[..., l * l - 1 : (l + 1) * (l + 1) - 1]


def _coupling(degrees: tuple[int, int, int], like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(coupling_tensor(*degrees), dtype=like.dtype, device=like.device)


def cubic_invariant(moments: torch.Tensor, degrees: tuple[int, int, int]) -> torch.Tensor:
    """q_{l1 l2 l3} per atom and n (the Wigner-3j contraction): [N, n+1]."""
    l1, l2, l3 = degrees
    a, b, c = _degree(moments, l1), _degree(moments, l2), _degree(moments, l3)
    d1, d2, d3 = 2 * l1 + 1, 2 * l2 + 1, 2 * l3 + 1
    # sum_a a_a sum_b b_b (sum_c T_abc c_c) as two matrix products (a four-operand einsum
    # broadcasts to [N, n+1, d1, d2, d3] and was most of the training step's descriptor time)
    tc = (c @ _coupling(degrees, moments).reshape(d1 * d2, d3).T).view(*c.shape[:-1], d1, d2)
    return ((tc @ b.unsqueeze(-1)).squeeze(-1) * a).sum(-1)


def cubic_invariant_gradient(moments: torch.Tensor, degrees: tuple[int, int, int], weight: torch.Tensor) -> torch.Tensor:
    """d/dA of sum_n weight[:, n] q_{l1 l2 l3, n} (:func:`cubic_invariant`): [N, n+1, M], the
    three partial contractions T.(b, c), T.(a, c), T.(a, b) added into the degrees' columns."""
    l1, l2, l3 = degrees
    a, b, c = _degree(moments, l1), _degree(moments, l2), _degree(moments, l3)
    d1, d2, d3 = 2 * l1 + 1, 2 * l2 + 1, 2 * l3 + 1
    coupling = _coupling(degrees, moments).reshape(d1 * d2, d3)
    tc = (c @ coupling.T).view(*c.shape[:-1], d1, d2)  # sum_c T_abc c_c
    w = weight.unsqueeze(-1)
    grad = torch.zeros_like(moments)
    _degree(grad, l1).add_(w * (tc @ b.unsqueeze(-1)).squeeze(-1))
    _degree(grad, l2).add_(w * (a.unsqueeze(-2) @ tc).squeeze(-2))
    _degree(grad, l3).add_(w * ((a.unsqueeze(-1) * b.unsqueeze(-2)).reshape(*a.shape[:-1], d1 * d2) @ coupling))
    return grad


def q1122_invariant(moments: torch.Tensor) -> torch.Tensor:
    """The quartic q_1122 of the 2026-05 GPUMD convention: -sum_{L=0,2} (A_1 A_1)_L . (A_2 A_2)_L
    with (A_l A_l)_{L,M} = sum (l l L; m1 m2 M) A_lm1 A_lm2 (the L = 1 coupling of equal moments
    vanishes). Equals GPUMD's ten-term polynomial of its Cartesian moments (coefficients C5B2)
    and the golden's numbers (``tests/nep/test_nep_higher_body.py``). [N, n+1]"""
    a1, a2 = _degree(moments, 1), _degree(moments, 2)
    total = 0.0
    for big_l in (0, 2):
        first = torch.einsum("xna,xnb,abe->xne", a1, a1, _coupling((1, 1, big_l), moments))
        second = torch.einsum("xnc,xnd,cde->xne", a2, a2, _coupling((2, 2, big_l), moments))
        total = total - (first * second).sum(-1)
    return total


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
        l_max: ``l_3b`` or GPUMD's ``l_max`` line ``[l_3b, q222, q1111, q112, q123, q233, q134]``
            (3-body degree up to 8, then the flags of the higher-body channels; see
            :func:`parse_l_max`).
        typewise_cutoffs: optional ``[[rc_R, rc_A], ...]`` per element (model order); a pair
            of elements uses the mean of their cutoffs, as GPUMD does.
        init: c ~ 0.1 N(0,1) + U(-0.5, 0.5) (GNEP) when ``"gnep"``, else U(-init, init).
        seed: seed of the initial coefficients.
        l_max_convention: what the ``l_max`` flags mean (:data:`L_MAX_CONVENTIONS`; "gpumd" is
            today's GPUMD, "gpumd-2026-05" reads the fifth entry as q_1122).
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
        l_max_convention: str = "gpumd",
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
        self.l_max_convention = str(l_max_convention)
        self.l_max, self.channels = parse_l_max(l_max, self.l_max_convention)
        if not 0 <= self.l_max <= 8:
            raise ValueError(f"l_max: the 3-body degree must be 0..8, got {self.l_max}")
        self.num_species = int(num_species)
        self.num_angular_blocks = self.l_max + len(self.channels)
        # highest degree of the moments: the 3-body degree, or what a higher-body channel needs
        self.moment_degree = max([self.l_max] + [_degree_needed(name) for name in self.channels])
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
        """Angular features [N, (n_max^A + 1) * blocks]: l = 1..l_max, then the higher-body channels."""
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
        angular = real_spherical_harmonics(unit, self.moment_degree)[:, 1:]  # [Ea, M], degrees 1..moment_degree
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
        return self.invariants(moments)

    def invariants(self, moments: torch.Tensor) -> torch.Tensor:
        """The angular features [N, (n_max^A + 1) * blocks] of the moments A [N, n_max^A + 1, M]
        (degrees 1..moment_degree): the 3-body blocks, then the higher-body ones."""
        blocks = [self.three_body_invariants(moments)] if self.l_max > 0 else []
        if self.channels:
            blocks.append(self.higher_body_invariants(moments))
        return torch.cat(blocks, dim=1)

    def three_body_invariants(self, moments: torch.Tensor) -> torch.Tensor:
        """q_nl = sum_m A_nlm^2 for l = 1..l_max: [N, (n_max^A + 1) l_max], blocks of n per l."""
        squares = moments[..., : self.l_max * (self.l_max + 2)] ** 2
        return torch.cat([squares[..., l * l - 1 : (l + 1) * (l + 1) - 1].sum(-1) for l in range(1, self.l_max + 1)], dim=1)

    def higher_body_gradient(self, moments: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """d/dA of sum weight * :meth:`higher_body_invariants` (weight [N, (n_max^A + 1) channels]):
        closed forms for the cubic channels and q_1111, autograd on the moments for q_1122."""
        grad = torch.zeros_like(moments)
        for block, name in zip(weight.split(self.n_max_angular + 1, dim=1), self.channels):
            if name == "q1111":  # Q |A_1|^4: 4 Q |A_1|^2 A_1
                square = (moments[..., 0:3] ** 2).sum(-1, keepdim=True)
                grad[..., 0:3] += (4.0 * Q1111) * (block.unsqueeze(-1) * square) * moments[..., 0:3]
            elif name == "q1122":
                with torch.enable_grad():
                    leaf = moments.detach().requires_grad_(True)
                    grad += torch.autograd.grad(q1122_invariant(leaf), leaf, block)[0]
            else:
                grad += cubic_invariant_gradient(moments, CUBIC_CHANNELS[name], block)
        return grad

    def higher_body_invariants(self, moments: torch.Tensor) -> torch.Tensor:
        """The enabled higher-body channels, one block of n each: [N, (n_max^A + 1) len(channels)]."""
        blocks = []
        for name in self.channels:
            if name == "q1111":
                square = (moments[..., 0:3] ** 2).sum(-1)
                blocks.append(Q1111 * square * square)
            elif name == "q1122":
                blocks.append(q1122_invariant(moments))
            else:
                blocks.append(cubic_invariant(moments, CUBIC_CHANNELS[name]))
        return torch.cat(blocks, dim=1)

    @property
    def has_q222(self) -> bool:
        return "q222" in self.channels

    @property
    def has_q1111(self) -> bool:
        return "q1111" in self.channels

    def forward(self, graph: AtomicGraph) -> torch.Tensor:
        return torch.cat([self.radial(graph), self.angular(graph)], dim=1)

    def config(self) -> dict:
        """The constructor arguments that rebuild this descriptor's architecture."""
        return {
            "cutoff": [self.rc_radial, self.rc_angular],
            "n_max": [self.n_max_radial, self.n_max_angular],
            "basis_size": [self.basis_size_radial, self.basis_size_angular],
            "l_max": l_max_entries(self.l_max, self.channels, self.l_max_convention),
            "typewise_cutoffs": self.typewise_cutoffs,
        } | ({} if self.l_max_convention == "gpumd" else {"l_max_convention": self.l_max_convention})

    def extra_repr(self) -> str:
        return (
            f"cutoff=({self.rc_radial}, {self.rc_angular}), n_max=({self.n_max_radial}, {self.n_max_angular}), "
            f"basis_size=({self.basis_size_radial}, {self.basis_size_angular}), l_max={self.l_max}, "
            f"channels={list(self.channels)}, dim={self.dim}"
        )
