"""Weighted, label-masked losses and the per-target errors that metrics accumulate."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch


@dataclass
class LossWeights:
    """Weights of the loss terms and the pointwise loss (``mse`` or ``huber``).

    ``normalize="variance"`` divides each term by the training set's variance of that label
    (``PotentialModule.loss_scales``, from ``mlip_plugins.data.statistics.label_variances``),
    so the weights compare dimensionless terms: energy per atom and force components weigh
    by how well each is fitted relative to its spread, not by their units. ``"none"`` keeps
    the raw per-atom MSE in eV², eV²/Å², ... (the recipe before issue 17).
    """

    energy: float = 1.0
    forces: float = 10.0
    stress: float = 0.0
    charges: float = 0.0
    kind: str = "mse"
    huber_delta: float = 0.01
    normalize: str = "none"
    #: staged weighting (as MACE's final stage): from ``final.start`` (fraction of training:
    #: steps or wall budget, whichever is further) the training loss uses ``final``'s weights,
    #: e.g. ``{start: 0.7, energy: 10.0}``; validation keeps the first-stage weights, so that
    #: ``val/loss`` (checkpoint monitor) means the same thing throughout
    final: dict | None = None

    def __post_init__(self) -> None:
        if self.normalize not in ("none", "variance"):
            raise ValueError(f"loss.normalize must be 'none' or 'variance', got {self.normalize!r}")
        if self.final:
            unknown = set(self.final) - {"start", "energy", "forces", "stress", "charges"}
            if unknown or not 0.0 <= float(self.final.get("start", -1)) <= 1.0:
                raise ValueError(f"loss.final: expected {{start: 0..1, energy/forces/stress/charges: weight}}, got {self.final!r}")

    def final_stage(self) -> LossWeights:
        """The weights of the final stage (``self`` where there is none)."""
        if not self.final:
            return self
        weights = {k: float(v) for k, v in self.final.items() if k != "start"}
        return dataclasses.replace(self, final=None, **weights)


def _pointwise(diff: torch.Tensor, kind: str, delta: float) -> torch.Tensor:
    if kind == "mse":
        return diff.pow(2)
    if kind == "huber":
        return torch.nn.functional.huber_loss(diff, torch.zeros_like(diff), reduction="none", delta=delta)
    raise ValueError(f"loss.kind must be 'mse' or 'huber', got {kind!r}")


def _weighted_mean(values: torch.Tensor, weights: torch.Tensor, total: torch.Tensor | None = None) -> torch.Tensor:
    total = weights.sum() if total is None else total
    return (values * weights).sum() / torch.clamp(total, min=1e-12)


def errors(batch, out: dict) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(prediction - label, per-entry weight) for every labelled target in the batch.

    Energies are compared per atom; structures without a label get weight zero.
    """
    natoms = torch.bincount(batch.batch, minlength=batch.num_graphs).to(out["energy"].dtype)
    weight = batch.weight.view(-1).to(out["energy"].dtype)
    result = {}
    has_e = batch.has_energy.view(-1)
    result["energy"] = ((out["energy"] - batch.energy.view(-1)) / natoms, weight * has_e)
    if "forces" in out:
        atom_w = (weight * batch.has_forces.view(-1))[batch.batch]
        result["forces"] = (out["forces"] - batch.forces, atom_w.unsqueeze(-1).expand(-1, 3))
    if "stress" in out:
        w = (weight * batch.has_stress.view(-1)).view(-1, 1, 1).expand(-1, 3, 3)
        result["stress"] = (out["stress"] - batch.stress.view(-1, 3, 3), w)
    if "charges" in out and getattr(batch, "charges", None) is not None:
        result["charges"] = (out["charges"] - batch.charges, torch.ones_like(batch.charges))
    return result


def total_loss(errs: dict, weights: LossWeights, denominators: dict | None = None,
               scales: dict | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Sum of weighted mean pointwise losses; also returns each term for logging.

    ``scales`` (per target, used when ``weights.normalize == "variance"``) divide each term:
    the training set's label variances, the one place where the terms are made dimensionless.

    ``denominators`` (per target) replace the local weight totals of the means: under DDP,
    the global total divided by the number of processes, so that the gradient average over
    processes equals the gradient of the mean over the global batch (see
    ``PotentialModule.training_step``).
    """
    parts = {}
    loss = None
    for key, (diff, w) in errs.items():
        coefficient = getattr(weights, key, 0.0)
        if coefficient == 0.0:
            continue
        total = None if denominators is None else denominators[key]
        term = _weighted_mean(_pointwise(diff, weights.kind, weights.huber_delta), w.to(diff.dtype), total)
        if weights.normalize == "variance" and scales is not None:
            term = term / scales[key].to(term.dtype)
        parts[key] = term.detach()
        loss = coefficient * term if loss is None else loss + coefficient * term
    if loss is None:
        raise ValueError("loss: every loss weight is zero, nothing to train on")
    return loss, parts
