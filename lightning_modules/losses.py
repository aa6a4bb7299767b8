"""Weighted, label-masked losses and the per-target errors that metrics accumulate."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mlip_plugins.models.builder import ConfigError

LOSS_KINDS = ("mse", "huber")


@dataclass
class LossWeights:
    """Weights of the loss terms and the pointwise loss (``mse`` or ``huber``)."""

    energy: float = 1.0
    forces: float = 10.0
    stress: float = 0.0
    charges: float = 0.0
    kind: str = "mse"
    huber_delta: float = 0.01

    def __post_init__(self) -> None:
        if self.kind not in LOSS_KINDS:
            raise ConfigError(f"loss.kind: expected one of {', '.join(LOSS_KINDS)}, got {self.kind!r}")
        for name in ("energy", "forces", "stress", "charges", "huber_delta"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 or value == float("inf"):
                raise ConfigError(f"loss.{name}: expected a finite number >= 0, got {value!r}")


def _pointwise(diff: torch.Tensor, kind: str, delta: float) -> torch.Tensor:
    if kind == "mse":
        return diff.pow(2)
    if kind == "huber":
        return torch.nn.functional.huber_loss(diff, torch.zeros_like(diff), reduction="none", delta=delta)
    raise ConfigError(f"loss.kind must be 'mse' or 'huber', got {kind!r}")


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
        # unit weight per atom (frame weights do not scale charges), zero for zero-weight frames (DDP padding)
        result["charges"] = (out["charges"] - batch.charges, (weight > 0).to(batch.charges.dtype)[batch.batch])
    return result


def total_loss(errs: dict, weights: LossWeights, denominators: dict | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Sum of weighted mean pointwise losses; also returns each term for logging.

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
        parts[key] = term.detach()
        loss = coefficient * term if loss is None else loss + coefficient * term
    if loss is None:
        raise ConfigError("loss: every loss weight is zero, nothing to train on")
    return loss, parts
