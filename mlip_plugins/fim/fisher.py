"""Jacobians of weighted residuals and the Fisher information matrix I = Jᵀ W J.

The residuals of a probe set are the observables a least-squares loss compares with labels:
energies per atom, force components and the six independent stress components, each
multiplied by ``sqrt(w)`` (property weight x structure weight). With ``r = sqrt(W) (y(θ) - y_ref)``
and ``J = ∂r/∂θ`` the Fisher information of the least-squares model (unit noise) is
``I = JᵀJ`` (the Gauss-Newton Hessian of ``½ Σ r²``).

Forces are themselves gradients (the ``Potential`` calls ``torch.autograd.grad`` in its
forward pass), and ``torch.func`` transforms refuse that call, so the Jacobian is built with
plain autograd on the ``create_graph=True`` outputs:

* **rows** (reverse mode): one vector-Jacobian product per observable, ``Jᵀe_m``;
* **columns** (forward mode by the double-vjp trick): ``g(u) = Jᵀu`` is linear in ``u``, so
  ``J v = ∂(g(u)·v)/∂u``, one extra backward pass per parameter.

Whichever count is smaller is used, chunk by chunk (a chunk is a few structures, so every
backward pass only touches the graph it needs). :class:`FisherOperator` exposes the same
products without forming J, for the matrix-free Lanczos eigensolver.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch_geometric.data import Batch

from mlip_plugins import keys
from mlip_plugins.data.structures import chunk_graphs
from mlip_plugins.fim.parameters import ParameterIndex
from mlip_plugins.targets import label_flags, residuals

#: observable kinds (codes in ``Observables.kinds``)
KINDS = ("energy", "forces", "stress")
_VOIGT = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))


@dataclass
class FisherWeights:
    """Weights of the residuals (a property with weight 0 is left out).

    Attributes:
        energy: weight of the energy-per-atom residuals (1/(eV/atom)²).
        forces: weight of each force-component residual (1/(eV/Å)²).
        stress: weight of each of the six stress components (1/(eV/Å³)²).
        labelled_only: keep only observables that have a label (as the loss does); with
            False every structure contributes energy, forces and (periodic cells) stress,
            which is what prediction uncertainty needs.
    """

    energy: float = 1.0
    forces: float = 1.0
    stress: float = 1.0
    labelled_only: bool = True

    @classmethod
    def from_any(cls, value: "FisherWeights | dict | None") -> "FisherWeights":
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        return cls(**dict(value))


@dataclass
class Observables:
    """Weighted model outputs of one chunk, still attached to the autograd graph.

    Attributes:
        values: [M] sqrt(w) * prediction (differentiable w.r.t. the parameters).
        residuals: [M] sqrt(w) * (prediction - label), detached (zeros where unlabelled).
        kinds: [M] 0 energy, 1 forces, 2 stress.
        structure: [M] index of the structure (within the whole probe list).
        atom: [M] index of the atom within its structure (-1 for energy and stress).
        sqrt_weights: [M] the sqrt(w) that multiplies each value.
    """

    values: torch.Tensor
    residuals: torch.Tensor
    kinds: torch.Tensor
    structure: torch.Tensor
    atom: torch.Tensor
    sqrt_weights: torch.Tensor


def float64_copy(potential: nn.Module) -> nn.Module:
    """A detached float64 copy of a model in eval mode (the analysis never touches the original)."""
    model = copy.deepcopy(potential).double()
    model.eval()
    return model


def weighted_observables(
    potential: nn.Module, batch, weights: FisherWeights, structure_offset: int = 0
) -> Observables:
    """Forward ``batch`` with ``create_graph=True`` and stack the weighted observables."""
    dtype = potential.e0.dtype
    device = potential.e0.device
    batch = batch.to(device)
    num_graphs = int(batch.num_graphs)
    natoms = torch.bincount(batch.batch, minlength=num_graphs)
    periodic = torch.linalg.det(batch.cell.view(-1, 3, 3).to(dtype)).abs() > 1e-12
    want_stress = weights.stress > 0 and (
        bool(label_flags(batch, keys.STRESS, num_graphs, device).any()) if weights.labelled_only else bool(periodic.any())
    )
    out = potential(batch, compute_forces=weights.forces > 0, compute_stress=want_stress, create_graph=True)
    targets = residuals(batch, out, labelled_only=weights.labelled_only)
    values, residual_values, kinds, structure, atom, sqrt_w = [], [], [], [], [], []

    def add(pred, label, mask, w, kind, struct, atom_idx):
        if not bool(mask.any()):
            return
        s = torch.sqrt(w[mask].clamp(min=0))
        values.append(pred[mask] * s)
        residual_values.append(((pred - label)[mask] * s).detach())
        kinds.append(torch.full((int(mask.sum()),), kind, dtype=torch.long, device=device))
        structure.append(struct[mask] + structure_offset)
        atom.append(atom_idx[mask])
        sqrt_w.append(s)

    if weights.energy > 0:
        energy = targets[keys.ENERGY]
        add(energy.prediction, energy.label, energy.mask, weights.energy * energy.weight, 0, energy.structure,
            torch.full_like(energy.structure, -1))
    if weights.forces > 0:
        forces = targets[keys.FORCES]
        first = torch.cumsum(natoms, 0) - natoms
        local = (torch.arange(batch.num_nodes, device=device) - first[batch.batch]).repeat_interleave(3)
        add(forces.prediction.reshape(-1), forces.label.reshape(-1), forces.mask.reshape(-1),
            weights.forces * forces.weight.reshape(-1), 1, forces.structure.reshape(-1), local)
    if want_stress:
        stress = targets[keys.STRESS]

        def voigt(tensor: torch.Tensor) -> torch.Tensor:
            return torch.stack([tensor[:, a, b] for a, b in _VOIGT], 1).reshape(-1)

        mask = voigt(stress.mask) & periodic.repeat_interleave(6)
        add(voigt(stress.prediction), voigt(stress.label), mask, weights.stress * voigt(stress.weight), 2,
            voigt(stress.structure), torch.full((6 * num_graphs,), -1, dtype=torch.long, device=device))
    if not values:
        empty = torch.zeros(0, dtype=dtype, device=device)
        none = torch.zeros(0, dtype=torch.long, device=device)
        return Observables(empty, empty, none, none, none, empty)
    return Observables(
        torch.cat(values), torch.cat(residual_values), torch.cat(kinds), torch.cat(structure), torch.cat(atom), torch.cat(sqrt_w)
    )


def _flat_grad(index: ParameterIndex, outputs, params, grad_outputs, **kwargs) -> torch.Tensor:
    grads = torch.autograd.grad(outputs, params, grad_outputs=grad_outputs, allow_unused=True, **kwargs)
    dtype = outputs.dtype
    return torch.cat([
        (torch.zeros(p.numel(), dtype=dtype, device=p.device) if g is None else g.reshape(-1)) for g, p in zip(grads, params)
    ])


def _batched_grad(outputs, inputs, cotangents: torch.Tensor) -> list | None:
    """Vector-Jacobian products for a batch of cotangents (vmap over the backward pass), or
    None when an operation of the model does not support batching (the caller then loops)."""
    try:
        return list(torch.autograd.grad(
            outputs, inputs, grad_outputs=cotangents, retain_graph=True, allow_unused=True, is_grads_batched=True))
    except (RuntimeError, NotImplementedError):
        return None


def _jacobian_rows(index: ParameterIndex, params: list, values: torch.Tensor, block: int = 32) -> torch.Tensor:
    M = values.shape[0]
    if M == 0:
        return values.new_zeros(0, index.size)
    rows = []
    eye = torch.eye(M, dtype=values.dtype, device=values.device)
    for start in range(0, M, block):
        cotangents = eye[start : start + block]
        grads = _batched_grad(values, params, cotangents)
        if grads is None:
            rows.extend(_flat_grad(index, values[m], params, None, retain_graph=True) for m in range(start, start + cotangents.shape[0]))
            continue
        n = cotangents.shape[0]
        rows.append(torch.cat([
            (torch.zeros(n, p.numel(), dtype=values.dtype, device=values.device) if g is None else g.reshape(n, -1))
            for g, p in zip(grads, params)
        ], 1))
    rows = [r if r.dim() == 2 else r.unsqueeze(0) for r in rows]
    return torch.cat(rows, 0)


class _ForwardProducts:
    """J v for one chunk by the double-vjp trick (g(u) = Jᵀu is linear in u; J v = ∂(g·v)/∂u)."""

    def __init__(self, index: ParameterIndex, params: list, values: torch.Tensor):
        self.dummy = torch.zeros_like(values, requires_grad=True)
        grads = torch.autograd.grad(values, params, grad_outputs=self.dummy, create_graph=True, allow_unused=True)
        self.pieces = [(g, a, b) for g, a, b in zip(grads, index.offsets[:-1], index.offsets[1:]) if g is not None and g.requires_grad]

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        if not self.pieces:
            return torch.zeros_like(self.dummy)
        outputs = [g for g, _, _ in self.pieces]
        tangents = [v[a:b].view_as(g) for g, a, b in self.pieces]
        (jv,) = torch.autograd.grad(outputs, [self.dummy], grad_outputs=tangents, retain_graph=True, allow_unused=True)
        return torch.zeros_like(self.dummy) if jv is None else jv.detach()

    def batched(self, tangents: torch.Tensor) -> torch.Tensor | None:
        """[n, M] J vᵀ for the rows of ``tangents`` [n, P] in one batched pass (None if unsupported)."""
        n = tangents.shape[0]
        if not self.pieces:
            return self.dummy.new_zeros(n, self.dummy.shape[0])
        outputs = [g for g, _, _ in self.pieces]
        cotangents = [tangents[:, a:b].reshape(n, *g.shape) for g, a, b in self.pieces]
        try:
            (jv,) = torch.autograd.grad(outputs, [self.dummy], grad_outputs=cotangents, retain_graph=True,
                                        allow_unused=True, is_grads_batched=True)
        except (RuntimeError, NotImplementedError):
            return None
        return self.dummy.new_zeros(n, self.dummy.shape[0]) if jv is None else jv.detach()


def _jacobian_columns(index: ParameterIndex, params: list, values: torch.Tensor, block: int = 32) -> torch.Tensor:
    products = _ForwardProducts(index, params, values)
    P = index.size
    eye = torch.eye(P, dtype=values.dtype, device=values.device)
    columns = []
    for start in range(0, P, block):
        tangents = eye[start : start + block]
        batched = products.batched(tangents)
        if batched is None:
            columns.extend(products(tangents[k]).unsqueeze(1) for k in range(tangents.shape[0]))
        else:
            columns.append(batched.T)
    return torch.cat(columns, 1) if columns else values.new_zeros(values.shape[0], 0)


@dataclass
class Jacobian:
    """J = ∂r/∂θ of a probe set, with what each row and column is.

    Attributes:
        matrix: [M, P] Jacobian of the weighted residuals.
        residuals: [M] weighted residuals at the current parameters.
        kinds, structure, atom: [M] what each row is (see :class:`Observables`).
        index: the parameter layout of the columns.
    """

    matrix: torch.Tensor
    residuals: torch.Tensor
    kinds: torch.Tensor
    structure: torch.Tensor
    atom: torch.Tensor
    index: ParameterIndex
    sqrt_weights: torch.Tensor = field(default=None)

    def fisher(self) -> torch.Tensor:
        """The P x P Fisher information JᵀJ."""
        return self.matrix.T @ self.matrix

    def rows_of(self, kind: str) -> torch.Tensor:
        """Boolean mask of the rows of one observable kind."""
        return self.kinds == KINDS.index(kind)


def compute_jacobian(
    potential: nn.Module,
    graphs: Sequence,
    weights: FisherWeights | dict | None = None,
    max_atoms: int = 1,
    mode: str = "auto",
) -> Jacobian:
    """The Jacobian of the weighted residuals of ``graphs`` w.r.t. all trainable parameters.

    Runs in the model's dtype (pass a :func:`float64_copy` for analysis).

    Args:
        max_atoms: structures are evaluated in chunks of at most this many atoms; the
            default (1) gives one structure per chunk, the cheapest, since the rows of a
            structure depend on its graph only and a backward pass costs the whole chunk.
        mode: ``"rows"`` (one reverse pass per observable), ``"columns"`` (one extra backward
            pass per parameter) or ``"auto"`` (the fewer passes, chosen per chunk).
    """
    if mode not in ("auto", "rows", "columns"):
        raise ValueError(f"mode must be auto, rows or columns, got {mode!r}")
    weights = FisherWeights.from_any(weights)
    index = ParameterIndex.from_model(potential)
    params = index.parameters(potential)
    blocks, residuals, kinds, structure, atom, sqrt_w = [], [], [], [], [], []
    for chunk in chunk_graphs(graphs, max_atoms):
        batch = Batch.from_data_list([graphs[k] for k in chunk])
        obs = weighted_observables(potential, batch, weights, structure_offset=chunk[0])
        rows = obs.values.shape[0]
        use_rows = mode == "rows" or (mode == "auto" and rows <= index.size)
        block = _jacobian_rows(index, params, obs.values) if use_rows else _jacobian_columns(index, params, obs.values)
        blocks.append(block.detach())
        residuals.append(obs.residuals)
        kinds.append(obs.kinds)
        structure.append(obs.structure)
        atom.append(obs.atom)
        sqrt_w.append(obs.sqrt_weights.detach())
    return Jacobian(
        torch.cat(blocks), torch.cat(residuals), torch.cat(kinds), torch.cat(structure), torch.cat(atom), index, torch.cat(sqrt_w)
    )


def count_observables(graphs: Sequence, weights: FisherWeights | dict | None = None) -> int:
    """Number of Jacobian rows ``compute_jacobian`` would produce (no model evaluation)."""
    weights = FisherWeights.from_any(weights)
    total = 0
    for g in graphs:
        n = int(g.num_nodes)
        labelled = weights.labelled_only
        if weights.energy > 0 and (not labelled or bool(getattr(g, "has_energy", torch.tensor([False])).item())):
            total += 1
        if weights.forces > 0 and (not labelled or bool(getattr(g, "has_forces", torch.tensor([False])).item())):
            total += 3 * n
        if weights.stress > 0:
            periodic = abs(float(torch.linalg.det(g.cell.view(3, 3).double()))) > 1e-12
            if periodic and (not labelled or bool(getattr(g, "has_stress", torch.tensor([False])).item())):
                total += 6
    return total


class FisherOperator:
    """Matrix-free products with J, Jᵀ and I = JᵀJ on a probe set (J is never formed).

    The outputs of every chunk are computed once with ``create_graph=True`` and kept, so each
    product costs one backward pass per chunk (two for ``I v``).
    """

    def __init__(self, potential: nn.Module, graphs: Sequence, weights: FisherWeights | dict | None = None, max_atoms: int = 128):
        self.weights = FisherWeights.from_any(weights)
        self.index = ParameterIndex.from_model(potential)
        self.params = self.index.parameters(potential)
        self.chunks = []
        for chunk in chunk_graphs(graphs, max_atoms):
            batch = Batch.from_data_list([graphs[k] for k in chunk])
            obs = weighted_observables(potential, batch, self.weights, structure_offset=chunk[0])
            if obs.values.numel():
                self.chunks.append((obs, _ForwardProducts(self.index, self.params, obs.values)))
        dtype = potential.e0.dtype
        self.dtype = dtype
        self.device = potential.e0.device
        self.num_observables = sum(obs.values.shape[0] for obs, _ in self.chunks)
        self.matvec_count = 0

    @property
    def size(self) -> int:
        return self.index.size

    def jvp(self, v: torch.Tensor) -> torch.Tensor:
        """J v, [M]."""
        return torch.cat([forward(v) for _, forward in self.chunks]) if self.chunks else v.new_zeros(0)

    def vjp(self, u: torch.Tensor) -> torch.Tensor:
        """Jᵀ u, [P]."""
        total = torch.zeros(self.size, dtype=self.dtype, device=self.device)
        start = 0
        for obs, _ in self.chunks:
            m = obs.values.shape[0]
            total += _flat_grad(self.index, obs.values, self.params, u[start : start + m], retain_graph=True).detach()
            start += m
        return total

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """I v = Jᵀ (J v), chunk by chunk."""
        self.matvec_count += 1
        total = torch.zeros(self.size, dtype=self.dtype, device=self.device)
        for obs, forward in self.chunks:
            total += _flat_grad(self.index, obs.values, self.params, forward(v), retain_graph=True).detach()
        return total

    def hutchinson(self, num_probes: int = 16, seed: int = 0) -> tuple[float, float]:
        """Stochastic estimates of (tr I, tr I²) with Rademacher probes: E‖Jv‖², E‖Iv‖²."""
        generator = torch.Generator().manual_seed(seed)
        trace = trace_sq = 0.0
        for _ in range(num_probes):
            v = (torch.randint(0, 2, (self.size,), generator=generator) * 2 - 1).to(self.dtype).to(self.device)
            jv = self.jvp(v)
            trace += float(jv @ jv)
            iv = self.matvec(v)
            trace_sq += float(iv @ iv)
        return trace / num_probes, trace_sq / num_probes
