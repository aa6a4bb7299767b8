"""Direct Coulomb pair sum for non-periodic structures (molecules, clusters).

phi_i = k sum_{j != i} q_j / r_ij over all atoms of the structure, batched over padded
structures (dense, O(N²) per structure; large clusters are summed in row blocks). Periodic
structures are rejected with a clear error: use ``ewald``, ``pme`` or ``p3m``.
"""

from __future__ import annotations

from collections.abc import Mapping

from mlip_plugins.long_range.solver import LongRangeSolver
from mlip_plugins.units import COULOMB_CONSTANT


class DirectSolver(LongRangeSolver):
    """Bare pair sum; ``cutoff``/``smearing``/``accuracy`` are accepted (and ignored) for config symmetry."""

    method = "direct"
    needs_smearing = False
    conformance_skip = {"periodic": "the direct pair sum handles non-periodic structures only"}

    def __init__(self, cutoff: float | None = None, smearing: float | None = None, accuracy: float = 1e-5, prefactor: float = COULOMB_CONSTANT,
                 potential: Mapping | str | None = None):
        super().__init__(cutoff=cutoff, smearing=None, accuracy=accuracy, prefactor=prefactor, potential=potential)
