"""``nep_scaler`` callback: fit NEP's descriptor scaler on the training set when fitting starts.

GPUMD scales every descriptor component by a fixed 1 / (max - min) over the training atoms,
computed once before training and stored in nep.txt. This callback computes it (with the
model's initial coefficients, as GNEP does) for every NEP model in ``pl_module.model`` (and
its EMA copy) at ``on_fit_start``. A model restored from a checkpoint keeps its scaler.

GPUMD has no global energy scale: a fresh run also resets the Potential's ``energy_scale`` to 1
(``unit_energy_scale``), so that a ZBL term stays physical and the model exports exactly.
"""

from __future__ import annotations

import logging

import lightning as L
import torch

from mlip_plugins.nep.model import fit_descriptor_scaler, nep_models

log = logging.getLogger(__name__)


class NEPScalerCallback(L.Callback):
    """Fit ``q_scaler`` (and ``max_neighbors``) of NEP models from the datamodule's training graphs.

    Args:
        batch_size: structures per descriptor evaluation.
        unit_energy_scale: set the Potential's energy scale to 1 on a fresh run.
    """

    def __init__(self, batch_size: int = 32, unit_energy_scale: bool = True):
        super().__init__()
        self.batch_size = int(batch_size)
        self.unit_energy_scale = bool(unit_energy_scale)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        potential = pl_module.model
        models = nep_models(potential)
        if not models or all(bool(m.scaler_fitted) for m in models):
            return
        datamodule = trainer.datamodule
        graphs = getattr(datamodule, "train_graphs", None)
        if not graphs:
            raise RuntimeError("nep_scaler: the datamodule has no train_graphs to fit the NEP descriptor scaler on")
        count = fit_descriptor_scaler(potential, graphs, batch_size=self.batch_size)
        if self.unit_energy_scale:
            with torch.no_grad():
                potential.energy_scale.fill_(1.0)
        ema = getattr(pl_module, "ema", None)
        if ema is not None:
            ema.module.load_state_dict(potential.state_dict())
        log.info("nep_scaler: fitted the descriptor scaler of %d NEP model(s) on %d structures", count, len(graphs))
