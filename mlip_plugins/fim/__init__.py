"""Fisher information analysis of potentials: Jacobians, spectra, sloppiness reports and plots.

``analyse(potential, graphs)`` is the entry point (see :mod:`mlip_plugins.fim.report`); the
``fisher`` callback, ``mlip-fim`` and ``mlip-design`` are built on it, and
:mod:`mlip_plugins.uncertainty` reuses the Jacobian for linearised error bars.
"""

from mlip_plugins.fim.fisher import FisherOperator, FisherWeights, Jacobian, compute_jacobian, float64_copy
from mlip_plugins.fim.lanczos import lanczos_topk
from mlip_plugins.fim.parameters import ParameterIndex
from mlip_plugins.fim.report import FisherReport, analyse

__all__ = [
    "FisherOperator", "FisherReport", "FisherWeights", "Jacobian", "ParameterIndex", "analyse", "compute_jacobian",
    "float64_copy", "lanczos_topk",
]
