"""Energy, forces and stress of a GPUMD potential NEP with the chain rule written out (inference).

The training path differentiates the energy with autograd through the whole force graph
(positions -> edge vectors -> descriptor -> network). For evaluation (ASE, MD) that graph is
mostly overhead: GPUMD's NEP, like the C++ code calorine wraps, needs for each pair p of atoms
(a, b) only the derivative of the energy with respect to the pair vector r_p = x_b - x_a (+ cell
shift). This module computes those g_p = dE/dr_p by hand:

* network: dU_i/dq~ = ((1 - tanh^2(w0 q~ - b0)) w1) w0 per atom, dE/dq = energy_scale * s * dU/dq~
  (s the fixed ``q_scaler``);
* radial: q_n(i) = sum_j sum_k c[t_i, t_j, n, k] f_k(r_ij), so
  dE/dr_p = sum_k (W[a, t_b, k] + W[b, t_a, k]) f'_k(r_p) with W[i, t, k] = sum_n dE/dq_n(i) c[t_i, t, n, k]
  (both atoms of a pair see the same distance: the half neighbour list is used once per pair);
* angular: q = invariants of the moments A[i, n, m] = sum_j g_n(r_ij) Y_m(u_ij); dE/dA in closed
  form (2 A for the 3-body blocks, the partial contractions of each cubic channel), then per
  directed edge (i, j) dE/dg_n = sum_m dE/dA[i, n, m] Y_m, dE/df_k = sum_n dE/dg_n c[t_i, t_j, n, k]
  and dE/dY_m = sum_n dE/dA[i, n, m] g_n, with the harmonics' gradient from the polynomials
  they are (:func:`harmonics_with_gradient`);
* ZBL: autograd of the per-pair repulsion with respect to the distances of the close pairs.

Forces are F_a += g_p, F_b -= g_p; the stress (ASE's sign, as the autograd path's dE/d(strain)
divided by the volume) is sum_p r_p (x) g_p / V. Parity with the autograd path and with
calorine's CPUNEP is tested in ``tests/nep/test_nep_analytic.py`` (and every calculator parity
test in ``tests/nep`` runs through this path).

Used by :class:`mlip_plugins.calculator.MLIPCalculator` for a ``Potential`` whose energy model is
a potential :class:`~mlip_plugins.nep.model.NEPModel` (no charges, not a dipole or
polarizability model); anything else keeps the autograd path. Training uses it too
(:func:`batch_energy_forces_virial`: every operation is differentiable in the parameters); the
position-only terms (pairs, radial sums, angular bases and harmonics: :class:`Geometry`) are
split from the parameter-dependent ones so that the full-batch refinement, whose positions
never change, computes them once per batch (:func:`reuse_geometry`).
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import functools
import math
from collections.abc import Iterator

import numpy as np
import torch

from vesin import NeighborList

from mlip_plugins.data.structures import check_neighbor_count
from mlip_plugins.descriptors.harmonics import _normalisation
from mlip_plugins.graph import AtomicGraph, build_atomic_graph
from mlip_plugins.nep.descriptor import neighbor_slots
from mlip_plugins.nep.model import NEPModel
from mlip_plugins.nn import sum_per_structure


def chebyshev_basis_and_slope(r: torch.Tensor, cutoff: torch.Tensor, basis_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """NEP's radial basis f_k(r) and its derivative f'_k(r) (the forms of
    :func:`mlip_plugins.nn.chebyshev_basis`), each [K + 1, E]: one row per k, so that every
    step is a contiguous pass over the pairs (for 10^4-10^5 pairs ~1.5x faster than columns)."""
    inside = r < cutoff
    zero = torch.zeros_like(r)
    r_in = torch.where(inside, r, zero)
    a = math.pi / cutoff
    half_fc = torch.where(inside, 0.25 * (1.0 + torch.cos(a * r_in)), zero)  # f_c / 2
    half_dfc = torch.where(inside, -0.25 * a * torch.sin(a * r_in), zero)
    u = r_in / cutoff - 1.0
    x = 2.0 * u * u - 1.0  # T_k(x), T'_k(x): T_{k+1} = 2 x T_k - T_{k-1}, T'_{k+1} = 2 T_k + 2 x T'_k - T'_{k-1}
    t, dt = [torch.ones_like(x), x], [zero, torch.ones_like(x)]
    for k in range(1, basis_size):
        t.append(2.0 * x * t[k] - t[k - 1])
        dt.append(2.0 * t[k] + 2.0 * x * dt[k] - dt[k - 1])
    t1 = torch.stack(t[: basis_size + 1]).add_(1.0)  # T_k + 1
    slope = torch.stack(dt[: basis_size + 1]).mul_(4.0 * u / cutoff * half_fc).addcmul_(t1, half_dfc)
    return t1.mul_(half_fc), slope


@functools.lru_cache(maxsize=None)
def _harmonic_tables(l_max: int):
    """Constant tables of :func:`harmonics_with_gradient` for degrees 1..l_max (M columns, the
    column order of :func:`real_spherical_harmonics` without l = 0):

    * ``poly`` [l_max + 1, M]: norm * pbar_l^|m|(z) as coefficients of z^0..z^l_max, from the
      recurrence pbar_l^m = ((2l - 1) z pbar_(l-1)^m - (l + m - 1) pbar_(l-2)^m) / (l - m),
      pbar_m^m = (2m - 1)!! (no Condon-Shortley phase), and ``dpoly`` its z-derivative;
    * which of the azimuthal factors [cos_0..cos_L, sin_0..sin_L] (Re, Im (x + i y)^k) each
      column multiplies, and which factor, times which constant, are its x and y derivatives
      (d/dx (x + i y)^k = k (x + i y)^(k-1), d/dy = i k (x + i y)^(k-1))."""
    pbar = {}
    for m in range(l_max + 1):
        pbar[m, m] = np.zeros(l_max + 1)
        pbar[m, m][0] = float(math.prod(range(2 * m - 1, 0, -2)))
        for l in range(m + 1, l_max + 1):
            previous = pbar[l - 2, m] if l - 2 >= m else np.zeros(l_max + 1)
            pbar[l, m] = ((2 * l - 1) * np.roll(pbar[l - 1, m], 1) - (l + m - 1) * previous) / (l - m)
    poly, factor, dx, dy = [], [], [], []
    sine = l_max + 1  # the sin_k factors follow the cos_k ones
    for l in range(1, l_max + 1):
        for m in range(-l, l + 1):
            k = abs(m)
            poly.append(_normalisation(l, k) * pbar[l, k])
            if m >= 0:  # cos_k: d/dx = k cos_(k-1), d/dy = -k sin_(k-1)
                factor.append(k)
                dx.append((max(k - 1, 0), float(k)))
                dy.append((sine + max(k - 1, 0), -float(k)))
            else:  # sin_k: d/dx = k sin_(k-1), d/dy = k cos_(k-1)
                factor.append(sine + k)
                dx.append((sine + k - 1, float(k)))
                dy.append((k - 1, float(k)))
    poly = np.array(poly).T  # [l_max + 1, M]
    dpoly = np.zeros_like(poly)
    dpoly[:-1] = poly[1:] * np.arange(1, l_max + 1)[:, None]
    return poly, dpoly, factor, dx, dy


def harmonics_with_gradient(unit: torch.Tensor, l_max: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The real harmonics of degrees 1..l_max of :func:`real_spherical_harmonics` (its columns
    1..) at unit vectors u [E, 3], and the gradients of the polynomials they are evaluated as:
    [E, M] and [E, 3, M].

    The harmonics are polynomials P_m(x, y, z) = norm * pbar_l^|m|(z) * Re|Im (x + i y)^|m|
    (:func:`_harmonic_tables`); d Y_m(r / |r|) / d r = (1 - u u^T) grad P_m(u) / |r| (the caller
    projects what it contracts). A dozen whole-array operations whatever l_max, as the
    per-call cost of a small structure is the number of operations."""
    poly, dpoly, factor, dx, dy = _harmonic_tables(int(l_max))
    like = dict(dtype=unit.dtype, device=unit.device)
    x, y, z = unit[:, 0], unit[:, 1], unit[:, 2]
    cos_m, sin_m = [torch.ones_like(x)], [torch.zeros_like(x)]
    for _ in range(l_max):
        cos_m.append(x * cos_m[-1] - y * sin_m[-1])
        sin_m.append(x * sin_m[-1] + y * cos_m[-2])
    azimuthal = torch.stack(cos_m + sin_m, dim=-1)  # [E, 2 (l_max + 1)]
    powers = torch.stack([torch.ones_like(z)] + [z] * l_max, dim=-1).cumprod(-1)  # z^0..z^l_max
    p = powers @ torch.as_tensor(poly, **like)  # [E, M]
    dp = powers @ torch.as_tensor(dpoly, **like)
    index = lambda pairs: torch.as_tensor([i for i, _ in pairs], device=unit.device)  # noqa: E731
    scale = lambda pairs: torch.as_tensor([c for _, c in pairs], **like)  # noqa: E731
    a = azimuthal[:, torch.as_tensor(factor, device=unit.device)]
    values = p * a
    grad = torch.stack([p * azimuthal[:, index(dx)] * scale(dx), p * azimuthal[:, index(dy)] * scale(dy), dp * a], dim=1)
    return values, grad


