"""Parameters of the solvers for a target accuracy: quick rules, or tuned on a structure.

Two ways to choose (smearing, lr_wavelength | mesh_spacing, interpolation_nodes):

* :func:`mesh_spacing_rule` / the solvers' defaults: structure-independent rules from the
  real-space cutoff and ``accuracy`` (what a training config uses: fixed parameters for all
  structures).
* :func:`tune_parameters`: for one structure, torch-pme's error bounds (Kolafa-Perram real
  space; Ewald, Petersen PME, Deserno-Holm P3M k space) pick the candidates that reach
  ``accuracy``; among them the cheapest by a cost model (``timed=False``, deterministic) or
  the fastest measured by torch-pme's own grid-search tuners (``timed=True``). "Tune on the
  largest structure of a data set and reuse".

``accuracy`` has torch-pme's meaning: the estimated RMS error of the force on an atom in
Gaussian units (e²/Å²; multiply by 14.4 for eV/Å). For ionic solids with unit charges it is
close to the relative error of energies and forces.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
import torchpme
from torchpme.tuning.ewald import EwaldErrorBounds
from torchpme.tuning.p3m import P3MErrorBounds
from torchpme.tuning.pme import PMEErrorBounds

from mlip_plugins.data.neighbors import neighbor_list

METHODS = ("ewald", "pme", "p3m")


def mesh_spacing_rule(smearing: float, accuracy: float, interpolation_nodes: int, method: str) -> float:
    """Structure-independent ``mesh_spacing`` for a relative accuracy of the potentials.

    The k-space error of interpolation order n falls as (h/sigma)^n (measured slopes n +- 0.2),
    h the actual grid spacing. On rattled NaCl, CsCl, wurtzite and fluorite supercells
    (RMS potential error relative to the RMS potential, against a converged Ewald sum with
    the same smearing) the error stays below ``accuracy`` for h <= a_n sigma accuracy^(1/n).
    torch-pme rounds the mesh up to a power of two, so the actual spacing is at most half its
    ``mesh_spacing``: the rule returns 2 * 0.85 * a_n sigma accuracy^(1/n).
    """
    n = int(interpolation_nodes)
    table = _PME_FACTORS if method == "pme" else _P3M_FACTORS
    if n not in table:
        raise ValueError(f"{method}: interpolation_nodes must be one of {sorted(table)}, got {n}")
    return float(2.0 * 0.85 * table[n] * smearing * accuracy ** (1.0 / n))


# a_n = max (actual spacing / smearing) / accuracy^(1/n) (worst case over the crystals and cutoffs 5 and 8 Å)
_PME_FACTORS = {3: 1.67, 4: 2.14, 5: 1.81, 6: 1.55, 7: 1.63}
_P3M_FACTORS = {1: 0.73, 2: 2.03, 3: 2.90, 4: 3.02, 5: 2.82}


def default_cutoff(method: str, num_atoms: int, volume: float) -> float:
    """Real-space cutoff for one structure: 4.4 mean interatomic spacings (the torch-pme paper's
    choice), growing as N^(1/6) for Ewald to keep its O(N^1.5) balance."""
    spacing = (volume / max(num_atoms, 1)) ** (1.0 / 3.0)
    factor = 4.4 if method != "ewald" else max(4.4, 1.5 * num_atoms ** (1.0 / 6.0))
    return float(factor * spacing)


def _as_tensors(atoms, charges, dtype=torch.float64):
    positions = torch.tensor(np.asarray(atoms.get_positions()), dtype=dtype)
    cell = torch.tensor(np.asarray(atoms.cell.array), dtype=dtype)
    if charges is None:
        charges = atoms.get_initial_charges()
    q = torch.as_tensor(np.asarray(charges, dtype=np.float64), dtype=dtype).view(-1, 1)
    return positions, cell, q


def _estimate_smearing(q, cell, positions, cutoff: float, accuracy: float) -> float:
    from torchpme.tuning.tuner import TunerBase

    tuner = TunerBase(charges=q, cell=cell, positions=positions, cutoff=cutoff, calculator=torchpme.EwaldCalculator)
    return tuner.estimate_smearing(float(accuracy))


def tune_parameters(
    method: str,
    atoms,
    charges=None,
    cutoff: float | None = None,
    accuracy: float = 1e-5,
    timed: bool = False,
) -> dict:
    """Solver parameters reaching ``accuracy`` on one periodic structure (an ASE ``Atoms``).

    Returns a dict that builds the solver: ``{"name", "cutoff", "smearing", "lr_wavelength"}``
    for Ewald, ``{..., "mesh_spacing", "interpolation_nodes"}`` for PME/P3M. ``cutoff``
    defaults to :func:`default_cutoff`. With ``timed=True`` torch-pme's grid-search tuners
    time every candidate that meets the bound (slower, machine dependent); otherwise the
    cheapest candidate by a cost model is returned (deterministic).
    """
    if method not in METHODS:
        raise ValueError(f"tune_parameters: method must be one of {METHODS}, got {method!r}")
    if not all(atoms.pbc):
        raise ValueError("tune_parameters: needs a periodic structure (pbc all True)")
    positions, cell, q = _as_tensors(atoms, charges)
    volume = float(abs(torch.linalg.det(cell)))
    cutoff = default_cutoff(method, len(atoms), volume) if cutoff is None else float(cutoff)
    accuracy = float(accuracy)
    if timed:
        return _tune_timed(method, atoms, positions, cell, q, cutoff, accuracy)
    smearing = _estimate_smearing(q, cell, positions, cutoff, accuracy)
    lengths = torch.linalg.norm(cell, dim=1)
    n_atoms = len(atoms)
    if method == "ewald":
        bounds = EwaldErrorBounds(charges=q, cell=cell, positions=positions)
        lmin = float(lengths.min())
        for ns in range(1, 400):
            lr = lmin / ns
            if float(bounds(smearing=smearing, lr_wavelength=lr, cutoff=cutoff)) <= accuracy:
                return {"name": method, "cutoff": cutoff, "smearing": smearing, "lr_wavelength": lr}
        raise RuntimeError("tune_parameters: no Ewald k-space resolution reaches the accuracy")
    bounds_class, nodes = (PMEErrorBounds, range(3, 8)) if method == "pme" else (P3MErrorBounds, range(2, 6))
    bounds = bounds_class(charges=q, cell=cell, positions=positions)
    best, best_cost = None, math.inf
    lmin = float(lengths.min())
    for n in nodes:
        for ns in range(1, 12):
            spacing = 2 * lmin / (2**ns - 1)
            err = float(bounds(smearing=smearing, mesh_spacing=spacing, cutoff=cutoff, interpolation_nodes=n))
            if err > accuracy:
                continue
            mesh = float(torchpme.lib.get_ns_mesh(cell, spacing).prod())
            cost = mesh * math.log2(max(mesh, 2.0)) + 4.0 * n_atoms * n**3
            if cost < best_cost:
                best, best_cost = {"name": method, "cutoff": cutoff, "smearing": smearing, "mesh_spacing": spacing, "interpolation_nodes": n}, cost
            break  # finer meshes of this order only cost more
    if best is None:
        raise RuntimeError(f"tune_parameters: no {method} mesh up to 2^11 points per axis reaches accuracy {accuracy}")
    return best


def _tune_timed(method, atoms, positions, cell, q, cutoff, accuracy) -> dict:
    from torchpme.tuning import tune_ewald, tune_p3m, tune_pme

    edge_index, shifts = neighbor_list(atoms.get_positions(), atoms.cell.array, atoms.pbc, cutoff)
    ei = torch.from_numpy(edge_index)
    vec = positions[ei[0]] - positions[ei[1]] + torch.from_numpy(shifts).to(cell.dtype) @ cell
    pairs = torch.stack([ei[1], ei[0]], dim=1)
    tuner = {"ewald": tune_ewald, "pme": tune_pme, "p3m": tune_p3m}[method]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        smearing, params, _ = tuner(
            q, cell, positions, cutoff, neighbor_indices=pairs, neighbor_distances=vec.norm(dim=1),
            full_neighbor_list=True, accuracy=accuracy,
        )
    return {"name": method, "cutoff": cutoff, "smearing": float(smearing), **params}
