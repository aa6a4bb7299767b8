"""GPUMD's prediction files, so that GPUMD users' plotting scripts work on our runs.

GPUMD's ``nep`` executable writes, for the training (``*_train.out``) and test (``*_test.out``)
sets, one line per structure or atom, predictions first, references second:

* ``energy_<set>.out``: ``E_pred E_ref`` per structure, energy per atom (eV/atom);
* ``force_<set>.out``: ``fx fy fz fx_ref fy_ref fz_ref`` per atom (eV/Å);
* ``virial_<set>.out``: six components ``xx yy zz xy yz zx`` of the virial per atom (eV/atom)
  predicted, then the six references, ``-1e+06`` where a structure has no virial label.

The virial per atom is -stress * volume / N (GPUMD's sign: positive under compression). A charge
model (qNEP) also gets ``charge_<set>.out`` (one charge per atom, e). A TNEP gets, instead of the
three files of a potential (GPUMD's ``dipole_*.out`` / ``polarizability_*.out`` pages):

* ``dipole_<set>.out``: ``mx my mz`` then the three references per structure, per atom (e Å/atom);
* ``polarizability_<set>.out``: six components ``xx yy zz xy yz zx`` per structure, per atom,
  predicted then the six references (the order of the virial).

The callback also writes GPUMD's ``loss.out`` (:mod:`mlip_plugins.nep.loss_out`) during training.
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
from mlip_plugins.targets import label_flags, residuals

#: GPUMD's marker of a missing reference value
MISSING = -1e6
#: GPUMD's order of the six virial components (also of a polarizability's)
VIRIAL_ORDER = ((0, 0), (1, 1), (2, 2), (0, 1), (1, 2), (2, 0))
#: the files of each model kind (:func:`mlip_plugins.nep.loss_out.model_kind`), as GPUMD writes them
FILES = {
    "potential": ("energy", "force", "virial", "charge"),
    "charge": ("energy", "force", "virial", "charge"),
    "dipole": ("dipole",),
    "polarizability": ("polarizability",),
}


def _lines(rows: np.ndarray) -> str:
    return "".join(" ".join(f"{value:.6g}" for value in row) + "\n" for row in rows)


def _virial_order(tensors: torch.Tensor) -> torch.Tensor:
    """[B, 3, 3] -> [B, 6] in GPUMD's order (:data:`VIRIAL_ORDER`)."""
    return torch.stack([tensors[:, a, b] for a, b in VIRIAL_ORDER], 1)


def prediction_tables(potential, graphs: Sequence, batch_size: int = 16) -> dict[str, np.ndarray]:
    """GPUMD's rows of ``graphs`` (in their order): ``energy``, ``force``, ``virial`` tables
    (predictions, then references, :data:`MISSING` where unlabelled), and for a model that
    predicts charges a ``charge`` table (one column, as GPUMD's charge_*.out) with the labels
    (or :data:`MISSING`) in ``charge_label``; likewise ``bec`` / ``bec_label`` (9 components,
    GPUMD's xx xy xz yx ... order) for a model that predicts Born effective charges. A TNEP's
    rows are a ``dipole`` (3 + 3 columns) or ``polarizability`` table (6 + 6, GPUMD's order),
    per atom as GPUMD writes them."""
    potential.eval()
    dtype = potential.e0.dtype
    rows: dict[str, list] = {"energy": [], "force": [], "virial": [], "charge": [], "charge_label": [], "bec": [], "bec_label": [],
                             "dipole": [], "polarizability": []}
    for batch in DataLoader(list(graphs), batch_size=batch_size):
        batch = batch.to(potential.e0.device)
        batch.pos = batch.pos.to(dtype)
        out = potential(batch, compute_forces=True, compute_stress=True)
        targets = residuals(batch, {k: v.detach() for k, v in out.items()})
        natoms = torch.bincount(batch.batch, minlength=batch.num_graphs).to(dtype)
        energy = targets[keys.ENERGY]
        label_e = torch.where(energy.mask, energy.label, torch.full_like(energy.label, MISSING))
        rows["energy"].append(torch.stack([energy.prediction, label_e], 1))
        forces = targets[keys.FORCES]
        label_f = torch.where(forces.mask, forces.label, torch.full_like(forces.label, MISSING))
        rows["force"].append(torch.cat([forces.prediction, label_f], 1))
        stress = targets[keys.STRESS]
        volume = torch.linalg.det(batch.cell.view(-1, 3, 3).to(dtype)).abs()
        to_virial = (-volume / natoms).view(-1, 1)
        pred, ref = _virial_order(stress.prediction) * to_virial, _virial_order(stress.label) * to_virial
        ref = torch.where(stress.mask[:, 0, 0].view(-1, 1), ref, torch.full_like(ref, MISSING))
        rows["virial"].append(torch.cat([pred, ref], 1))
        if keys.CHARGES in out:
            rows["charge"].append(out[keys.CHARGES].detach().view(-1, 1))
            label = getattr(batch, keys.CHARGES, None)
            rows["charge_label"].append(torch.full_like(out[keys.CHARGES].detach(), MISSING).view(-1, 1) if label is None
                                        else label.to(dtype).view(-1, 1))
        for key in (keys.DIPOLE, keys.POLARIZABILITY):  # a TNEP's, per atom (as its loss and GPUMD's files)
            if key in targets:
                value = targets[key]
                columns = _virial_order if key == keys.POLARIZABILITY else (lambda vectors: vectors)
                pred, ref, mask = (columns(t) for t in (value.prediction, value.label, value.mask))
                rows[key].append(torch.cat([pred, torch.where(mask, ref, torch.full_like(ref, MISSING))], 1))
        if keys.BORN_EFFECTIVE_CHARGES in out:
            bec = out[keys.BORN_EFFECTIVE_CHARGES].detach().reshape(-1, 9)
            rows["bec"].append(bec)
            label = getattr(batch, keys.BEC, None)
            labelled = label_flags(batch, keys.BEC, batch.num_graphs, bec.device)[batch.batch].view(-1, 1)
            rows["bec_label"].append(torch.full_like(bec, MISSING) if label is None
                                     else torch.where(labelled, label.to(dtype).reshape(-1, 9), torch.full_like(bec, MISSING)))
    return {name: torch.cat(value).cpu().numpy() for name, value in rows.items() if value}


