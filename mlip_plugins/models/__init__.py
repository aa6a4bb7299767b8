"""Models: readouts, terms and their composition, and the ``Potential`` that adds forces and stress."""

from mlip_plugins.models.builder import build_energy_model, build_potential
from mlip_plugins.models.potential import Potential

__all__ = ["Potential", "build_energy_model", "build_potential"]
