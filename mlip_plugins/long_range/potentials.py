"""The pair potential a solver sums, chosen by config (torch-pme's potential/calculator split).

A solver (Ewald, PME, P3M, direct) is the *calculator*: it knows how to sum a pair kernel over
all periodic images or all pairs of a cluster. What it sums is the *potential*, a part it is
given: Coulomb's 1/r by default, or any inverse power 1/r^p (p = 6: London dispersion lattice
sums). Both come from torch-pme, which range-separates each of them (short-range part over the
neighbour list, long-range part in k space, self and background terms).

Config: ``solver: {name: ewald, potential: {name: inverse_power_law, exponent: 6}}``. The
accuracy rules that pick the smearing, k-space cutoff and mesh spacing
(:mod:`mlip_plugins.long_range.tuning`) are calibrated for Coulomb; give the parameters by hand
for other potentials where accuracy matters.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torchpme

from mlip_plugins.errors import MLIPError

#: the pair potentials a solver can sum, by config name
PAIR_POTENTIALS: dict[str, type] = {
    "coulomb": torchpme.CoulombPotential,
    "inverse_power_law": torchpme.InversePowerLawPotential,
}


class PotentialConfigError(MLIPError, ValueError):
    """A solver's ``potential`` config names an unknown potential or a bad option."""


@dataclass(frozen=True)
class PairPotential:
    """A pair potential by name with its options (``exponent`` for ``inverse_power_law``)."""

    name: str = "coulomb"
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: Mapping | str | None, where: str = "solver.potential") -> PairPotential:
        """``None`` (Coulomb), a name, or ``{name: ..., **options}``."""
        if config is None:
            return cls()
        spec = {"name": config} if isinstance(config, str) else dict(config)
        name = str(spec.pop("name", "coulomb"))
        if name not in PAIR_POTENTIALS:
            raise PotentialConfigError(f"{where}: unknown potential {name!r}; known: {', '.join(PAIR_POTENTIALS)}")
        if name == "inverse_power_law":
            exponent = spec.get("exponent")
            if not isinstance(exponent, int) or isinstance(exponent, bool) or exponent < 1:
                raise PotentialConfigError(f"{where}.exponent: inverse_power_law needs an integer exponent >= 1, got {exponent!r}")
        unknown = sorted(set(spec) - {"exponent"})
        if unknown:
            raise PotentialConfigError(f"{where}: unknown option(s) {', '.join(unknown)} of potential {name!r}")
        return cls(name, spec)

    def make(self, smearing: float | None, prefactor: float, exclusion_radius: float | None = None,
             exclusion_degree: int = 1) -> torchpme.Potential:
        """The torch-pme potential with the solver's smearing and prefactor (and a near-field exclusion)."""
        return PAIR_POTENTIALS[self.name](
            **self.options, smearing=smearing, exclusion_radius=exclusion_radius, exclusion_degree=exclusion_degree, prefactor=prefactor
        )

    def config(self) -> dict[str, Any]:
        """The config that rebuilds this potential."""
        return {"name": self.name, **self.options}
