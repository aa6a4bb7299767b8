"""A compact trainer for the design loop: Adam on an energy + force (+ stress) loss, no Lightning.

The adaptive design trains many small candidates; a plain loop over pre-built batches keeps
each trial fast and deterministic. The loss is the one ``mlip-train`` uses (mean squared
error of energy per atom, force components and stress, each with its weight); E0 and the
energy scale are set from the training set as ``mlip-train`` does.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch_geometric.data import Batch

from mlip_plugins.data.statistics import energy_scale, fit_e0, label_variances
from mlip_plugins.models.builder import ConfigError
from mlip_plugins.targets import residuals, weighted_mean


@dataclass
class TrainSettings:
    """Settings of :func:`train_potential`.

    Attributes:
        epochs: passes over the training set.
        lr: initial Adam learning rate (cosine decay to ``lr * min_lr_ratio``).
        batch_size: structures per step.
        energy, forces, stress: loss weights (stress needs stress labels).
        normalize: ``none``, or ``variance``: each term divided by the training set's variance
            of its label (:func:`~mlip_plugins.data.statistics.label_variances`), as
            ``mlip-train loss.normalize=variance`` does, so that on DFT data (energies of a few
            meV/atom spread, forces of tenths of eV/Å) neither term dominates by its units.
        max_seconds: a wall budget: training stops once it is spent (or after ``epochs``,
            whichever comes first), and the cosine learning rate anneals over the budget
            (its progress is the larger of steps/total steps and elapsed/max_seconds), so a
            budget-limited run still ends at the low learning rate, as ``trainer.max_time``
            does for ``mlip-train``.
        seed: shuffling and initialisation seed.
    """

    epochs: int = 30
    lr: float = 0.01
    min_lr_ratio: float = 0.02
    batch_size: int = 16
    energy: float = 1.0
    forces: float = 10.0
    stress: float = 0.0
    normalize: str = "none"
    max_seconds: float | None = None
    seed: int = 0
    clip: float = 10.0


def initialise_statistics(potential: nn.Module, graphs: Sequence) -> dict[str, float]:
    """Least-squares E0 per element and the energy scale, as ``mlip-train`` sets them.

    Returns the training set's label variances (the loss scales of ``normalize="variance"``)."""
    elements = potential.atomic_numbers
    e0 = fit_e0(graphs, elements)
    scale = energy_scale(graphs, elements, e0)
    with torch.no_grad():
        potential.e0.copy_(torch.as_tensor(e0, dtype=potential.e0.dtype))
        potential.energy_scale.fill_(scale)
    return label_variances(graphs, elements, e0)


def batch_loss(potential: nn.Module, batch, settings: TrainSettings, create_graph: bool = True,
               scales: dict[str, float] | None = None) -> torch.Tensor:
    """Weighted MSE of energy per atom, force components and (optionally) stress, each term
    divided by ``scales[key]`` when given (``normalize="variance"``)."""
    want_stress = settings.stress > 0 and bool(batch.has_stress.any())
    out = potential(batch, compute_forces=True, compute_stress=want_stress, create_graph=create_graph)
    loss = 0.0
    for key, residual in residuals(batch, out).items():
        coefficient = getattr(settings, key, 0.0)
        if coefficient:
            term = weighted_mean(residual.error.pow(2), residual.weight)
            loss = loss + coefficient * (term / scales[key] if scales else term)
    return loss


def train_potential(potential: nn.Module, graphs: Sequence, settings: TrainSettings | None = None) -> dict:
    """Fit ``potential`` in place on ``graphs``; returns the loss history and wall time."""
    settings = settings or TrainSettings()
    if settings.normalize not in ("none", "variance"):
        raise ConfigError(f"normalize: expected none or variance, got {settings.normalize!r}")
    variances = initialise_statistics(potential, graphs)
    scales = variances if settings.normalize == "variance" else None
    potential.train()
    generator = torch.Generator().manual_seed(settings.seed)
    params = [p for p in potential.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=settings.lr)
    steps_per_epoch = max(1, math.ceil(len(graphs) / settings.batch_size))
    total = settings.epochs * steps_per_epoch
    start = time.perf_counter()

    def progress(step: int) -> float:
        done = step / total
        if settings.max_seconds is not None:
            done = max(done, (time.perf_counter() - start) / settings.max_seconds)
        return min(done, 1.0)

    history = []
    step = 0
    for epoch in range(settings.epochs):
        order = torch.randperm(len(graphs), generator=generator).tolist()
        running, count = 0.0, 0
        for first in range(0, len(order), settings.batch_size):
            done = progress(step)
            if done >= 1.0 and settings.max_seconds is not None:
                break
            batch = Batch.from_data_list([graphs[i] for i in order[first : first + settings.batch_size]])
            for group in optimizer.param_groups:
                group["lr"] = settings.lr * (settings.min_lr_ratio + (1 - settings.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * done)))
            optimizer.zero_grad(set_to_none=True)
            loss = batch_loss(potential, batch, settings, scales=scales)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss at epoch {epoch}; lower the learning rate")
            loss.backward()
            if settings.clip:
                torch.nn.utils.clip_grad_norm_(params, settings.clip)
            optimizer.step()
            step += 1
            running += float(loss.detach()) * batch.num_graphs
            count += batch.num_graphs
        if count:
            history.append(running / count)
        if settings.max_seconds is not None and progress(step) >= 1.0:
            break
    potential.eval()
    return {"loss_history": history, "epochs_run": len(history), "steps": step, "final_lr": optimizer.param_groups[0]["lr"],
            "seconds": time.perf_counter() - start}
