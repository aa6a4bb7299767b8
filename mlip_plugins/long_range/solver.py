"""Range-separated Coulomb sums on an ``AtomicGraph`` batch, with torch-pme as the k-space engine.

A batch may mix periodic and non-periodic structures of different sizes and cells. For each
structure the electrostatic potential phi_i = sum_j' q_j / r_ij (times the Coulomb constant;
the prime drops j = i in the home cell) is split as

* periodic (3D, or 2D slabs with a vacuum cell vector):
  phi_i = [real space]  sum over the graph's edges with r < cutoff of q_j erfc(r/(sqrt2 sigma))/r
        + [k space]     torch-pme Ewald / PME / P3M on the smooth erf(r/(sqrt2 sigma))/r part,
                        including its self, neutralising-background and slab terms;
* non-periodic: phi_i = the bare pair sum over all j != i of the structure (dense, batched).

The real-space part reuses the model's neighbour list (full list: every pair in both
directions, each edge contributes to its centre atom only), so it is one ``index_add`` over the
whole batch. The k-space part calls the public ``forward`` of the torch-pme calculator with an
empty neighbour list: several Ewald structures are batched with ``torch.vmap`` over padded
inputs (torch-pme's own batching); mesh methods loop over structures (each has its own mesh).

Everything is differentiable: positions and cells enter through ``graph.pos``, ``graph.edge_len``
and ``graph.cell``, which carry the virtual strain, so forces and stress come from autograd in
the ``Potential``; charges may be learned.

Conventions: ``potentials`` are the physical potential phi (volts = eV/e when charges are in e),
the energy is E = 1/2 sum_i q_i phi_i. torch-pme calculators return phi/2 (their "halved"
convention), hence the factors of 2 below.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torchpme
from torch import nn

from mlip_plugins.errors import MLIPError
from mlip_plugins.graph import AtomicGraph
from mlip_plugins.long_range.potentials import PairPotential
from mlip_plugins.nn import sum_per_atom, sum_per_structure
from mlip_plugins.units import COULOMB_CONSTANT


class LongRangeError(MLIPError, ValueError):
    """A structure cannot be handled by the chosen solver (the message names it)."""


def structure_slices(batch: torch.Tensor, num_graphs: int) -> list[tuple[int, int]]:
    """[(start, stop)] atom ranges of each structure; PyG batches store structures contiguously."""
    counts = torch.bincount(batch, minlength=num_graphs).tolist()
    if batch.numel() > 1 and bool((batch[1:] < batch[:-1]).any()):
        raise LongRangeError("atoms of a structure must be contiguous in the batch (as PyG batches them)")
    slices, start = [], 0
    for n in counts:
        slices.append((start, start + n))
        start += n
    return slices


def default_smearing(cutoff: float, accuracy: float) -> float:
    """sigma such that the real-space terms beyond ``cutoff`` are ~ accuracy: exp(-rc²/2sigma²) = accuracy."""
    return float(cutoff) / math.sqrt(-2.0 * math.log(accuracy))


class LongRangeSolver(nn.Module):
    """Base class: real-space part over the graph's edges, direct sums, k space by a subclass.

    Args:
        cutoff: real-space cutoff in Å; the graphs' neighbour list must contain every pair
            within it (the model builder passes the model cutoff). Not needed by ``direct``.
        smearing: Gaussian width sigma (Å) of the range separation; default from ``cutoff``
            and ``accuracy`` (:func:`default_smearing`).
        accuracy: target relative RMS error of the potentials, used for every parameter not
            given: smearing = cutoff / sqrt(-2 ln accuracy) (real-space terms beyond the cutoff
            ~ accuracy), Ewald ``lr_wavelength`` and PME/P3M ``mesh_spacing`` from rules
            calibrated on ionic crystals (:mod:`mlip_plugins.long_range.tuning`). For parameters
            tuned on a given structure use :func:`~mlip_plugins.long_range.tuning.tune_parameters`.
        prefactor: Coulomb constant; the default gives eV with charges in e and lengths in Å.
            Use 1.0 for Gaussian units (Madelung constants).
        potential: the pair potential to sum (:mod:`mlip_plugins.long_range.potentials`):
            Coulomb by default, or ``{name: inverse_power_law, exponent: p}``.
    """

    method: str = "base"
    needs_smearing: bool = True

    def __init__(
        self,
        cutoff: float | None = None,
        smearing: float | None = None,
        accuracy: float = 1e-5,
        prefactor: float = COULOMB_CONSTANT,
        potential: Mapping | str | None = None,
    ):
        super().__init__()
        self.pair_potential = PairPotential.from_config(potential, f"{self.method}.potential")
        if not 0.0 < float(accuracy) < 1.0:
            raise ValueError(f"{self.method}: accuracy must be in (0, 1), got {accuracy}")
        self.accuracy = float(accuracy)
        self.cutoff = None if cutoff is None else float(cutoff)
        self.prefactor = float(prefactor)
        if self.needs_smearing:
            if smearing is None:
                if self.cutoff is None:
                    raise ValueError(f"{self.method}: give a real-space 'cutoff' (Å) or a 'smearing'")
                smearing = default_smearing(self.cutoff, self.accuracy)
            if self.cutoff is None:
                raise ValueError(f"{self.method}: needs the real-space 'cutoff' (the neighbour-list cutoff)")
            if smearing <= 0:
                raise ValueError(f"{self.method}: smearing must be positive, got {smearing}")
            self.smearing = float(smearing)
        else:
            self.smearing = None
        self.potential = self.pair_potential.make(self.smearing, self.prefactor)
        self.calculator = self._make_calculator(self.potential)
        self._exclusion_potentials: dict[tuple[float, int], torchpme.Potential] = {}

    # --- to be provided by subclasses -------------------------------------------------------
    def _make_calculator(self, potential: torchpme.Potential) -> nn.Module | None:
        return None

    def parameters_dict(self) -> dict:
        """The solver's resolved parameters (what a config needs to rebuild it)."""
        return {"name": self.method, "cutoff": self.cutoff, "smearing": self.smearing, "prefactor": self.prefactor,
                "potential": self.pair_potential.config()}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.parameters_dict().items() if k != "name")

    # --- public API -------------------------------------------------------------------------
    def forward(self, graph: AtomicGraph, charges: torch.Tensor) -> dict[str, torch.Tensor]:
        """Potentials phi [N] (V) and energies E [B] = 1/2 sum_i q_i phi_i (eV) of a batch."""
        phi = self.potentials(graph, charges)
        per_atom = 0.5 * charges * phi
        if per_atom.dim() == 2:
            per_atom = per_atom.sum(-1)
        energy = sum_per_structure(per_atom, graph.batch, graph.num_graphs)
        return {"potentials": phi, "energy": energy}

    def potentials(
        self,
        graph: AtomicGraph,
        charges: torch.Tensor,
        exclusion_radius: float | Sequence[float | None] | None = None,
        exclusion_degree: int = 1,
    ) -> torch.Tensor:
        """phi for charges [N] or [N, C]; with ``exclusion_radius`` the near field is removed.

        With an exclusion radius r_ex (per channel if a list), the pair kernel becomes
        v_LR(r) s(r), s(r) = ((1 - cos(pi r / r_ex))/2)^degree for r < r_ex and 1 beyond
        (torch-pme's ``exclusion_radius``): the smooth potential of everything outside the
        local environment ("exterior potential features"). r_ex must not exceed the graph's
        neighbour-list cutoff.
        """
        squeeze = charges.dim() == 1
        q = charges.unsqueeze(-1) if squeeze else charges
        if q.shape[0] != graph.num_atoms:
            raise LongRangeError(f"{self.method}: {q.shape[0]} charges for {graph.num_atoms} atoms")
        q = q.to(graph.pos.dtype)
        channels = q.shape[1]
        radii = list(exclusion_radius) if isinstance(exclusion_radius, (list, tuple)) else [exclusion_radius] * channels
        if len(radii) != channels:
            raise LongRangeError(f"{self.method}: {len(radii)} exclusion radii for {channels} charge channels")
        slices = structure_slices(graph.batch, graph.num_graphs)
        pbc = graph.pbc.view(-1, 3)
        periodic = pbc.any(dim=1).tolist()
        phi = torch.zeros_like(q)
        if any(periodic):
            phi = phi + self._reciprocal(graph, q, slices, pbc)
        groups: dict[float | None, list[int]] = {}
        for c, radius in enumerate(radii):
            groups.setdefault(None if radius is None else float(radius), []).append(c)
        for radius, chans in groups.items():
            index = torch.tensor(chans, device=q.device)
            qc = q.index_select(1, index)
            part = torch.zeros_like(qc)
            if any(periodic):
                part = part + self._real_space(graph, qc, periodic, radius, exclusion_degree)
            if not all(periodic):
                part = part + self._direct(graph, qc, slices, periodic, radius, exclusion_degree)
            phi = phi.index_add(1, index, part)
        return phi.squeeze(-1) if squeeze else phi

    # --- pieces -----------------------------------------------------------------------------
    def _pair_potential(self, radius: float | None, degree: int) -> torchpme.Potential:
        if radius is None:
            return self.potential
        key = (radius, degree)
        if key not in self._exclusion_potentials:
            self._exclusion_potentials[key] = self.pair_potential.make(self.smearing, self.prefactor, radius, degree)
        return self._exclusion_potentials[key]

    def _real_space(self, graph: AtomicGraph, q: torch.Tensor, periodic: list[bool], radius, degree) -> torch.Tensor:
        """Short-range part over the neighbour list (periodic structures only)."""
        if self.smearing is None:
            raise LongRangeError(f"{self.method}: periodic structures need a solver with a smearing (ewald, pme, p3m)")
        potential = self._pair_potential(radius, degree)
        cutoff = self.cutoff
        src, dst, r = graph.edge_index[0], graph.edge_index[1], graph.edge_len
        keep = r < (cutoff if radius is None else radius)  # the exterior kernel is exactly v_LR beyond r_ex
        if not all(periodic):
            keep = keep & torch.tensor(periodic, device=q.device)[graph.batch][dst]
        if not bool(keep.all()):  # select only when needed (graphs built at the solver cutoff keep all)
            index = keep.nonzero().view(-1)
            src, dst, r = src.index_select(0, index), dst.index_select(0, index), r.index_select(0, index)
        kernel = potential.sr_from_dist(r).to(q.dtype)
        contributions = q.index_select(0, src) * kernel.unsqueeze(-1)
        return sum_per_atom(contributions, dst, q.shape[0])

    def _direct(self, graph: AtomicGraph, q: torch.Tensor, slices, periodic: list[bool], radius, degree) -> torch.Tensor:
        """Dense pair sums over all j != i within each non-periodic structure (padded, batched)."""
        potential = self._pair_potential(radius, degree)
        members = [b for b, p in enumerate(periodic) if not p]
        out = torch.zeros_like(q)
        sizes = [slices[b][1] - slices[b][0] for b in members]
        n_max = max(sizes)
        # keep padded blocks below ~32M pair entries; larger clusters are done one by one in row chunks
        chunk = max(1, int(3.2e7 // max(n_max * n_max, 1)))
        for start in range(0, len(members), chunk):
            group = members[start : start + chunk]
            if len(group) == 1 and n_max * n_max > 3.2e7:
                a, b = slices[group[0]]
                out = out.index_add(0, torch.arange(a, b, device=q.device), self._direct_large(graph.pos[a:b], q[a:b], potential, radius))
                continue
            out = out + self._direct_padded(graph, q, [slices[b] for b in group], potential, radius)
        return out

    def _kernel(self, potential: torchpme.Potential, r: torch.Tensor, radius) -> torch.Tensor:
        if radius is None:
            return potential.from_dist(r)
        base = potential.from_dist(r) if potential.smearing is None else potential.lr_from_dist(r)
        return base * (1.0 - potential.f_cutoff(r))

    def _direct_padded(self, graph: AtomicGraph, q: torch.Tensor, ranges, potential, radius) -> torch.Tensor:
        device = q.device
        n_max = max(b - a for a, b in ranges)
        atom_index = torch.cat([torch.arange(a, b, device=device) for a, b in ranges])
        row = torch.cat([torch.full((b - a,), k, device=device, dtype=torch.long) for k, (a, b) in enumerate(ranges)])
        col = torch.cat([torch.arange(b - a, device=device) for a, b in ranges])
        pos = graph.pos.new_zeros(len(ranges), n_max, 3).index_put((row, col), graph.pos.index_select(0, atom_index))
        qp = q.new_zeros(len(ranges), n_max, q.shape[1]).index_put((row, col), q.index_select(0, atom_index))
        valid = torch.zeros(len(ranges), n_max, dtype=torch.bool, device=device).index_put((row, col), torch.ones_like(row, dtype=torch.bool))
        pair = valid.unsqueeze(1) & valid.unsqueeze(2) & ~torch.eye(n_max, dtype=torch.bool, device=device)
        diff = pos.unsqueeze(1) - pos.unsqueeze(2)  # [G, i, j, 3]
        r2 = (diff * diff).sum(-1)
        r = torch.sqrt(torch.where(pair, r2, torch.ones_like(r2)))
        kernel = torch.where(pair, self._kernel(potential, r, radius).to(q.dtype), torch.zeros_like(r))
        phi = torch.einsum("gij,gjc->gic", kernel, qp)
        return torch.zeros_like(q).index_add(0, atom_index, phi[row, col])

    def _direct_large(self, pos: torch.Tensor, q: torch.Tensor, potential, radius, rows: int = 2048) -> torch.Tensor:
        n = pos.shape[0]
        parts = []
        for a in range(0, n, rows):
            b = min(n, a + rows)
            diff = pos.unsqueeze(0) - pos[a:b].unsqueeze(1)  # [rows, n, 3]
            r2 = (diff * diff).sum(-1)
            not_self = torch.ones_like(r2, dtype=torch.bool)
            idx = torch.arange(a, b, device=pos.device)
            not_self[idx - a, idx] = False
            r = torch.sqrt(torch.where(not_self, r2, torch.ones_like(r2)))
            kernel = torch.where(not_self, self._kernel(potential, r, radius).to(q.dtype), torch.zeros_like(r))
            parts.append(kernel @ q)
        return torch.cat(parts)

    def _reciprocal(self, graph: AtomicGraph, q: torch.Tensor, slices, pbc: torch.Tensor) -> torch.Tensor:
        """k-space + self + background (+ slab) terms of every periodic structure, as phi."""
        if self.calculator is None:
            bad = [b for b in range(graph.num_graphs) if bool(pbc[b].any())]
            raise LongRangeError(
                f"{self.method}: structure {bad[0]} of the batch is periodic (pbc={pbc[bad[0]].tolist()}); "
                "the direct solver handles only non-periodic structures, use ewald, pme or p3m"
            )
        out = torch.zeros_like(q)
        full, single = [], []
        for b, (a, e) in enumerate(slices):
            n_periodic = int(pbc[b].sum())
            if n_periodic == 0 or e == a:
                continue
            if n_periodic == 1:
                raise LongRangeError(f"{self.method}: structure {b} is periodic in one direction only (pbc={pbc[b].tolist()}); 1D periodicity is not supported")
            volume = float(torch.linalg.det(graph.cell[b].detach()).abs())
            if volume < 1e-8:
                raise LongRangeError(
                    f"{self.method}: structure {b} is periodic (pbc={pbc[b].tolist()}) but its cell has zero volume; "
                    "slabs need a cell vector spanning the vacuum direction"
                )
            (full if n_periodic == 3 else single).append(b)
        if len(full) > 1 and self._can_batch():
            out = out + self._reciprocal_batched(graph, q, [slices[b] for b in full])
        else:
            single = full + single
        for b in sorted(single):
            a, e = slices[b]
            periodic = None if bool(pbc[b].all()) else pbc[b].to(q.device)
            half = self.calculator(
                charges=q[a:e],
                cell=graph.cell[b],
                positions=graph.pos[a:e],
                neighbor_indices=torch.zeros(0, 2, dtype=torch.long, device=q.device),
                neighbor_distances=q.new_zeros(0),
                periodic=periodic,
                **self._kspace_kwargs(graph.cell[b]),
            )
            out = out.index_add(0, torch.arange(a, e, device=q.device), 2.0 * half)
        return out

    def _can_batch(self) -> bool:
        return False

    def _kspace_kwargs(self, cell: torch.Tensor) -> dict:
        """Extra arguments of the torch-pme calculator for one cell (k-vectors, checks)."""
        return {}

    def _reciprocal_batched(self, graph: AtomicGraph, q: torch.Tensor, ranges) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError
