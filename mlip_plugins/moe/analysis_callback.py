"""``moe_analysis`` callback: per-element routing statistics and PCA plot at the end of fitting.

At ``on_fit_end`` (rank zero only) it writes ``moe_routing.json``, ``moe_routing.csv`` and
``moe_pca_<layer>.png`` (see :mod:`mlip_plugins.moe.analysis`) into
``<run directory>/<dirname>`` (``trainer.default_root_dir``, as the ``fisher`` callback; not the
logger's ``logs/`` folder). Element-wise routers are read from their
gate table; other routers are averaged over up to ``max_structures`` structures of the
datamodule's ``split`` (``val``, falling back to ``train``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import lightning as L

from mlip_plugins.moe.analysis import write_moe_analysis

log = logging.getLogger(__name__)


class MoEAnalysisCallback(L.Callback):
    """Write routing statistics of every routed MoE layer when ``fit`` ends.

    Args:
        dirname: sub-directory of the run directory for the outputs.
        split: datamodule split whose structures feed data-dependent routers (``val``/``train``/``test``).
        max_structures: at most this many structures are passed through the model.
        batch_size: structures per forward pass.
        plot: write the PCA plot.
    """

    def __init__(self, dirname: str = "moe_analysis", split: str = "val", max_structures: int = 256, batch_size: int = 16, plot: bool = True):
        super().__init__()
        self.dirname = dirname
        self.split = split
        self.max_structures = int(max_structures)
        self.batch_size = int(batch_size)
        self.plot = bool(plot)
        self.last_summary: dict | None = None

    def _graphs(self, trainer: L.Trainer) -> list:
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is None:
            return []
        for split in (self.split, "train"):
            graphs = getattr(datamodule, f"{split}_graphs", None)
            if graphs:
                return list(graphs)[: self.max_structures]
        return []

    def output_dir(self, trainer: L.Trainer) -> Path:
        root = trainer.default_root_dir or trainer.log_dir or os.getcwd()
        return Path(root) / self.dirname

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        model = getattr(pl_module, "eval_model", None) or getattr(pl_module, "model", pl_module)
        summary = write_moe_analysis(model, self.output_dir(trainer), self._graphs(trainer), self.batch_size, self.plot)
        self.last_summary = summary
        if summary["layers"]:
            log.info("moe_analysis: wrote %s", ", ".join(summary["files"]))
        else:
            log.info("moe_analysis: the model has no routed MoE layer; nothing written")
