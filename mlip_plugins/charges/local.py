"""Charge models (entry-point group ``mlip_plugins.charge_models``): per-atom charges with exact totals.

Contract: ``ChargeModel(in_dim: int, num_species: int, **cfg)``;
``forward(features: Tensor[N, D], graph: AtomicGraph) -> Tensor[N]`` (charges in e) such that
the charges of each structure b sum to ``graph.total_charge[b]`` (neutral or charged) to
rounding. A model may also return ``{"charges": Tensor[N], **extras}``; the extras (an
uncertainty, an ``aux_loss``) are passed upward by the ``electrostatic`` energy model.
:func:`conserve_total_charge` is the shared way to meet the constraint.

Built-ins:

* ``fixed``: the charges stored with the data (``graph.charges``).
* ``species``: one learnable charge per element, corrected to the total charge.
* ``latent``: a per-element MLP on the local features (latent charges, as in LES / 4G-HDNNP
  style heads), corrected to the total charge uniformly or with learned positive weights.
"""

from __future__ import annotations

import torch
from torch import nn

from mlip_plugins.graph import AtomicGraph
from mlip_plugins.models.readout import MLPReadout
from mlip_plugins.nn import sum_per_structure


def conserve_total_charge(raw: torch.Tensor, graph: AtomicGraph, weights: torch.Tensor | None = None) -> torch.Tensor:
    """q_i = raw_i + w_i (Q_b - sum_{j in b} raw_j) / sum_{j in b} w_j, with w = 1 by default.

    The result sums to ``graph.total_charge`` in every structure; the correction is the
    minimum-norm one (weighted by 1/w) and is differentiable in ``raw`` and ``weights``.
    """
    num = graph.num_graphs
    dtype = raw.dtype
    target = graph.total_charge.to(dtype).view(-1)
    if target.numel() != num:
        raise ValueError(f"total_charge has {target.numel()} entries for {num} structures")
    w = torch.ones_like(raw) if weights is None else weights.to(dtype)
    excess = target - sum_per_structure(raw, graph.batch, num)
    w_sum = sum_per_structure(w, graph.batch, num)
    return raw + w * (excess / w_sum).index_select(0, graph.batch)


def scale_last_layer(head: MLPReadout, factor: float) -> MLPReadout:
    """Multiply the initial weights and bias of the head's last layer by ``factor`` (0: the head starts at zero)."""
    with torch.no_grad():
        for parameter in head.layers[-1].parameters():
            parameter.mul_(float(factor))
    return head


class FixedCharges(nn.Module):
    """The reference charges of the data (``graph.charges``), unchanged.

    Args:
        check_total: verify that they sum to ``graph.total_charge`` (tolerance ``tolerance``).
    """

    def __init__(self, in_dim: int = 0, num_species: int = 1, check_total: bool = True, tolerance: float = 1e-6):
        super().__init__()
        self.check_total = bool(check_total)
        self.tolerance = float(tolerance)

    def forward(self, features: torch.Tensor, graph: AtomicGraph) -> torch.Tensor:
        if graph.charges is None:
            raise ValueError(
                "charge model 'fixed' needs per-atom charges in the data (atoms.arrays['charges'] or "
                "atoms.info['charges'], see LabelKeys.charges); use 'latent' to learn them"
            )
        charges = graph.charges.to(graph.pos.dtype)
        if self.check_total:
            sums = sum_per_structure(charges, graph.batch, graph.num_graphs)
            bad = (sums - graph.total_charge.to(charges.dtype)).abs() > self.tolerance
            if bool(bad.any()):
                b = int(bad.nonzero()[0, 0])
                raise ValueError(
                    f"charge model 'fixed': charges of structure {b} of the batch sum to {float(sums[b]):.6g}, "
                    f"but its total_charge is {float(graph.total_charge[b]):.6g}"
                )
        return charges


class SpeciesCharges(nn.Module):
    """One learnable charge per element, corrected per structure to the total charge."""

    def __init__(self, in_dim: int, num_species: int, initial: list[float] | None = None):
        super().__init__()
        values = torch.zeros(num_species) if initial is None else torch.as_tensor(initial, dtype=torch.get_default_dtype())
        if values.numel() != num_species:
            raise ValueError(f"charge model 'species': {values.numel()} initial charges for {num_species} elements")
        self.charge = nn.Parameter(values.clone())

    def forward(self, features: torch.Tensor, graph: AtomicGraph) -> torch.Tensor:
        return conserve_total_charge(self.charge[graph.species].to(features.dtype), graph)


class LatentCharges(nn.Module):
    """Latent charges from the local features: q~_i = MLP_{s_i}(x_i), then exact totals.

    Args:
        in_dim: feature dimension D (injected).
        num_species: number of elements (injected).
        hidden: widths of the per-element MLP.
        activation: activation name (see ``mlip_plugins.nn.ACTIVATIONS``).
        redistribution: ``uniform`` (the excess charge is spread equally over the atoms of the
            structure) or ``weighted`` (in proportion to learned positive per-atom weights,
            a softness w_i = softplus(MLP'(x_i)), as in charge equilibration).
        initial_scale: factor on the initial weights and bias of the head's last layer. With 0,
            an untrained model gives every atom the uniform share Q/N of its structure's charge
            (no Coulomb forces from random charges at the start, which on real data, e.g. the
            Ko 2021 carbon chains, double the initial force error); 1 is the usual init.
    """

    def __init__(
        self,
        in_dim: int,
        num_species: int,
        hidden: list[int] | tuple[int, ...] = (16,),
        activation: str = "silu",
        redistribution: str = "uniform",
        initial_scale: float = 1.0,
    ):
        super().__init__()
        if redistribution not in ("uniform", "weighted"):
            raise ValueError(f"charge model 'latent': redistribution must be 'uniform' or 'weighted', got {redistribution!r}")
        self.redistribution = redistribution
        self.head = scale_last_layer(MLPReadout(in_dim, num_species, hidden=list(hidden), activation=activation), initial_scale)
        self.softness = MLPReadout(in_dim, num_species, hidden=list(hidden), activation=activation) if redistribution == "weighted" else None

    def forward(self, features: torch.Tensor, graph: AtomicGraph) -> torch.Tensor:
        raw = self.head(features, graph)
        weights = None
        if self.softness is not None:
            weights = nn.functional.softplus(self.softness(features, graph)) + 1e-3
        return conserve_total_charge(raw, graph, weights)
