"""Neighbour lists from vesin: periodic, triclinic, mixed boundaries, cells smaller than the cutoff.

:func:`neighbor_estimate` predicts the size of a list before it is allocated: a crafted tiny
periodic cell (one atom in a 0.05 Å cube) has ~10^5 images within 1.5 Å and ~10^6-10^7
within a model cutoff, which exhausts memory in the list itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from vesin import NeighborList


@dataclass(frozen=True)
class NeighborEstimate:
    """Predicted neighbours per atom within a cutoff, and what the prediction rests on."""

    per_atom: float
    density: float  #: atoms/Å³ (along non-periodic directions: over the atoms' extent, at least 2 cutoffs)
    min_height: float  #: smallest distance between lattice planes of the periodic directions (Å); inf if none


def neighbor_estimate(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float) -> NeighborEstimate:
    """Neighbours per atom within ``cutoff``, predicted in O(atoms) without building the list.

    The larger of two counts: density × cutoff-sphere volume (atoms spread over the cell), and
    an upper bound on an atom's own periodic images, prod_i (2 floor(cutoff / h_i) + 1) - 1 with
    h_i the spacing of the lattice planes (it catches cells thin in one direction, where the
    density is unremarkable but the images along the short vector are many). Along a
    non-periodic direction the atoms' extent (at least 2 cutoffs) stands in for the cell.
    """
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    periodic = np.asarray(cell, dtype=np.float64).reshape(3, 3)[np.asarray(pbc, dtype=bool).reshape(3)]
    cutoff = float(cutoff)
    measure, images, min_height = 1.0, 1.0, math.inf
    complement = np.eye(3)
    if len(periodic):
        gram = periodic @ periodic.T
        det = float(np.linalg.det(gram))
        if not (np.isfinite(det) and det > 0):  # degenerate cell: vesin reports it
            return NeighborEstimate(0.0, 0.0, 0.0)
        measure = math.sqrt(det)
        heights = 1.0 / np.sqrt(np.diag(np.linalg.inv(gram)))
        min_height = float(heights.min())
        images = float(np.prod(2.0 * np.floor(cutoff / heights) + 1.0))
        complement = np.linalg.svd(periodic)[2][len(periodic):]  # orthonormal, orthogonal to the lattice
    if len(complement):
        extent = np.ptp(positions @ complement.T, axis=0) if len(positions) else np.zeros(len(complement))
        measure *= float(np.prod(np.maximum(extent, 2.0 * cutoff)))
    density = len(positions) / measure
    per_atom = max(density * 4.0 / 3.0 * math.pi * cutoff**3, images - 1.0)
    return NeighborEstimate(per_atom, density, min_height)


def neighbor_list(
    positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float
) -> tuple[np.ndarray, np.ndarray]:
    """Full neighbour list within ``cutoff``.

    Returns:
        edge_index: [2, E] int64, row 0 = neighbour j (source), row 1 = centre i (target).
        shifts: [E, 3] int64 cell offsets such that r_ij = pos[j] - pos[i] + shifts @ cell.
    """
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    pbc = np.asarray(pbc, dtype=bool).reshape(3)
    box = np.asarray(cell, dtype=np.float64).reshape(3, 3)
    if not pbc.any():
        box = np.zeros((3, 3))
    calculator = NeighborList(cutoff=float(cutoff), full_list=True)
    i, j, shifts = calculator.compute(points=positions, box=box, periodic=pbc.tolist(), quantities="ijS")
    edge_index = np.stack([np.asarray(j, dtype=np.int64), np.asarray(i, dtype=np.int64)])
    return edge_index, np.asarray(shifts, dtype=np.int64).reshape(-1, 3)
