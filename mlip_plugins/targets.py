"""Residuals and error metrics of every trained target, in one place.

``residuals(batch, output)`` turns a batch of labelled structures and a ``Potential``'s output
into one :class:`Residual` per target (energy per atom, force components, stress components,
charges, BEC, dipole and polarizability per atom; a charge model's dipole only where its
``dipole_defined`` output is true, i.e. not for periodic cells): prediction, label, a label mask and a loss weight. Everything that compares a model
with labels reads it: the training loss (``lightning_modules.losses``), SNES's fitness, the
design loop's fit, the Fisher information's observables and the evaluation metrics. The error
metrics (RMSE, MAE, count) are computed by one torchmetrics collection, :class:`ErrorMetrics`,
which also synchronises across DDP processes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torchmetrics import MeanAbsoluteError, MeanSquaredError

from mlip_plugins import keys


@dataclass
class Residual:
    """One target's prediction and label for every entry of a batch.

    ``mask`` is true where the structure carries the label; ``weight`` is the loss weight of the
    entry (the structure's ``weight`` where labelled, zero elsewhere); ``structure`` is each
    entry's structure index in the batch. All four have the shape of ``prediction``.
    """

    prediction: torch.Tensor
    label: torch.Tensor
    mask: torch.Tensor
    weight: torch.Tensor
    structure: torch.Tensor

    @property
    def error(self) -> torch.Tensor:
        """prediction - label (meaningful where ``mask`` is true)."""
        return self.prediction - self.label

    def labelled(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(prediction, label) of the labelled entries, flattened."""
        return self.prediction[self.mask], self.label[self.mask]


def label_flags(batch, label: str, num_graphs: int, device) -> torch.Tensor:
    """[B] bool: which structures of ``batch`` carry ``label`` (all false where the batch has no flag)."""
    value = getattr(batch, keys.has(label), None)
    if value is None:
        return torch.zeros(num_graphs, dtype=torch.bool, device=device)
    return value.view(-1).bool()


def residuals(batch, output: Mapping[str, torch.Tensor], labelled_only: bool = True) -> dict[str, Residual]:
    """A :class:`Residual` for every target the output predicts and the batch can carry.

    Energies are compared per atom. With ``labelled_only=False`` every entry counts (mask all
    true, missing labels read as zero): the Fisher information of predictions needs no labels.
    """
    energy = output[keys.ENERGY]
    dtype, device = energy.dtype, energy.device
    num_graphs = int(energy.shape[0])
    natoms = torch.bincount(batch.batch, minlength=num_graphs).to(dtype)
    structure_weight = getattr(batch, keys.WEIGHT, None)
    structure_weight = torch.ones(num_graphs, dtype=dtype, device=device) if structure_weight is None else structure_weight.view(-1).to(dtype)
    graph_ids = torch.arange(num_graphs, device=device)

    def flag(label: str) -> torch.Tensor:
        if not labelled_only:
            return torch.ones(num_graphs, dtype=torch.bool, device=device)
        return label_flags(batch, label, num_graphs, device)

    def label_of(key: str, like: torch.Tensor) -> torch.Tensor:
        value = getattr(batch, key, None)
        return torch.zeros_like(like) if value is None else value.to(dtype).view_as(like)

    result: dict[str, Residual] = {}
    has_e = flag(keys.ENERGY)
    result[keys.ENERGY] = Residual(
        energy / natoms, label_of(keys.ENERGY, energy) / natoms, has_e, structure_weight * has_e, graph_ids
    )
    if keys.FORCES in output:
        forces = output[keys.FORCES]
        per_atom = flag(keys.FORCES)[batch.batch].unsqueeze(-1).expand(-1, 3)
        atom_weight = structure_weight[batch.batch].unsqueeze(-1).expand(-1, 3)
        result[keys.FORCES] = Residual(
            forces, label_of(keys.FORCES, forces), per_atom, atom_weight * per_atom, batch.batch.unsqueeze(-1).expand(-1, 3)
        )
    if keys.STRESS in output:
        stress = output[keys.STRESS].view(-1, 3, 3)
        per_structure = flag(keys.STRESS).view(-1, 1, 1).expand(-1, 3, 3)
        result[keys.STRESS] = Residual(
            stress, label_of(keys.STRESS, stress), per_structure,
            structure_weight.view(-1, 1, 1).expand(-1, 3, 3) * per_structure, graph_ids.view(-1, 1, 1).expand(-1, 3, 3),
        )
    if keys.CHARGES in output and getattr(batch, keys.CHARGES, None) is not None:
        charges = output[keys.CHARGES]
        every = torch.ones_like(charges, dtype=torch.bool)
        # unit weight per atom (frame weights do not scale charges), zero for zero-weight frames (DDP padding)
        unit = (structure_weight > 0).to(dtype)[batch.batch]
        result[keys.CHARGES] = Residual(charges, label_of(keys.CHARGES, charges), every, unit, batch.batch)
    if keys.BORN_EFFECTIVE_CHARGES in output and getattr(batch, keys.BEC, None) is not None:
        bec = output[keys.BORN_EFFECTIVE_CHARGES]
        per_atom = flag(keys.BEC)[batch.batch].view(-1, 1, 1).expand(-1, 3, 3)
        atom_weight = structure_weight[batch.batch].view(-1, 1, 1).expand(-1, 3, 3)
        result[keys.BEC] = Residual(bec, label_of(keys.BEC, bec), per_atom, atom_weight * per_atom,
                                    batch.batch.view(-1, 1, 1).expand(-1, 3, 3))
    for key in (keys.DIPOLE, keys.POLARIZABILITY):  # a TNEP's or charge model's: per structure, per atom as GPUMD's loss
        if key in output and getattr(batch, key, None) is not None:
            value = output[key]
            shape = (-1,) + (1,) * (value.dim() - 1)
            structures = flag(key)
            if key == keys.DIPOLE and keys.DIPOLE_DEFINED in output:  # charge models: no dipole of a periodic cell
                structures = structures & output[keys.DIPOLE_DEFINED].view(-1).bool()
            per_structure = structures.view(shape).expand_as(value)
            result[key] = Residual(value / natoms.view(shape), label_of(key, value) / natoms.view(shape), per_structure,
                                   structure_weight.view(shape).expand_as(value) * per_structure, graph_ids.view(shape).expand_as(value))
    return result


def weighted_mean(values: torch.Tensor, weights: torch.Tensor, total: torch.Tensor | None = None) -> torch.Tensor:
    """sum(values * weights) / total (default: the sum of the weights); zero weights drop entries."""
    total = weights.sum() if total is None else total
    return (values * weights).sum() / torch.clamp(total, min=1e-12)


class ErrorMetrics(nn.Module):
    """RMSE, MAE and count of each target's labelled errors, accumulated over batches.

    Built on torchmetrics, so the same object works in a Lightning module (``sync=True``:
    ``compute`` gathers across DDP processes) and in offline evaluation (``sync=False``: one
    process, which must not wait for the others, e.g. rank 0's final report).
    """

    def __init__(self, targets: Iterable[str] = keys.TARGETS, sync: bool = True):
        super().__init__()
        self.targets = tuple(targets)
        self.rmse = nn.ModuleDict({t: MeanSquaredError(squared=False, sync_on_compute=sync) for t in self.targets})
        self.mae = nn.ModuleDict({t: MeanAbsoluteError(sync_on_compute=sync) for t in self.targets})
        self.counts = {t: 0 for t in self.targets}

    def update_errors(self, target: str, errors: torch.Tensor) -> None:
        """Add a flat tensor of (prediction - label) values of ``target``."""
        errors = errors.detach().reshape(-1)
        if errors.numel() == 0:
            return
        zeros = torch.zeros_like(errors)
        self.rmse[target].update(errors, zeros)
        self.mae[target].update(errors, zeros)
        self.counts[target] += int(errors.numel())

    def update(self, batch_residuals: Mapping[str, Residual], by_weight: bool = True) -> None:
        """Add a batch: entries with a positive loss weight (``by_weight``) or with a label."""
        for target, residual in batch_residuals.items():
            if target in self.rmse:
                selected = residual.weight > 0 if by_weight else residual.mask
                self.update_errors(target, residual.error[selected])

    def compute(self) -> dict[str, torch.Tensor]:
        """``{<target>_rmse, <target>_mae}`` for the targets that received errors."""
        result = {}
        for target in self.targets:
            if self.rmse[target].update_called:
                result[f"{target}_rmse"] = self.rmse[target].compute()
                result[f"{target}_mae"] = self.mae[target].compute()
        return result

    def reset(self) -> None:
        for target in self.targets:
            self.rmse[target].reset()
            self.mae[target].reset()
            self.counts[target] = 0
