"""Weighted, label-masked losses and the per-target errors that metrics accumulate."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mlip_plugins.targets import Residual, residuals, weighted_mean
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


def errors(batch, out: dict) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(prediction - label, per-entry loss weight) for every target, from
    :func:`mlip_plugins.targets.residuals` (energies per atom; unlabelled entries weigh zero)."""
    return errors_from(residuals(batch, out))


def errors_from(targets: dict[str, Residual]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(prediction - label, loss weight) of each target's :class:`~mlip_plugins.targets.Residual`."""
    return {key: (r.error, r.weight) for key, r in targets.items()}


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
        term = weighted_mean(_pointwise(diff, weights.kind, weights.huber_delta), w.to(diff.dtype), total)
        parts[key] = term.detach()
        loss = coefficient * term if loss is None else loss + coefficient * term
    if loss is None:
        raise ConfigError("loss: every loss weight is zero, nothing to train on")
    return loss, parts
