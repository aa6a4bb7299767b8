"""Mixture-of-experts MLP layer and the ``moe`` readout (group ``mlip_plugins.readouts``).

``MoEMLP`` replaces an MLP wherever a model has one (the readout; the update MLP of a
message-passing block). For each atom,

* nonlinear experts (``experts: nonlinear``, DeepSeekMoE style; each expert a full MLP)::

      y = sum_{s in shared} f_s(x) + sum_{e in top-k} g_e f_e(x)

* linear mixing (``experts: linear``, UMA's MoLE): the weights of every layer are mixed
  before the nonlinearity, as a convex combination of the shared experts and the routed
  mixture::

      W_l = (sum_s W_l,s + sum_e g_e W_l,e) / (n_shared + 1)

Routed experts are stored stacked ([E, d_in, d_out] per layer) and evaluated with batched
matrix products: atoms are dispatched to a padded [E, capacity, d] tensor (grouped GEMM via
``baddbmm``) when the gates are sparse, or every expert sees every atom when they are dense.
There is no Python loop over experts.

With an element-wise router the gates are a per-element table, so :meth:`MoEMLP.merge`
folds the active experts of each element into dense per-element weights
(:class:`MergedElementMLP`); the merged model evaluates at the cost of a dense model of the
active size and agrees with the unmerged one to rounding error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from mlip_plugins.graph import AtomicGraph
from mlip_plugins.nn import activation, sum_per_atom
from mlip_plugins.moe.routers.gating import RouterOutput, load_balancing_loss

EXPERT_KINDS = ("nonlinear", "linear")
DISPATCH_MODES = ("auto", "dense", "grouped")


class MoEOutput(NamedTuple):
    """Layer output [N, out], gates and router probabilities [N, E], load-balancing loss."""

    output: torch.Tensor
    gates: torch.Tensor | None
    probs: torch.Tensor | None
    balance_loss: torch.Tensor


class ExpertBank(nn.Module):
    """``count`` MLPs of identical widths, weights stacked as [count, d_in, d_out] per layer."""

    def __init__(self, count: int, widths: Sequence[int]):
        super().__init__()
        self.count = int(count)
        self.widths = [int(w) for w in widths]
        self.weights = nn.ParameterList(
            nn.Parameter(torch.randn(self.count, a, b) / a**0.5) for a, b in zip(self.widths[:-1], self.widths[1:])
        )
        self.biases = nn.ParameterList(nn.Parameter(torch.zeros(self.count, b)) for b in self.widths[1:])

    @property
    def num_layers(self) -> int:
        return len(self.weights)

    def parameters_per_expert(self) -> int:
        return sum(a * b + b for a, b in zip(self.widths[:-1], self.widths[1:]))

    def layer(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Layer ``index`` of every expert on its own rows: x [count, C, d_in] -> [count, C, d_out]."""
        return torch.baddbmm(self.biases[index].unsqueeze(1), x, self.weights[index])

    def mlp(self, x: torch.Tensor, act: nn.Module) -> torch.Tensor:
        """Every expert's full MLP on its own rows: [count, C, d_in] -> [count, C, d_out]."""
        for index in range(self.num_layers):
            x = self.layer(index, x)
            if index < self.num_layers - 1:
                x = act(x)
        return x


class Dispatch(NamedTuple):
    """Active (atom, expert) pairs sorted by expert, with their slot in a padded expert batch."""

    atom: torch.Tensor
    expert: torch.Tensor
    slot: torch.Tensor
    weight: torch.Tensor
    capacity: int

    def scatter(self, x: torch.Tensor, num_experts: int) -> torch.Tensor:
        """Rows of ``x`` [N, D] into a zero-padded [E, capacity, D] batch."""
        out = x.new_zeros(num_experts, self.capacity, x.shape[-1])
        return out.index_put((self.expert, self.slot), x.index_select(0, self.atom))

    def combine(self, y: torch.Tensor, num_atoms: int, scale: float = 1.0) -> torch.Tensor:
        """Gate-weighted sum over each atom's experts of the padded outputs y [E, C, O] -> [N, O]."""
        pairs = y[self.expert, self.slot] * (self.weight * scale).unsqueeze(-1)
        return sum_per_atom(pairs, self.atom, num_atoms)


