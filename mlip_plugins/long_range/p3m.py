"""Particle-particle particle-mesh (torch-pme ``P3MCalculator``) as a long-range solver.

O(N log N) with the optimal (Hockney-Eastwood) influence function and smooth B-spline charge
assignment: smooth forces, the mesh method to use for dynamics.

Triclinic cells: torch-pme 0.5.0 evaluates the charge-assignment factor
U²(k) = prod_a sinc(k_a h_a / 2)^(2n) with Cartesian components k_a and h_a = |a_a|/n_a, which is
right only for orthogonal cells; for others the argument of each factor must be the projection
k . a_a / n_a on the cell vector along which the assignment is separable. The Cartesian form
gives errors ~1e-4..1e-3 on fcc/hexagonal cells and blows up (U² -> 0) on coarse meshes. The
calculator used here swaps in a filter with the projected argument (identical for orthogonal
cells).
"""

from __future__ import annotations

import torch
import torchpme
from torchpme.lib.kspace_filter import P3MKSpaceFilter

from mlip_plugins.long_range.pme import PMESolver


class ProjectedP3MKSpaceFilter(P3MKSpaceFilter):
    """torch-pme's P3M filter (point-charge mode) with U²(k) evaluated at k . a_a / n_a."""

    def _compute_influence(self, kvectors: torch.Tensor) -> torch.Tensor:
        if self.mode != 0:
            return super()._compute_influence(kvectors)
        kh = torch.einsum("xyzc,ac->xyza", kvectors, self.cell) / self.ns_mesh.to(kvectors.dtype)
        u2 = self._charge_assignment(kh)
        masked = torch.where(u2 == 0, 1.0, u2)
        return torch.where(u2 == 0, 0.0, torch.reciprocal(masked))


class ProjectedP3MCalculator(torchpme.P3MCalculator):
    """``torchpme.P3MCalculator`` using :class:`ProjectedP3MKSpaceFilter`."""

    def __init__(self, potential, mesh_spacing: float, interpolation_nodes: int = 4, full_neighbor_list: bool = False):
        super().__init__(potential, mesh_spacing=mesh_spacing, interpolation_nodes=interpolation_nodes, full_neighbor_list=full_neighbor_list)
        old = self.kspace_filter
        self.kspace_filter = ProjectedP3MKSpaceFilter(
            cell=old.cell,
            ns_mesh=old.ns_mesh,
            interpolation_nodes=interpolation_nodes,
            kernel=self.potential,
            mode=0,
            differential_order=old.differential_order,
            fft_norm="backward",
            ifft_norm="forward",
        )


class P3MSolver(PMESolver):
    """P3M: as :class:`PMESolver`, with ``interpolation_nodes`` (charge-assignment order) 1..5."""

    method = "p3m"
    calculator_class = ProjectedP3MCalculator
    default_nodes = 4
