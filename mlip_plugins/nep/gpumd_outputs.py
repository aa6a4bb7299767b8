"""GPUMD's prediction files, so that GPUMD users' plotting scripts work on our runs.

GPUMD's ``nep`` executable writes, for the training (``*_train.out``) and test (``*_test.out``)
sets, one line per structure or atom, predictions first, references second:

* ``energy_<set>.out``: ``E_pred E_ref`` per structure, energy per atom (eV/atom);
* ``force_<set>.out``: ``fx fy fz fx_ref fy_ref fz_ref`` per atom (eV/Å);
* ``virial_<set>.out``: six components ``xx yy zz xy yz zx`` of the virial per atom (eV/atom)
  predicted, then the six references, ``-1e+06`` where a structure has no virial label.

The virial per atom is -stress * volume / N (GPUMD's sign: positive under compression).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch_geometric.loader import DataLoader

from mlip_plugins import keys
from mlip_plugins.atomic_files import atomic_write_text
from mlip_plugins.targets import residuals

#: GPUMD's marker of a missing reference value
MISSING = -1e6
#: GPUMD's order of the six virial components
VIRIAL_ORDER = ((0, 0), (1, 1), (2, 2), (0, 1), (1, 2), (2, 0))


def _lines(rows: np.ndarray) -> str:
    return "".join(" ".join(f"{value:.6g}" for value in row) + "\n" for row in rows)


def write_prediction_files(potential, graphs: Sequence, directory: str | os.PathLike, which: str = "train",
                           batch_size: int = 16) -> dict[str, Path]:
    """Write ``energy_<which>.out``, ``force_<which>.out`` and ``virial_<which>.out`` of ``graphs``
    (in their order) into ``directory``; returns the paths."""
    potential.eval()
    dtype = potential.e0.dtype
    energy_rows, force_rows, virial_rows = [], [], []
    for batch in DataLoader(list(graphs), batch_size=batch_size):
        batch = batch.to(potential.e0.device)
        batch.pos = batch.pos.to(dtype)
        out = potential(batch, compute_forces=True, compute_stress=True)
        targets = residuals(batch, {k: v.detach() for k, v in out.items()})
        natoms = torch.bincount(batch.batch, minlength=batch.num_graphs).to(dtype)
        energy = targets[keys.ENERGY]
        label_e = torch.where(energy.mask, energy.label, torch.full_like(energy.label, MISSING))
        energy_rows.append(torch.stack([energy.prediction, label_e], 1))
        forces = targets[keys.FORCES]
        label_f = torch.where(forces.mask, forces.label, torch.full_like(forces.label, MISSING))
        force_rows.append(torch.cat([forces.prediction, label_f], 1))
        stress = targets[keys.STRESS]
        volume = torch.linalg.det(batch.cell.view(-1, 3, 3).to(dtype)).abs()
        to_virial = (-volume / natoms).view(-1, 1)
        pred = torch.stack([stress.prediction[:, a, b] for a, b in VIRIAL_ORDER], 1) * to_virial
        ref = torch.stack([stress.label[:, a, b] for a, b in VIRIAL_ORDER], 1) * to_virial
        ref = torch.where(stress.mask[:, 0, 0].view(-1, 1), ref, torch.full_like(ref, MISSING))
        virial_rows.append(torch.cat([pred, ref], 1))
    directory = Path(directory)
    written = {}
    for name, rows in (("energy", energy_rows), ("force", force_rows), ("virial", virial_rows)):
        path = directory / f"{name}_{which}.out"
        atomic_write_text(_lines(torch.cat(rows).cpu().numpy()), path)
        written[name] = path
    return written


class GPUMDOutputsCallback(L.Callback):
    """Callback ``gpumd_outputs``: at the end of fitting, write GPUMD's ``*_train.out`` (and
    ``*_test.out`` for the validation set, which is what GPUMD calls its test set) into the run
    directory, predicted by the weights used for export (the EMA copy if enabled)."""

    def __init__(self, batch_size: int = 16):
        super().__init__()
        self.batch_size = int(batch_size)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_rank != 0:
            return
        datamodule = trainer.datamodule
        potential = getattr(pl_module, "eval_model", pl_module.model)
        with torch.enable_grad():  # forces are -dE/dpos
            for which, graphs in (("train", getattr(datamodule, "train_graphs", [])), ("test", getattr(datamodule, "val_graphs", []))):
                if graphs:
                    write_prediction_files(potential, graphs, trainer.default_root_dir, which, self.batch_size)