def table_rmse(tables: dict[str, np.ndarray]) -> dict[str, float]:
    """GPUMD's RMSEs (energy and virial per atom, force components, charges) of the labelled
    rows of :func:`prediction_tables`; a quantity without labels is left out."""
    pairs = {
        "energy": (tables["energy"][:, :1], tables["energy"][:, 1:]),
        "force": (tables["force"][:, :3], tables["force"][:, 3:]),
        "virial": (tables["virial"][:, :6], tables["virial"][:, 6:]),
    }
    if "charge" in tables:
        pairs["charge"] = (tables["charge"], tables["charge_label"])
    if "bec" in tables:
        pairs["bec"] = (tables["bec"], tables["bec_label"])
    for name in ("dipole", "polarizability"):  # GPUMD's RMSE: over the file's 3 / 6 components
        if name in tables:
            half = tables[name].shape[1] // 2
            pairs[name] = (tables[name][:, :half], tables[name][:, half:])
    result = {}
    for name, (pred, ref) in pairs.items():
        labelled = ref != MISSING
        if labelled.any():
            result[name] = float(np.sqrt(np.mean((pred[labelled] - ref[labelled]) ** 2)))
    return result


def write_prediction_files(potential, graphs: Sequence, directory: str | os.PathLike, which: str = "train",
                           batch_size: int = 16) -> dict[str, Path]:
    """Write ``energy_<which>.out``, ``force_<which>.out`` and ``virial_<which>.out`` of ``graphs``
    (in their order) into ``directory`` (and ``charge_<which>.out`` for a charge model; a TNEP's
    ``dipole_<which>.out`` or ``polarizability_<which>.out`` instead); returns the paths."""
    from mlip_plugins.nep.loss_out import model_kind

    return write_table_files(prediction_tables(potential, graphs, batch_size), directory, which, model_kind(potential))


def write_table_files(tables: dict[str, np.ndarray], directory: str | os.PathLike, which: str,
                      kind: str = "potential") -> dict[str, Path]:
    """Write the :func:`prediction_tables` ``tables`` as GPUMD's ``<name>_<which>.out`` files, those
    GPUMD writes for a model of ``kind`` (:data:`FILES`)."""
    directory = Path(directory)
    written = {}
    for name in FILES[kind]:
        if name in tables:
            path = directory / f"{name}_{which}.out"
            atomic_write_text(_lines(tables[name]), path)
            written[name] = path
    return written


