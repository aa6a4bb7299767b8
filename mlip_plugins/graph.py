"""The model-side view of a batch: positions under a virtual strain, edge vectors, species.

Every plugin (descriptor, router, long-range solver, charge model) receives an
:class:`AtomicGraph`. It is built once per forward pass by :func:`build_atomic_graph` from a
PyG batch that follows the data contract of ``docs/architecture.md``. Edge vectors are recomputed here
from ``pos`` and a per-structure strain ``eps`` (zero-valued, but part of the autograd graph),
so that

* forces  = -dE/dpos,
* stress  = (1/V) dE/d(eps)   (ASE's sign convention, correct for triclinic cells),

both come out of one ``torch.autograd.grad`` call in :mod:`mlip_plugins.models.potential`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mlip_plugins.nn import sum_per_structure


@dataclass
class AtomicGraph:
    """Inputs every plugin may use. Shapes: N atoms, E edges, B structures.

    Attributes:
        pos: [N, 3] Cartesian positions after the virtual strain (differentiable).
        z: [N] atomic numbers.
        species: [N] index of each atom's element in the model's element list (0..S-1).
        edge_index: [2, E]; row 0 = neighbour j (source), row 1 = centre i (target).
        edge_vec: [E, 3] r_ij = pos[j] - pos[i] + shifts @ cell (differentiable).
        edge_len: [E] |r_ij|.
        cell: [B, 3, 3] lattice vectors as rows after the strain (zeros where not periodic).
        pbc: [B, 3] periodic directions.
        batch: [N] structure index of each atom.
        num_graphs: B.
        shifts: [E, 3] integer cell offsets of each edge.
        total_charge: [B] total charge of each structure (zeros if the data has none).
        charges: [N] reference charges from the data, or None.
    """

    pos: torch.Tensor
    z: torch.Tensor
    species: torch.Tensor
    edge_index: torch.Tensor
    edge_vec: torch.Tensor
    edge_len: torch.Tensor
    cell: torch.Tensor
    pbc: torch.Tensor
    batch: torch.Tensor
    num_graphs: int
    shifts: torch.Tensor
    total_charge: torch.Tensor
    charges: torch.Tensor | None = None

    @property
    def num_atoms(self) -> int:
        return int(self.pos.shape[0])

    def atoms_per_graph(self) -> torch.Tensor:
        """[B] number of atoms in each structure (as the dtype of ``pos``)."""
        return sum_per_structure(torch.ones_like(self.pos[:, 0]), self.batch, self.num_graphs)


def _batch_vector(data) -> torch.Tensor:
    batch = getattr(data, "batch", None)
    if batch is None:
        return torch.zeros(data.pos.shape[0], dtype=torch.long, device=data.pos.device)
    return batch


def _edge_offsets(shifts: torch.Tensor, cell: torch.Tensor, edge_graph: torch.Tensor, num_graphs: int) -> torch.Tensor:
    """shifts[e] @ cell[graph of e]: one [E_g, 3] x [3, 3] product per structure when the edges
    come grouped by structure (as PyG batches them), ~3x faster than a cell per edge."""
    if edge_graph.numel() == 0 or bool((edge_graph[1:] < edge_graph[:-1]).any()):
        return torch.einsum("ei,eij->ej", shifts, cell[edge_graph])
    counts = torch.bincount(edge_graph, minlength=num_graphs).tolist()
    return torch.cat([s @ c for s, c in zip(torch.split(shifts, counts), cell)])


def build_atomic_graph(
    data,
    species: torch.Tensor,
    strain: torch.Tensor | None = None,
    pos: torch.Tensor | None = None,
) -> AtomicGraph:
    """Build the :class:`AtomicGraph` of a PyG ``Data``/``Batch``.

    Args:
        data: a graph following the data contract (pos, z, cell, pbc, edge_index, shifts).
        species: [N] element index of each atom (see ``ElementMap``).
        strain: [B, 3, 3] symmetric displacement gradient applied to positions and cells;
            pass a zero tensor with ``requires_grad`` to obtain the stress.
        pos: positions to use instead of ``data.pos`` (a leaf with ``requires_grad`` for forces).
    """
    pos = data.pos if pos is None else pos
    batch = _batch_vector(data)
    num_graphs = int(data.num_graphs) if hasattr(data, "num_graphs") else 1
    cell = data.cell.view(-1, 3, 3).to(pos.dtype)
    if strain is not None:
        deformation = torch.eye(3, dtype=pos.dtype, device=pos.device) + strain
        pos = pos @ deformation[0] if num_graphs == 1 else torch.einsum("ni,nij->nj", pos, deformation[batch])
        cell = torch.bmm(cell, deformation)
    edge_index = data.edge_index
    shifts = data.shifts.to(pos.dtype)
    src, dst = edge_index[0], edge_index[1]
    if num_graphs == 1:  # one structure (MD, large cells): a plain matmul, ~3x faster than a cell per edge
        offsets = shifts @ cell[0]
    else:
        offsets = _edge_offsets(shifts, cell, batch[dst], num_graphs)
    edge_vec = pos[src] - pos[dst] + offsets
    # Norm with a safe gradient at zero length (self-images are never edges, but be safe).
    edge_len = torch.sqrt(torch.clamp((edge_vec * edge_vec).sum(-1), min=1e-30))
    total_charge = getattr(data, "total_charge", None)
    if total_charge is None:
        total_charge = torch.zeros(num_graphs, dtype=pos.dtype, device=pos.device)
    else:
        total_charge = total_charge.view(-1).to(pos.dtype)
    charges = getattr(data, "charges", None)
    return AtomicGraph(
        pos=pos,
        z=data.z,
        species=species,
        edge_index=edge_index,
        edge_vec=edge_vec,
        edge_len=edge_len,
        cell=cell,
        pbc=data.pbc.view(-1, 3),
        batch=batch,
        num_graphs=num_graphs,
        shifts=data.shifts,
        total_charge=total_charge,
        charges=None if charges is None else charges.to(pos.dtype),
    )