def make_dispatch(gates: torch.Tensor) -> Dispatch:
    """Pairs with a non-zero gate, grouped by expert (gates [N, E])."""
    expert, atom = (gates.detach().t() > 0).nonzero(as_tuple=True)  # row-major: sorted by expert
    counts = torch.bincount(expert, minlength=gates.shape[1])
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(expert.numel(), device=gates.device) - starts[expert]
    capacity = int(counts.max()) if expert.numel() else 0
    return Dispatch(atom, expert, slot, gates[atom, expert], capacity)


def build_router(router: str | Mapping | None, num_experts: int, num_species: int, in_dim: int, top_k: int | None) -> nn.Module:
    """A router from a registry name or a ``{name: ..., **cfg}`` mapping (``top_k`` may be overridden there)."""
    from mlip_plugins.models.builder import build  # late: the builder imports the readouts' registry

    spec: dict[str, Any] = {"name": router} if isinstance(router, str) else dict(router or {"name": "element"})
    spec.setdefault("top_k", top_k)
    return build("routers", spec, "moe.router", num_experts=num_experts, num_species=num_species, in_dim=in_dim)


class MoEMLP(nn.Module):
    """Mixture-of-experts MLP ``forward(x [N, in_dim], graph) -> [N, out_dim]``.

    Args:
        in_dim: input width.
        out_dim: output width.
        num_species: elements S of the model (for the router).
        num_experts: routed experts E (0: no router, only shared experts = a dense MLP).
        top_k: active routed experts per atom (``None``: dense soft gating).
        num_shared: always-active shared experts.
        hidden: hidden widths of each expert's MLP.
        experts: ``nonlinear`` (mix outputs) or ``linear`` (mix weights, MoLE).
        router: router name or ``{name: ..., **cfg}`` (group ``mlip_plugins.routers``).
        activation: activation between layers.
        dispatch: ``auto`` (grouped when gates are sparse), ``dense`` or ``grouped``.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        num_species: int,
        num_experts: int = 8,
        top_k: int | None = 2,
        num_shared: int = 1,
        hidden: Sequence[int] = (16,),
        experts: str = "nonlinear",
        router: str | Mapping | None = "element",
        activation_name: str = "silu",
        dispatch: str = "auto",
        **kwargs: Any,
    ):
        super().__init__()
        activation_name = kwargs.pop("activation", activation_name)
        if kwargs:
            raise TypeError(f"MoEMLP got unexpected options: {', '.join(sorted(kwargs))}")
        if experts not in EXPERT_KINDS:
            raise ValueError(f"moe: unknown experts kind {experts!r}; known: {', '.join(EXPERT_KINDS)}")
        if dispatch not in DISPATCH_MODES:
            raise ValueError(f"moe: unknown dispatch {dispatch!r}; known: {', '.join(DISPATCH_MODES)}")
        if int(num_experts) < 0 or int(num_shared) < 0 or int(num_experts) + int(num_shared) == 0:
            raise ValueError(f"moe: need at least one expert (num_experts={num_experts}, num_shared={num_shared})")
        self.in_dim, self.out_dim = int(in_dim), int(out_dim)
        self.num_experts = int(num_experts)
        self.num_shared = int(num_shared)
        self.kind = experts
        self.dispatch = dispatch
        self.activation_name = activation_name
        self.act = activation(activation_name)
        widths = [self.in_dim, *[int(h) for h in hidden], self.out_dim]
        self.shared = ExpertBank(self.num_shared, widths) if self.num_shared else None
        self.routed = ExpertBank(self.num_experts, widths) if self.num_experts else None
        self.router = build_router(router, self.num_experts, num_species, self.in_dim, top_k) if self.num_experts else None
        self.top_k = getattr(self.router, "top_k", None)

    # ------------------------------------------------------------------ sizes
    def active_experts(self) -> int:
        """Experts that process each atom (shared + routed top-k)."""
        routed = 0 if self.routed is None else (self.top_k or self.num_experts)
        return self.num_shared + routed

    def active_parameter_count(self) -> int:
        """Parameters used for one atom: active experts (or one mixed MLP for MoLE) + router."""
        bank = self.shared or self.routed
        per_expert = bank.parameters_per_expert()
        experts = per_expert if self.kind == "linear" else per_expert * self.active_experts()
        router = sum(p.numel() for p in self.router.parameters()) if self.router is not None else 0
        return experts + router

    # ------------------------------------------------------------------ forward
    def _route(self, x: torch.Tensor, graph: AtomicGraph) -> RouterOutput:
        route = getattr(self.router, "route", None)
        if route is not None:
            return route(x, graph)
        gates = self.router(x, graph)
        return RouterOutput(gates, gates)

    def _use_grouped(self) -> bool:
        if self.dispatch != "auto":
            return self.dispatch == "grouped"
        return self.top_k is not None

    def moe_forward(self, x: torch.Tensor, graph: AtomicGraph) -> MoEOutput:
        """Output, gates, probabilities and balance loss (see :class:`MoEOutput`)."""
        if self.router is None:
            y = self._nonlinear(x, None, None) if self.kind == "nonlinear" else self._linear(x, None, None)
            return MoEOutput(y, None, None, x.new_zeros(()))
        gates, probs = self._route(x, graph)
        dispatch = make_dispatch(gates) if self._use_grouped() else None
        y = self._nonlinear(x, gates, dispatch) if self.kind == "nonlinear" else self._linear(x, gates, dispatch)
        return MoEOutput(y, gates, probs, load_balancing_loss(gates, probs))

    def forward(self, x: torch.Tensor, graph: AtomicGraph, return_details: bool = False):
        """[N, out_dim] (or the full :class:`MoEOutput` with ``return_details``)."""
        out = self.moe_forward(x, graph)
        return out if return_details else out.output

    def _nonlinear(self, x: torch.Tensor, gates: torch.Tensor | None, dispatch: Dispatch | None) -> torch.Tensor:
        n = x.shape[0]
        y = x.new_zeros(n, self.out_dim)
        if self.shared is not None:
            y = y + self.shared.mlp(x.expand(self.num_shared, n, self.in_dim), self.act).sum(0)
        if gates is None:
            return y
        if dispatch is None:  # every expert on every atom, weighted by (dense) gates
            outputs = self.routed.mlp(x.expand(self.num_experts, n, self.in_dim), self.act)
            return y + torch.einsum("ne,eno->no", gates, outputs)
        outputs = self.routed.mlp(dispatch.scatter(x, self.num_experts), self.act)
        return y + dispatch.combine(outputs, n)

    def _linear(self, x: torch.Tensor, gates: torch.Tensor | None, dispatch: Dispatch | None) -> torch.Tensor:
        n = x.shape[0]
        bank = self.shared or self.routed
        norm = self.num_shared + (1 if gates is not None else 0)
        h = x
        for index in range(bank.num_layers):
            z = h.new_zeros(n, bank.widths[index + 1])
            if self.shared is not None:
                weight = self.shared.weights[index].sum(0) / norm
                bias = self.shared.biases[index].sum(0) / norm
                z = z + torch.addmm(bias, h, weight)
            if gates is not None:
                if dispatch is None:
                    outputs = self.routed.layer(index, h.expand(self.num_experts, n, h.shape[-1]))
                    z = z + torch.einsum("ne,enh->nh", gates / norm, outputs)
                else:
                    outputs = self.routed.layer(index, dispatch.scatter(h, self.num_experts))
                    z = z + dispatch.combine(outputs, n, scale=1.0 / norm)
            h = self.act(z) if index < bank.num_layers - 1 else z
        return h

    # ------------------------------------------------------------------ merge
    def can_merge(self) -> bool:
        """True when the gates depend on the element only (or there is no router)."""
        return self.router is None or bool(getattr(self.router, "element_wise", False))

    @torch.no_grad()
    def merge(self, num_species: int | None = None) -> MergedElementMLP:
        """Fold the active experts of each element into dense per-element weights.

        Only for element-wise routing (the gates must be a per-element table). Nonlinear
        experts: the first layers of the active experts are concatenated, middle layers kept
        block-wise, and the gates folded into the concatenated last layer, so with one hidden
        layer the result is a per-element MLP of width (n_shared + k) x hidden. Linear
        experts: the mixed weights of each element are computed once (width = one expert).
        """
        if not self.can_merge():
            raise ValueError(
                f"moe: cannot merge experts with router {type(self.router).__name__}: only element-wise "
                "routing gives per-element gates (global/feature routing depends on the structure)"
            )
        if self.router is not None:
            table = self.router.element_gates().detach()  # [S, E]
        else:
            if num_species is None:
                raise ValueError("moe: merge() without a router needs num_species")
            table = torch.zeros(int(num_species), 0)
        banks, coefs = self._active_banks(table)
        if self.kind == "linear":
            norm = self.num_shared + (1 if self.router is not None else 0)
            weights = [torch.einsum("sa,saij->sij", coefs / norm, w).unsqueeze(1) for w in banks[0]]
            biases = [torch.einsum("sa,saj->sj", coefs / norm, b).unsqueeze(1) for b in banks[1]]
            return MergedElementMLP(weights, biases, torch.ones(table.shape[0], 1, dtype=table.dtype), self.activation_name)
        return MergedElementMLP(banks[0], banks[1], coefs, self.activation_name)

    def _active_banks(self, table: torch.Tensor) -> tuple[tuple[list[torch.Tensor], list[torch.Tensor]], torch.Tensor]:
        """Per element, the stacked weights [S, A, ...] of its active experts and their coefficients [S, A]."""
        num_species = table.shape[0]
        weights: list[list[torch.Tensor]] = []
        biases: list[list[torch.Tensor]] = []
        coefs = []
        if self.shared is not None:
            weights.append([w.unsqueeze(0).expand(num_species, *w.shape) for w in self.shared.weights])
            biases.append([b.unsqueeze(0).expand(num_species, *b.shape) for b in self.shared.biases])
            coefs.append(torch.ones(num_species, self.num_shared, dtype=table.dtype, device=table.device))
        if self.routed is not None:
            active = int((table > 0).sum(-1).max())
            values, index = table.topk(active, dim=-1)  # zero-valued padding contributes nothing
            weights.append([w[index] for w in self.routed.weights])
            biases.append([b[index] for b in self.routed.biases])
            coefs.append(values)
        stacked_w = [torch.cat(parts, dim=1) for parts in zip(*weights)]
        stacked_b = [torch.cat(parts, dim=1) for parts in zip(*biases)]
        return (stacked_w, stacked_b), torch.cat(coefs, dim=1)


class MergedElementMLP(nn.Module):
    """Per-element dense MLP equivalent to an element-routed MoE (see :meth:`MoEMLP.merge`).

    Built from stacked active experts ``weights[l]`` [S, A, d_l, d_l+1] with coefficients
    [S, A]. Stored as: first layer concatenated over the A experts ([S, D, A*H]), middle
    layers block-wise ([S, A, H, H']), last layer concatenated with the coefficients folded
    in ([S, A*H, O], bias summed). Atoms are grouped by element into a padded [S, capacity, D]
    batch, so each layer is one batched matrix product for all elements.
    """

    def __init__(self, weights: list[torch.Tensor], biases: list[torch.Tensor], coefs: torch.Tensor, activation_name: str = "silu"):
        super().__init__()
        self.act = activation(activation_name)
        num_species, active = coefs.shape
        self.num_species, self.num_active = int(num_species), int(active)
        last_w = weights[-1] * coefs[:, :, None, None]
        last_b = (biases[-1] * coefs[:, :, None]).sum(1)
        if len(weights) == 1:  # experts without hidden layers: a single mixed linear map
            self.first_w = None
            self.first_b = None
            self.last_w = nn.Parameter(last_w.sum(1).clone())
        else:
            self.first_w = nn.Parameter(torch.cat(list(weights[0].unbind(1)), dim=-1).clone())  # [S, D, A*H]
            self.first_b = nn.Parameter(biases[0].reshape(num_species, -1).clone())  # [S, A*H]
            self.last_w = nn.Parameter(last_w.reshape(num_species, -1, last_w.shape[-1]).clone())  # [S, A*H, O]
        self.last_b = nn.Parameter(last_b.clone())
        self.mid_w = nn.ParameterList(nn.Parameter(w.clone()) for w in weights[1:-1])
        self.mid_b = nn.ParameterList(nn.Parameter(b.clone()) for b in biases[1:-1])

    def _grouped(self, x: torch.Tensor) -> torch.Tensor:
        """All elements at once on padded per-element rows: x [S, C, D] -> [S, C, O]."""
        if self.first_w is None:
            return torch.baddbmm(self.last_b.unsqueeze(1), x, self.last_w)
        h = self.act(torch.baddbmm(self.first_b.unsqueeze(1), x, self.first_w))  # [S, C, A*H]
        if len(self.mid_w):
            s, c, a = h.shape[0], h.shape[1], self.num_active
            h = h.view(s, c, a, -1).transpose(1, 2).reshape(s * a, c, -1)  # [S*A, C, H]
            for w, b in zip(self.mid_w, self.mid_b):
                h = self.act(torch.baddbmm(b.reshape(s * a, 1, -1), h, w.reshape(s * a, w.shape[-2], w.shape[-1])))
            h = h.view(s, a, c, -1).transpose(1, 2).reshape(s, c, -1)  # [S, C, A*H']
        return torch.baddbmm(self.last_b.unsqueeze(1), h, self.last_w)

    def forward(self, x: torch.Tensor, graph: AtomicGraph) -> torch.Tensor:
        # group atoms by element into a padded [S, capacity, D] batch: one batched product per layer
        species = graph.species
        order = torch.argsort(species, stable=True)
        sorted_species = species[order]
        counts = torch.bincount(species, minlength=self.num_species)
        slot = torch.arange(species.numel(), device=x.device) - (torch.cumsum(counts, 0) - counts)[sorted_species]
        capacity = int(counts.max()) if species.numel() else 0
        grouped = x.new_zeros(self.num_species, capacity, x.shape[-1]).index_put((sorted_species, slot), x.index_select(0, order))
        y = self._grouped(grouped)[sorted_species, slot]
        return y.new_zeros(x.shape[0], y.shape[-1]).index_copy(0, order, y)


class MoEReadout(nn.Module):
    """Readout ``moe``: per-atom energy E_i = MoEMLP(psi_i)[0].

    Config (besides ``in_dim``/``num_species``, injected by the builder): every
    :class:`MoEMLP` option, plus ``load_balance`` (coefficient of the balance loss; when > 0
    the readout returns ``{"energy": [N], "aux_loss": scalar}`` and the trainer adds
    ``aux_loss`` to its loss).
    """

    def __init__(self, in_dim: int, num_species: int, load_balance: float = 0.0, **moe_cfg: Any):
        super().__init__()
        self.num_species = int(num_species)
        self.load_balance = float(load_balance)
        self.moe = MoEMLP(in_dim, 1, num_species, **moe_cfg)

    def forward(self, features: torch.Tensor, graph: AtomicGraph):
        out = self.moe(features, graph, return_details=True)
        energy = out.output.squeeze(-1)
        if self.load_balance > 0 and self.moe.router is not None:
            return {"energy": energy, "aux_loss": self.load_balance * out.balance_loss}
        return energy

    def merge(self) -> MergedMoEReadout:
        """The equivalent per-element dense readout (element-wise routing only)."""
        return MergedMoEReadout(self.moe.merge(self.num_species))


class MergedMoEReadout(nn.Module):
    """Per-element dense readout produced by :meth:`MoEReadout.merge` (inference only)."""

    def __init__(self, mlp: MergedElementMLP):
        super().__init__()
        self.mlp = mlp

    def forward(self, features: torch.Tensor, graph: AtomicGraph) -> torch.Tensor:
        return self.mlp(features, graph).squeeze(-1)


def merge_moe(model: nn.Module) -> int:
    """Replace, in place, every mergeable ``MoEReadout``/``MoEMLP`` inside ``model`` by its merged form.

    Returns the number of layers merged. Layers with non element-wise routers are left as
    they are. The state dict of the merged model differs from the training one: merge after
    loading a checkpoint, for inference or export.
    """
    merged = 0
    for name, child in list(model.named_children()):
        if isinstance(child, MoEReadout) and child.moe.can_merge():
            setattr(model, name, child.merge())
            merged += 1
        elif isinstance(child, MoEMLP) and child.can_merge() and child.router is not None:
            setattr(model, name, child.merge())
            merged += 1
        else:
            merged += merge_moe(child)
    return merged


def moe_layers(model: nn.Module) -> list[tuple[str, MoEMLP]]:
    """(qualified name, layer) of every ``MoEMLP`` with a router inside ``model``."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, MoEMLP) and m.router is not None]