def half_neighbor_list(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float):
    """Each pair within ``cutoff`` once (vesin's half list): atoms a [P], b [P] and the vectors
    r_p = x_b - x_a + shift @ cell [P, 3] (a periodic image of an atom itself is one pair)."""
    box = cell if pbc.any() else np.zeros((3, 3))
    calculator = NeighborList(cutoff=float(cutoff), full_list=False)
    first, second, vectors = calculator.compute(points=positions, box=box, periodic=pbc.tolist(), quantities="ijD")
    return np.asarray(first, dtype=np.int64), np.asarray(second, dtype=np.int64), np.asarray(vectors, dtype=np.float64).reshape(-1, 3)


def supports(potential) -> bool:
    """Whether :class:`AnalyticNEP` evaluates ``potential`` (a plain potential NEP)."""
    model = getattr(potential, "energy_model", None)
    return isinstance(model, NEPModel) and not model.charge_mode and not model.model_type


class AnalyticNEP:
    """Energy, per-atom energies, forces and stress of a NEP ``Potential`` from one structure.

    Holds no state between calls besides the potential (the neighbour list is rebuilt each
    call, as calorine's CPUNEP does). Results are tensors in the potential's dtype.
    """

    def __init__(self, potential):
        if not supports(potential):
            raise ValueError("AnalyticNEP: the potential's energy model is not a potential NEP (see analytic.supports)")
        self.potential = potential
        self.model: NEPModel = potential.energy_model
        self.cutoff = float(self.model.cutoff)

    def __call__(self, atoms, compute_stress: bool = False, where: str = "structure") -> dict[str, torch.Tensor]:
        pairs = self.pairs(atoms, where)
        with torch.no_grad():
            atomic, grad = self.energy_and_pair_gradient(pairs)
        out = {"energy": atomic.sum().view(1), "atomic_energies": atomic, "forces": pair_forces(pairs, grad)}
        if compute_stress:
            volume = abs(float(np.linalg.det(atoms.cell.array)))
            virial = pairs.vectors @ grad.T
            out["stress"] = (virial / volume if volume > 1e-12 else torch.zeros_like(virial)).view(1, 3, 3)
        return out

    def pairs(self, atoms, where: str = "structure") -> "Pairs":
        """The pairs of ``atoms`` within the model's cutoff (vesin's half list), as tensors in the
        potential's dtype and device; ``where`` names the structure in a too-many-neighbours error."""
        positions = np.asarray(atoms.get_positions(), dtype=np.float64)
        pbc = np.asarray(atoms.pbc, dtype=bool)
        cell = atoms.cell.array.copy() if pbc.any() else np.zeros((3, 3))
        check_neighbor_count(positions, cell, pbc, self.cutoff, where)
        first, second, vectors = half_neighbor_list(positions, cell, pbc, self.cutoff)
        dtype, device = self.potential.e0.dtype, self.potential.e0.device
        numbers = torch.as_tensor(atoms.numbers, dtype=torch.long, device=device)
        return Pairs(torch.as_tensor(first, device=device), torch.as_tensor(second, device=device),
                     torch.as_tensor(vectors.T, dtype=dtype, device=device), numbers, self.potential.element_map(numbers),
                     self.model.num_species)

    def energy_and_pair_gradient(self, pairs: "Pairs", geometry: "Geometry | None" = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-atom energies [N] (with E0 and the energy scale) and g_p = dE/dr_p as [3, P].

        ``geometry``: the pairs' position-only terms (:class:`Geometry`), when the caller keeps
        them from an earlier call with the same positions; computed here otherwise."""
        model, descriptor = self.model, self.model.descriptor
        geometry = Geometry(descriptor, pairs) if geometry is None else geometry
        s, n_atoms = pairs.num_species, pairs.species.shape[0]
        dtype = pairs.vectors.dtype
        slope = geometry.radial_slope
        coef_r = _coefficient_matrix(descriptor.c_radial)  # [S (K+1), S (nR+1)]
        q_radial = _own_block(geometry.radial_sums @ coef_r, pairs.species, s)
        angular = _AngularTerms(descriptor, geometry.angular, pairs) if geometry.angular is not None else None
        q = torch.cat([q_radial, angular.features], dim=1) if angular is not None else q_radial
        scaler = model.q_scaler.to(dtype)
        energy, dq = _network_with_gradient(model, q * scaler, pairs.species)
        scale = self.potential.energy_scale.to(dtype)
        energy, dq = energy * scale, dq * (scaler * scale)
        # radial chain rule: W[i, t, k] = sum_n dE/dq_n(i) c[t_i, t, n, k]
        weights = (_in_own_block(dq[:, : descriptor.radial_dim], pairs.species, s) @ coef_r.T).view(n_atoms * s, -1)
        d_r = ((weights.index_select(0, pairs.first_row) + weights.index_select(0, pairs.second_row)) * slope.T).sum(-1)
        if angular is not None:
            d_r = d_r + angular.distance_gradient(dq[:, descriptor.radial_dim :])
        if model.zbl is not None:
            zbl_energy, zbl_d_r = _zbl_with_gradient(model, pairs)
            energy = energy + zbl_energy * scale
            d_r = d_r + zbl_d_r * scale
        grad = (d_r / pairs.r) * pairs.vectors
        if angular is not None:
            grad.index_add_(1, geometry.angular.keep, angular.direction_gradient())
        return self.potential.with_reference_energies(energy, pairs.species), grad


def pair_forces(pairs: "Pairs", grad: torch.Tensor) -> torch.Tensor:
    """Forces [N, 3] from g_p = dE/dr_p [3, P]: F_a += g_p, F_b -= g_p (differentiable)."""
    forces = grad.new_zeros(3, pairs.species.shape[0])
    forces = forces.index_add(1, pairs.first, grad).index_add(1, pairs.second, -grad)  # (alpha=-1 is ~10x slower)
    return forces.T.contiguous()


def _coefficient_matrix(c: torch.Tensor) -> torch.Tensor:
    """NEP's coefficients c[centre s, neighbour t, n, k] as one matrix [(t, k), (s, n)]: a row of
    per-(atom, neighbour element) basis sums times it gives every centre element's g_n, of which
    :func:`_own_block` keeps the atom's own (one dense product instead of one per atom)."""
    s, t, n, k = c.shape
    return c.permute(1, 3, 0, 2).reshape(t * k, s * n)


def _own_block(x: torch.Tensor, species: torch.Tensor, num_species: int) -> torch.Tensor:
    """x [N, ..., S n] -> [N, ..., n]: the block of each atom's own element (``x`` itself for
    one element: no gather, and no scatter in its backward pass)."""
    if num_species == 1:
        return x
    blocks = x.view(*x.shape[:-1], num_species, -1)
    picked = blocks.movedim(-2, 1)[torch.arange(x.shape[0], device=x.device), species]
    return picked


def _in_own_block(x: torch.Tensor, species: torch.Tensor, num_species: int) -> torch.Tensor:
    """x [N, ..., n] -> [N, ..., S n], zero outside each atom's own element's block (the
    transpose of :func:`_own_block`; ``x`` itself for one element)."""
    if num_species == 1:
        return x
    out = x.new_zeros(x.shape[0], num_species, *x.shape[1:])
    out[torch.arange(x.shape[0], device=x.device), species] = x
    return out.movedim(1, -2).reshape(*x.shape[:-1], -1)


class Pairs:
    """The unordered pairs (a, b) of a half neighbour list: r_p = x_b - x_a + shift as [3, P]
    (rows x, y, z), their lengths, and the row indices (atom * S + partner's element) of each end
    into per-(atom, element) tables."""

    def __init__(self, first: torch.Tensor, second: torch.Tensor, vectors: torch.Tensor, atomic_numbers: torch.Tensor,
                 species: torch.Tensor, num_species: int):
        self.first, self.second, self.vectors = first.long(), second.long(), vectors.contiguous()
        self.atomic_numbers, self.species = atomic_numbers, species
        self.num_species = int(num_species)
        self.r = torch.sqrt((self.vectors * self.vectors).sum(0))
        ta, tb = species[self.first], species[self.second]
        self.first_species, self.second_species = ta, tb
        self.pair_type = ta * self.num_species + tb  # symmetric cutoff tables: either order
        self.first_row = self.first * self.num_species + tb
        self.second_row = self.second * self.num_species + ta


class Geometry:
    """The position-only terms of a NEP evaluation of some :class:`Pairs`: the radial basis
    sums F[i, (t, k)] = sum_{j of element t} f_k(r_ij) (each pair feeding both atoms) and the
    basis slopes, and the angular terms' (:class:`_AngularGeometry`). They depend on the
    positions and the descriptor's fixed settings (basis sizes, cutoffs, degrees), not on the
    parameters: a loop over the same structures with changing parameters only (the full-batch
    refinement) computes them once (:func:`reuse_geometry`), about a third of a Mo closure."""

    def __init__(self, descriptor, pairs: Pairs):
        n_atoms, dtype = pairs.species.shape[0], pairs.vectors.dtype
        rc = descriptor.pair_cutoff_radial.to(dtype)[pairs.pair_type]
        basis, self.radial_slope = chebyshev_basis_and_slope(pairs.r, rc, descriptor.basis_size_radial)  # [K+1, P]
        sums = basis.new_zeros(basis.shape[0], n_atoms * pairs.num_species)
        sums.index_add_(1, pairs.first_row, basis).index_add_(1, pairs.second_row, basis)
        self.radial_sums = sums.T.reshape(n_atoms, -1)  # [N, S (K+1)]
        self.angular = _AngularGeometry(descriptor, pairs) if descriptor.num_angular_blocks else None


class _AngularGeometry:
    """The position-only part of :class:`_AngularTerms`.

    Directed edges are the pairs within the angular cutoff taken both ways (centre a with
    neighbour b and vector r_p, then centre b with a and -r_p); the harmonics are evaluated
    once per pair, Y_lm(-u) = (-1)^l Y_lm(u). Per atom, the edges sit in padded neighbour slots:
    f[i, w, (t, k)] (the basis in the block of the neighbour's element t) and y[i, w, m]."""

    def __init__(self, descriptor, pairs: Pairs):
        s, n_atoms = pairs.num_species, pairs.species.shape[0]
        dtype = pairs.vectors.dtype
        rc = descriptor.pair_cutoff_angular.to(dtype)[pairs.pair_type]
        self.keep = keep = (pairs.r < rc).nonzero().view(-1)
        self.r = r = pairs.r[keep]
        basis, self.slope = chebyshev_basis_and_slope(r, rc[keep], descriptor.basis_size_angular)  # [K+1, Pa]
        self.unit = (pairs.vectors[:, keep] / r).T  # [Pa, 3] (columns contiguous)
        y, self.y_grad = harmonics_with_gradient(self.unit, descriptor.moment_degree)  # [Pa, M], [Pa, 3, M]
        degrees = [l for l in range(1, descriptor.moment_degree + 1) for _ in range(2 * l + 1)]
        self.parity = torch.tensor([(-1.0) ** l for l in degrees], dtype=dtype, device=y.device)  # Y_lm(-u) = (-1)^l Y_lm(u)
        center = torch.cat([pairs.first[keep], pairs.second[keep]])
        self.center, self.neighbor = center, torch.cat([pairs.second_species[keep], pairs.first_species[keep]])
        self.slot, width = neighbor_slots(center, n_atoms)
        self.k1 = basis.shape[0]
        f_pad = basis.new_zeros(n_atoms, width, s, self.k1).index_put((center, self.slot, self.neighbor), torch.cat([basis.T, basis.T]))
        self.f_pad = f_pad.view(n_atoms, width, -1)  # [N, W, S (K+1)]
        self.y_pad = y.new_zeros(n_atoms, width, y.shape[1]).index_put((center, self.slot), torch.cat([y, y * self.parity]))


class _AngularTerms:
    """The angular features of every atom and, once dE/dq is known, their pair gradients.

    On the padded neighbour slots of :class:`_AngularGeometry`: g[i, w, n] = f c[t_i] (one
    dense product, :func:`_coefficient_matrix`), so that the moments A[i] = g[i]^T y[i] and
    their chain rule are batched matrix products."""

    def __init__(self, descriptor, geometry: _AngularGeometry, pairs: Pairs):
        self.descriptor, self.pairs, self.geometry = descriptor, pairs, geometry
        self.coefficients = _coefficient_matrix(descriptor.c_angular)  # [S (K+1), S (nA+1)]
        self.g_pad = _own_block(geometry.f_pad @ self.coefficients, pairs.species, pairs.num_species)  # [N, W, nA+1]
        self.moments = torch.matmul(self.g_pad.transpose(1, 2), geometry.y_pad)  # [N, nA+1, M]
        blocks = [descriptor.three_body_invariants(self.moments)] if descriptor.l_max > 0 else []
        if descriptor.channels:
            blocks.append(descriptor.higher_body_invariants(self.moments))
        self.features = torch.cat(blocks, dim=1)

    def _moment_gradient(self, dq: torch.Tensor) -> torch.Tensor:
        """dE/dA [N, nA+1, M] from dE/dq of the angular features: 2 A dE/dq_nl for the 3-body
        blocks, :meth:`NEPDescriptor.higher_body_gradient` for the higher-body channels."""
        descriptor, moments = self.descriptor, self.moments
        n1, l_max = descriptor.n_max_angular + 1, descriptor.l_max
        grad = torch.zeros_like(moments)
        if l_max > 0:
            per_degree = dq[:, : n1 * l_max].view(-1, l_max, n1).transpose(1, 2)  # [N, nA+1, l_max]
            columns = torch.tensor([l - 1 for l in range(1, l_max + 1) for _ in range(2 * l + 1)], device=dq.device)
            width = l_max * (l_max + 2)
            grad[..., :width] = 2.0 * moments[..., :width] * per_degree[..., columns]
        if descriptor.channels:
            grad += descriptor.higher_body_gradient(moments, dq[:, n1 * l_max :])
        return grad

    def distance_gradient(self, dq: torch.Tensor) -> torch.Tensor:
        """dE/dr_p [P] through the angular radial functions, given dq = dE/dq of the angular
        features [N, (n_max^A + 1) blocks]; keeps dE/dY for :meth:`direction_gradient`."""
        d_moments = self._moment_gradient(dq)  # [N, nA+1, M]
        s, geo = self.pairs.num_species, self.geometry
        d_g = torch.bmm(geo.y_pad, d_moments.transpose(1, 2))  # [N, W, nA+1]
        d_f = _in_own_block(d_g, self.pairs.species, s) @ self.coefficients.T  # [N, W, S (K+1)]
        d_f = d_f.view(*d_f.shape[:2], s, geo.k1)[geo.center, geo.slot, geo.neighbor]  # [Ea, K+1]
        d_y = torch.bmm(self.g_pad, d_moments)[geo.center, geo.slot]  # [Ea, M]
        half = geo.keep.shape[0]
        self.d_unit = d_y[:half] + d_y[half:] * geo.parity
        d_r = ((d_f[:half] + d_f[half:]) * geo.slope.T).sum(-1)
        return self.pairs.r.new_zeros(self.pairs.r.shape[0]).index_add_(0, geo.keep, d_r)

    def direction_gradient(self) -> torch.Tensor:
        """dE/dr_p [3, Pa] (of the pairs ``geometry.keep``) through the harmonics' directions."""
        geo = self.geometry
        d_poly = (geo.y_grad * self.d_unit.unsqueeze(1)).sum(-1)  # [Pa, 3]
        d_vec = (d_poly - (d_poly * geo.unit).sum(-1, keepdim=True) * geo.unit) / geo.r.unsqueeze(-1)
        return d_vec.T


def _network_with_gradient(model: NEPModel, q: torch.Tensor, species: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """U_i = sum_mu w1 tanh(w0 q~ - b0) - b1 and dU_i/dq~ [N, D], one dense product per element."""
    networks = 1 if model.version == 3 else model.num_species
    energy = q.new_empty(q.shape[0])
    grad = torch.empty_like(q)
    for s in range(networks):
        index = None if networks == 1 else (species == s).nonzero().view(-1)
        rows = q if index is None else q.index_select(0, index)
        hidden = torch.tanh(rows @ model.w0[s].T - model.b0[s])
        e = hidden @ model.w1[s]
        g = ((1.0 - hidden * hidden) * model.w1[s]) @ model.w0[s]
        if index is None:
            energy, grad = e, g
        else:
            energy.index_copy_(0, index, e)
            grad.index_copy_(0, index, g)
    return energy - model.b1, grad


def _zbl_with_gradient(model: NEPModel, pairs: Pairs) -> tuple[torch.Tensor, torch.Tensor]:
    """The ZBL term's per-atom energies [N] and dE/dr_p [P] (autograd on the close pairs only)."""
    close = (pairs.r < model.zbl.cutoff).nonzero().view(-1)
    r = pairs.r[close].detach().requires_grad_(True)
    a, b = pairs.first[close], pairs.second[close]
    with torch.enable_grad():
        graph = _pair_graph(pairs, a, b, r)
        energy = model.zbl(graph)
        (d_r,) = torch.autograd.grad(energy.sum(), r) if close.numel() else (r.new_zeros(0),)
    return energy.detach(), pairs.r.new_zeros(pairs.r.shape[0]).index_add_(0, close, d_r)


def _pair_graph(pairs: Pairs, a: torch.Tensor, b: torch.Tensor, r: torch.Tensor) -> AtomicGraph:
    """The directed edges (both ways) of some pairs as the AtomicGraph that ZBLRepulsion reads."""
    n = pairs.species.shape[0]
    empty = r.new_zeros(0, 3)
    return AtomicGraph(
        pos=r.new_zeros(n, 3), z=pairs.atomic_numbers, species=pairs.species,
        edge_index=torch.stack([torch.cat([b, a]), torch.cat([a, b])]), edge_vec=empty, edge_len=torch.cat([r, r]),
        cell=r.new_zeros(1, 3, 3), pbc=torch.zeros(1, 3, dtype=torch.bool), batch=torch.zeros(n, dtype=torch.long),
        num_graphs=1, shifts=empty, total_charge=r.new_zeros(1),
    )


# --- training: a batch of structures from the datamodule's full neighbour list -------------


def supports_training(potential) -> bool:
    """Whether ``Potential.forward`` trains ``potential`` through this chain rule: a plain
    potential NEP (:func:`supports`) whose ``analytic_forces`` switch is on (the default; set
    it False to train through autograd's force graph instead, e.g. to check one against the
    other)."""
    return bool(getattr(potential, "analytic_forces", True)) and supports(potential)


def one_way_edges(edge_index: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Indices of one edge of each pair of a full (directed, symmetric) edge list: of
    (i <- j, shift S) and (j <- i, -S), the one with i < j, or for a periodic image of an atom
    itself (i = j) the one whose shift is lexicographically positive.

    A mask over the edges (no new neighbour search). Raises ``ValueError`` if the list is not
    symmetric (an edge without its reverse), where halving it would silently drop pairs."""
    src, dst = edge_index[0], edge_index[1]
    s0, s1, s2 = shifts[:, 0], shifts[:, 1], shifts[:, 2]
    positive_shift = (s0 > 0) | ((s0 == 0) & ((s1 > 0) | ((s1 == 0) & (s2 > 0))))
    keep = ((dst < src) | ((dst == src) & positive_shift)).nonzero().view(-1)
    if 2 * keep.shape[0] != src.shape[0]:
        raise ValueError("analytic.one_way_edges: the edge list is not a full (symmetric) neighbour list")
    return keep


def half_graph(data, species: torch.Tensor, pos: torch.Tensor) -> AtomicGraph:
    """The :class:`AtomicGraph` of a PyG ``Data``/``Batch`` with one edge per pair
    (:func:`one_way_edges`): the edge vectors are computed for half of the edges only."""
    keep = one_way_edges(data.edge_index, data.shifts)
    half = copy.copy(data)  # shallow: the other fields are shared
    half.edge_index, half.shifts = data.edge_index[:, keep], data.shifts[keep]
    return build_atomic_graph(half, species, pos=pos)


def graph_pairs(graph: AtomicGraph, cutoff: float, num_species: int) -> Pairs:
    """The :class:`Pairs` within ``cutoff`` of a graph with one edge per pair (:func:`half_graph`):
    the edge vector x_src - x_dst + shift is r_p with a = dst, b = src."""
    src, dst = graph.edge_index[0], graph.edge_index[1]
    inside = graph.edge_len < cutoff
    if bool(inside.all()):
        return Pairs(dst, src, graph.edge_vec.T, graph.z, graph.species, num_species)
    keep = inside.nonzero().view(-1)
    return Pairs(dst[keep], src[keep], graph.edge_vec[keep].T, graph.z, graph.species, num_species)


def batch_energy_forces_virial(potential, data, species: torch.Tensor, pos: torch.Tensor, compute_virial: bool = False):
    """Energies [B], per-atom energies [N] (with E0 and the energy scale), forces [N, 3] and, if asked, the
    virial sum_p r_p (x) dE/dr_p of each structure [B, 3, 3] (the stress times the volume) of a
    batch, each a differentiable function of the parameters: a force loss needs one ordinary
    backward instead of autograd's double backward through the force graph.

    ``data`` is the batch (PyG, with the datamodule's full neighbour list), ``species`` its
    element indices and ``pos`` its positions in the potential's dtype; they need no gradient
    (second derivatives with respect to positions are not this path's)."""
    graph, pairs, geometry = _batch_geometry(potential.energy_model, data, species, pos)
    atomic, grad = AnalyticNEP(potential).energy_and_pair_gradient(pairs, geometry)
    forces = pair_forces(pairs, grad)
    energy = sum_per_structure(atomic, graph.batch, graph.num_graphs)
    if not compute_virial:
        return energy, atomic, forces, None
    outer = pairs.vectors.T.unsqueeze(2) * grad.T.unsqueeze(1)  # [P, 3, 3]: r_p,a g_p,b
    structure = graph.batch[pairs.first]
    virial = outer.new_zeros(graph.num_graphs, 9).index_add(0, structure, outer.reshape(-1, 9))
    return energy, atomic, forces, virial.view(-1, 3, 3)


#: the cache of :func:`reuse_geometry` while a block runs (None: nothing is reused)
_GEOMETRY_CACHE: contextvars.ContextVar["_GeometryCache | None"] = contextvars.ContextVar("nep_geometry_cache", default=None)


class _GeometryCache:
    """Position-only terms per batch, keyed by the batch's position tensor (its identity, its
    in-place version counter and the dtype they were computed in), up to ``max_atoms`` atoms."""

    def __init__(self, max_atoms: int):
        self.max_atoms, self.atoms = int(max_atoms), 0
        self.entries: dict[tuple, tuple] = {}

    def get(self, model: NEPModel, data, species: torch.Tensor, pos: torch.Tensor) -> tuple:
        key = (id(model), id(data.pos), pos.dtype)
        entry = self.entries.get(key)
        if entry is not None and entry[0] is data.pos and entry[1] == data.pos._version:
            return entry[2]
        terms = _geometry_of(model, data, species, pos)
        if entry is None:  # a new batch: kept while the bound allows
            if self.atoms + int(pos.shape[0]) > self.max_atoms:
                return terms
            self.atoms += int(pos.shape[0])
        # (a batch moved in place replaces its entry: its atoms are counted once)
        self.entries[key] = (data.pos, data.pos._version, terms)  # holds data.pos: its id stays unique
        return terms


@contextlib.contextmanager
def reuse_geometry(max_atoms: int = 200_000) -> Iterator[None]:
    """Inside the block, :func:`batch_energy_forces_virial` computes the position-only terms of
    a batch (its half graph, :class:`Pairs` and :class:`Geometry`) once and reuses them whenever
    the same batch comes again with unchanged positions: for a loop over fixed batches in which
    only the parameters change (the full-batch refinement, ``lightning_modules/refine.py``).
    Batches are kept up to ``max_atoms`` atoms in all (their memory grows with atoms x angular
    neighbours x harmonics); later ones are computed each time. Nothing is kept after the block."""
    token = _GEOMETRY_CACHE.set(_GeometryCache(max_atoms))
    try:
        yield
    finally:
        _GEOMETRY_CACHE.reset(token)


def _geometry_of(model: NEPModel, data, species: torch.Tensor, pos: torch.Tensor) -> tuple:
    graph = half_graph(data, species, pos)
    pairs = graph_pairs(graph, float(model.cutoff), model.num_species)
    return graph, pairs, Geometry(model.descriptor, pairs)


def _batch_geometry(model: NEPModel, data, species: torch.Tensor, pos: torch.Tensor) -> tuple:
    """(half graph, pairs, geometry) of a batch: from :func:`reuse_geometry`'s cache inside one."""
    cache = _GEOMETRY_CACHE.get()
    return _geometry_of(model, data, species, pos) if cache is None else cache.get(model, data, species, pos)
