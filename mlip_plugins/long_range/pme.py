"""Particle-mesh Ewald (torch-pme ``PMECalculator``, Lagrange interpolation) as a long-range solver.

O(N log N). Lagrange interpolation makes forces slightly non-smooth (use P3M for dynamics).
Structures of a batch are summed one by one (each cell has its own mesh).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torchpme
from torchpme.lib import get_ns_mesh

from mlip_plugins.long_range.solver import LongRangeError, LongRangeSolver
from mlip_plugins.units import COULOMB_CONSTANT

#: refuse meshes larger than this (points) instead of exhausting memory
MAX_MESH_POINTS = 2**25

#: mesh_spacing / smearing that reaches ``accuracy`` for a given interpolation order
#: (calibrated on the Madelung crystals of the tests; see :mod:`mlip_plugins.long_range.tuning`).
def default_mesh_spacing(smearing: float, accuracy: float, interpolation_nodes: int, method: str) -> float:
    from mlip_plugins.long_range.tuning import mesh_spacing_rule

    return mesh_spacing_rule(smearing, accuracy, interpolation_nodes, method)


class PMESolver(LongRangeSolver):
    """PME: real space over the graph's edges, k space on a mesh by torch-pme.

    Args:
        cutoff, smearing, accuracy, prefactor: see :class:`LongRangeSolver`.
        mesh_spacing: torch-pme's ``mesh_spacing`` (Å; the actual grid spacing is about half of
            it, a power-of-two mesh); default from ``smearing`` and ``accuracy``.
        interpolation_nodes: Lagrange interpolation nodes per axis, 3..7.
    """

    method = "pme"
    calculator_class = torchpme.PMECalculator
    default_nodes = 4
    # Conformance kit (mlip_plugins.testing): a mesh is not translation invariant, so the
    # symmetries hold only to the set accuracy. On the kit's 4-atom triclinic cell at accuracy
    # 1e-4, PME's Lagrange interpolation leaves ~1 % force changes under translation, P3M's
    # charge assignment up to ~0.95 %.
    conformance_config = {"accuracy": 1e-4}
    conformance_rtol = 1e-2

    def __init__(
        self,
        cutoff: float | None = None,
        smearing: float | None = None,
        mesh_spacing: float | None = None,
        interpolation_nodes: int | None = None,
        accuracy: float = 1e-5,
        prefactor: float = COULOMB_CONSTANT,
        potential: Mapping | str | None = None,
    ):
        self._mesh_spacing = mesh_spacing
        self.interpolation_nodes = int(self.default_nodes if interpolation_nodes is None else interpolation_nodes)
        super().__init__(cutoff=cutoff, smearing=smearing, accuracy=accuracy, prefactor=prefactor, potential=potential)

    def _make_calculator(self, potential: torchpme.Potential):
        if self._mesh_spacing is None:
            self._mesh_spacing = default_mesh_spacing(self.smearing, self.accuracy, self.interpolation_nodes, self.method)
        self.mesh_spacing = float(self._mesh_spacing)
        return self.calculator_class(
            potential, mesh_spacing=self.mesh_spacing, interpolation_nodes=self.interpolation_nodes, full_neighbor_list=True
        )

    def parameters_dict(self) -> dict:
        return {**super().parameters_dict(), "mesh_spacing": self.mesh_spacing, "interpolation_nodes": self.interpolation_nodes}

    def _kspace_kwargs(self, cell: torch.Tensor) -> dict:
        points = int(get_ns_mesh(cell.detach(), self.mesh_spacing).prod())
        if points > MAX_MESH_POINTS:
            raise LongRangeError(
                f"{self.method}: mesh_spacing {self.mesh_spacing:.4g} Å needs a mesh of {points} points for a cell with "
                f"lengths {torch.linalg.norm(cell.detach(), dim=1).tolist()} (limit {MAX_MESH_POINTS}); "
                "use a larger mesh_spacing, a lower accuracy or a larger smearing"
            )
        return {}
