"""The data contract: the name of every input, label, has-label flag and output, in one place.

A structure is a ``torch_geometric.data.Data`` whose fields are named here; a batch of them is
what every model, loss, metric, callback and the Fisher information read. Use these constants
instead of string literals, so that a reader can find every use of a quantity by its name.

Two kinds of energy travel through the code and must not be confused:

* :data:`ENERGY` is the **total energy of a structure** (eV): the label stored on a graph and
  the ``Potential``'s output ``[B]``.
* Inside the energy tree, nodes return a **per-atom learned energy** ``[N]`` in units of the
  training set's energy scale (see :class:`mlip_plugins.models.outputs.NodeOutput`); the
  ``Potential`` scales it, adds the per-element reference energies and the physical (unscaled)
  parts, and sums per structure.

Units are ASE's: eV, Å, elementary charge e; stress in eV/Å³ with ASE's sign (tensile positive).
"""

from __future__ import annotations

from enum import Enum

# -- inputs (per atom [N, ...] unless stated) ---------------------------------------------
POSITIONS = "pos"               #: [N, 3] Cartesian positions (Å)
ATOMIC_NUMBERS = "z"            #: [N] long
CELL = "cell"                   #: [B, 3, 3] lattice vectors as rows (zeros where not periodic)
PBC = "pbc"                     #: [B, 3] bool, periodic directions
EDGE_INDEX = "edge_index"       #: [2, E]; row 0 = neighbour j (source), row 1 = centre i (target)
SHIFTS = "shifts"               #: [E, 3] integer cell offsets: r_ij = pos[j] - pos[i] + shifts @ cell
BATCH = "batch"                 #: [N] structure index of every atom (PyG)
SOURCE = "source"               #: "file:frame" of a structure, for error messages

# -- labels (per structure [B] or per atom [N]) ----------------------------------------------
ENERGY = "energy"               #: [B] total energy (eV); also the Potential's output
FORCES = "forces"               #: [N, 3] eV/Å
STRESS = "stress"               #: [B, 3, 3] eV/Å³, ASE sign convention
CHARGES = "charges"             #: [N] partial charges (e)
TOTAL_CHARGE = "total_charge"   #: [B] total charge of the structure (e)
WEIGHT = "weight"               #: [B] per-structure loss weight
BEC = "bec"                     #: [N, 3, 3] Born effective charges (e; row = polarisation), GPUMD's ``bec:R:9``
DIPOLE = "dipole"               #: [B, 3] dipole of a structure (e Å), GPUMD's ``dipole`` (a TNEP's target and output)
POLARIZABILITY = "polarizability"  #: [B, 3, 3] polarizability of a structure, GPUMD's ``pol`` (TNEP)

#: the labels a model is trained on; each has a has-label flag (see :func:`has`)
TARGETS: tuple[str, ...] = (ENERGY, FORCES, STRESS, CHARGES, BEC, DIPOLE, POLARIZABILITY)


def has(label: str) -> str:
    """Name of the [B] bool flag that says a structure carries ``label`` (``has_energy``, ...).

    Missing labels are stored as zeros with the flag false, so structures with partial labels
    batch together and the residuals (:mod:`mlip_plugins.targets`) give them weight zero.
    """
    return f"has_{label}"


HAS_ENERGY = has(ENERGY)
HAS_FORCES = has(FORCES)
HAS_STRESS = has(STRESS)
HAS_BEC = has(BEC)

# -- outputs of the Potential (besides ENERGY, FORCES, STRESS, CHARGES) ---------------------
ATOMIC_ENERGIES = "atomic_energies"        #: [N] per-atom total energy (eV), sums to ENERGY

# -- outputs of energy-tree nodes (extras, merged upward by the rules below) ----------------
ATOMIC_ENERGY = "energy"                   #: [N] a node's learned per-atom energy (scaled by the Potential)
ATOMIC_ENERGY_UNSCALED = "atomic_energy_unscaled"  #: [N] physical per-atom energy in eV, added after scaling
AUX_LOSS = "aux_loss"                      #: scalar added to the training loss (e.g. MoE load balancing)
ELECTROSTATIC_ENERGY = "electrostatic_energy"  #: [N] ½ q φ (eV)
ENSEMBLE_ENERGY = "ensemble_energy"        #: [N] ionisation energy of the atomic-state ensemble (eV)
STATE_WEIGHTS = "state_weights"            #: [N, K] atomic-state weights (latent embedding)
CHARGE_STD = "charge_std"                  #: [N] spread of charges over a charge model's heads
BORN_EFFECTIVE_CHARGES = "born_effective_charges"  #: [N, 3, 3] Born effective charges (qNEP; row = polarisation)
DIPOLE_DEFINED = "dipole_defined"  #: [B] bool: where a model's DIPOLE output is defined (charge models: molecules only); absent: everywhere


class Merge(str, Enum):
    """How a combination (``sum``, ``product``, a composite plugin) merges two children's extras."""

    SUM = "sum"        #: add them (energies in eV, auxiliary losses)
    UNIQUE = "unique"  #: at most one child may produce it; two are an error naming both


#: declared merge rule of each node-output extra; keys not listed are ``Merge.UNIQUE``
MERGE_RULES: dict[str, Merge] = {
    ATOMIC_ENERGY_UNSCALED: Merge.SUM,
    AUX_LOSS: Merge.SUM,
    ELECTROSTATIC_ENERGY: Merge.SUM,
    ENSEMBLE_ENERGY: Merge.SUM,
    CHARGES: Merge.UNIQUE,
    STATE_WEIGHTS: Merge.UNIQUE,
    CHARGE_STD: Merge.UNIQUE,
    BORN_EFFECTIVE_CHARGES: Merge.UNIQUE,
}


def merge_rule(key: str) -> Merge:
    """The declared rule for ``key`` (``Merge.UNIQUE`` unless :data:`MERGE_RULES` says otherwise)."""
    return MERGE_RULES.get(key, Merge.UNIQUE)
