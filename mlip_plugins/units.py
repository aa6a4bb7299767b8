"""Physical constants in the project's units (ASE's: eV, Å, e), each defined once.

Every module that needs the Coulomb constant imports it from here, so that the long-range
solvers, the charge models, the synthetic ionic data and the NEP's ZBL term cannot drift
apart.

* :data:`COULOMB_CONSTANT` is e^2 / (4 pi eps0) in eV Å / e^2 from torch-pme
  (``torchpme.prefactors.eV_A`` = 14.399645478..., CODATA 2018). It is what the solvers pass to
  torch-pme, so the project's electrostatics and torch-pme's agree to the last digit.
* :data:`GPUMD_COULOMB_CONSTANT` = 14.399645 is the rounded value GPUMD's NEP hard-codes in its
  ZBL repulsion. The NEP model uses it so that its energies match GPUMD's (and calorine's) to
  ~1e-13; using the exact value there would shift ZBL energies by ~3e-8 relative and break that
  parity. Use it for nothing else.
"""

from __future__ import annotations

import torchpme

#: e^2 / (4 pi eps0) in eV Å / e^2 (14.399645478...), torch-pme's ``prefactors.eV_A``.
COULOMB_CONSTANT: float = float(torchpme.prefactors.eV_A)

#: The rounded e^2 / (4 pi eps0) GPUMD's NEP uses in its ZBL term (eV Å / e^2); for GPUMD parity only.
GPUMD_COULOMB_CONSTANT: float = 14.399645

__all__ = ["COULOMB_CONSTANT", "GPUMD_COULOMB_CONSTANT"]
