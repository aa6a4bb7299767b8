"""Particle-particle particle-mesh (torch-pme ``P3MCalculator``) as a long-range solver.

O(N log N) with the optimal (Hockney-Eastwood) influence function and smooth B-spline charge
assignment: smooth forces, the mesh method to use for dynamics.
"""

from __future__ import annotations

import torchpme

from mlip_plugins.long_range.pme import PMESolver


class P3MSolver(PMESolver):
    """P3M: as :class:`PMESolver`, with ``interpolation_nodes`` (charge-assignment order) 1..5."""

    method = "p3m"
    calculator_class = torchpme.P3MCalculator
    default_nodes = 4
