"""GPUMD's tensorial NEP (TNEP): dipole (``model_type 1``) and polarizability (``model_type 2``).

A TNEP is a NEP whose per-atom network output U_i is not an energy but a scalar whose
derivatives with respect to the edge vectors r_e (e = i -> j, r_e = r_j - r_i, U_i depending on
the edges centred on i) give a vector or a rank-2 tensor per structure (Xu et al., JCTC 2024;
GPUMD ``nep4_dipole`` / ``nep4_polarizability`` files, evaluated as calorine's CPUNEP does):

* dipole: mu = - sum_e |r_e|^2 dU_i/dr_e (e Å, what the model was trained on);
* polarizability: two networks on the same descriptor, the first a "virial" part and the second
  an isotropic part: alpha = - sum_e r_e (x) dU_i/dr_e + (sum_i U'_i) 1.

The file stores the first network (per type w0, b0, w1, then b1) and, for a polarizability,
the second one the same way, before the descriptor coefficients. The biases enter U as in a
potential (U = sum w1 tanh(w0 q - b0) - b1). No E0, energy scale or ZBL applies.

Per structure the model returns :data:`~mlip_plugins.keys.DIPOLE` [B, 3] or
:data:`~mlip_plugins.keys.POLARIZABILITY` [B, 3, 3] and a zero energy (with a graph, so that a
Potential's forces are zeros); labels ``dipole`` / ``pol`` in GPUMD's train.xyz train them.
"""

from __future__ import annotations

import torch

from mlip_plugins.graph import AtomicGraph
from mlip_plugins.nn import sum_per_atom, sum_per_structure

#: GPUMD's model types: 0 potential, 1 dipole, 2 polarizability (nep.in ``model_type``)
MODEL_TYPES = {0: "potential", 1: "dipole", 2: "polarizability"}


def tensor_property(graph: AtomicGraph, scalar: torch.Tensor, isotropic: torch.Tensor | None,
                    model_type: int, create_graph: bool) -> torch.Tensor | None:
    """The dipole [B, 3] (model_type 1) or polarizability [B, 3, 3] (model_type 2) from the
    per-atom outputs ``scalar`` (and ``isotropic`` for a polarizability); None when the edge
    vectors carry no gradient (positions not differentiable)."""
    if not graph.edge_vec.requires_grad:
        return None
    (grad,) = torch.autograd.grad(scalar.sum(), graph.edge_vec, create_graph=create_graph, retain_graph=True,
                                  allow_unused=True)
    r = graph.edge_vec
    if grad is None:
        grad = torch.zeros_like(r)
    dst, n = graph.edge_index[1], graph.num_atoms
    if model_type == 1:
        atom = sum_per_atom(-(r * r).sum(-1, keepdim=True) * grad, dst, n)  # [N, 3]
        return sum_per_structure(atom, graph.batch, graph.num_graphs)
    virial = -(r.unsqueeze(-1) * grad.unsqueeze(-2)).reshape(-1, 9)
    eye = torch.eye(3, dtype=r.dtype, device=r.device).reshape(1, 9)
    atom = sum_per_atom(virial, dst, n) + isotropic.unsqueeze(-1) * eye
    return sum_per_structure(atom, graph.batch, graph.num_graphs).view(-1, 3, 3)
