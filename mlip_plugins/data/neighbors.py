"""Neighbour lists from vesin: periodic, triclinic, mixed boundaries, cells smaller than the cutoff."""

from __future__ import annotations

import numpy as np
from vesin import NeighborList


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