class GPUMDOutputsCallback(L.Callback):
    """Callback ``gpumd_outputs``: GPUMD's output files of a run, in the run directory.

    * ``loss.out`` (:mod:`mlip_plugins.nep.loss_out`): every ``loss_interval`` generations
      (optimizer steps; GPUMD's ``output_interval``, 100 by default) and at the end of
      fitting, a row with the training loss of that step, NEP's L1/L2 terms and the RMSEs of
      the weights used for export on the training and validation sets (GPUMD's test set);
      ``loss_interval: 0`` writes only the final row. Each RMSE row costs one evaluation of
      both sets (with forces);
    * at the end of fitting, ``*_train.out`` (and ``*_test.out`` for the validation set),
      predicted by the weights used for export (the EMA copy if enabled): energy, force and
      virial (and charge) files for a potential, dipole or polarizability files for a TNEP.

    Args:
        batch_size: structures per evaluation.
        loss_interval: generations between loss.out rows (0: the final row only).
        loss_file: where loss.out goes (default: the run directory's ``loss.out``; staged
            training points every stage at the top run directory's file).
    """

    def __init__(self, batch_size: int = 16, loss_interval: int = 100, loss_file: str | None = None):
        super().__init__()
        self.batch_size = int(batch_size)
        self.loss_interval = int(loss_interval)
        self.loss_file = loss_file
        self._header: str | None = None

    @staticmethod
    def _potential(pl_module):
        return getattr(pl_module, "eval_model", pl_module.model)

    def _loss_path(self, trainer: L.Trainer) -> Path:
        return Path(self.loss_file) if self.loss_file else Path(trainer.default_root_dir) / "loss.out"

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from mlip_plugins.nep.loss_out import loss_header, model_kind

        # a fresh fit starts a new block (generations from zero, as GPUMD after a restart); a
        # resumed one continues the block it left
        resumed = trainer.global_step > 0 and self._loss_path(trainer).exists()
        self._kind = model_kind(self._potential(pl_module))
        self._header = None if resumed else loss_header(self._kind)
        self._last_row = -1

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        # the row of generation k is written before step k + 1 (the last one at the end of fitting):
        # callbacks' batch-end hooks run before the module's, which updates the EMA weights
        # that the row evaluates
        step = trainer.global_step
        if self.loss_interval > 0 and step > 0 and step % self.loss_interval == 0:
            self._write_loss_row(trainer, pl_module)

    def _tables(self, trainer: L.Trainer, potential) -> dict[str, dict[str, np.ndarray]]:
        """:func:`prediction_tables` of the training set ("train") and the validation set
        ("test", GPUMD's name for it), those that are not empty."""
        datamodule = trainer.datamodule
        sets = (("train", getattr(datamodule, "train_graphs", [])), ("test", getattr(datamodule, "val_graphs", [])))
        with torch.enable_grad():  # forces are -dE/dpos
            return {which: prediction_tables(potential, graphs, self.batch_size) for which, graphs in sets if graphs}

    def _write_loss_row(self, trainer: L.Trainer, pl_module: L.LightningModule, tables: dict | None = None) -> None:
        """Append the row of the current generation to loss.out (``tables``: the sets' prediction
        tables if already computed for these weights)."""
        from mlip_plugins.nep.loss_out import append_loss, format_loss_row

        if trainer.global_rank != 0 or trainer.global_step == self._last_row:
            return
        loss = trainer.callback_metrics.get("train/loss_step", trainer.callback_metrics.get("train/loss", float("nan")))
        l1, l2 = regularization_terms(pl_module.model)
        if tables is None:
            potential = self._potential(pl_module)
            was_training = potential.training
            tables = self._tables(trainer, potential)
            potential.train(was_training)
        rmse = {which: table_rmse(tables[which]) if which in tables else {} for which in ("train", "test")}
        row = format_loss_row(trainer.global_step, float(loss), l1, l2, rmse["train"], rmse["test"], self._kind)
        append_loss(self._loss_path(trainer), row, self._header)
        self._header = None
        self._last_row = trainer.global_step

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_rank != 0:
            return
        tables = self._tables(trainer, self._potential(pl_module))  # one evaluation for loss.out and the files
        self._write_loss_row(trainer, pl_module, tables)
        for which, table in tables.items():
            write_table_files(table, trainer.default_root_dir, which, self._kind)


def regularization_terms(model: torch.nn.Module) -> tuple[float, float]:
    """NEP's (L1, L2) terms, summed over the NEP models in ``model``: lambda_1 mean|z| and
    lambda_2 sqrt(mean z^2) (0 where a lambda is 0)."""
    from mlip_plugins.nep.model import nep_models, nep_regularization

    l1 = l2 = 0.0
    with torch.no_grad():
        for nep in nep_models(model):
            if nep.lambda_1:
                l1 += float(nep_regularization(nep, nep.lambda_1, 0.0))
            if nep.lambda_2:
                l2 += float(nep_regularization(nep, 0.0, nep.lambda_2))
    return l1, l2
