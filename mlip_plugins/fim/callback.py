"""``fisher`` callback: the sloppiness report of the model being trained, every N epochs and at the end.

On a fixed probe set (the first ``probe_size`` training structures) it computes the Fisher
information of the weighted residuals (see :mod:`mlip_plugins.fim`), logs its scalar metrics
(``fim/condition_number``, ``fim/n_sloppy``, ``fim/effective_dimension``, ...) to every logger,
and writes ``fisher/epochNNNN.json`` plus spectrum and attribution plots into the run
directory (``trainer.default_root_dir``); the last one is ``fisher/final.*``, and
``fisher/history.json`` collects the metrics of every evaluation.

Only global rank 0 computes (the analysis uses no collective operation, so other DDP ranks
simply carry on). The analysis runs on a float64 copy of the model, leaving training untouched.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import lightning as L
import torch

from mlip_plugins.fim.fisher import FisherWeights
from mlip_plugins.fim.probe import select_probe
from mlip_plugins.fim.report import FisherReport, analyse

log = logging.getLogger(__name__)


class FisherCallback(L.Callback):
    """Fisher-information (sloppiness) analysis during training.

    Args:
        every_n_epochs: analyse after every N-th training epoch (0 disables the periodic runs).
        probe_size: number of training structures in the fixed probe set.
        energy_weight, forces_weight, stress_weight: residual weights (0 leaves a property out).
        method: ``auto``, ``exact`` or ``lanczos`` (matrix-free top-k for large models).
        sloppy_threshold: relative eigenvalue below which a direction counts as sloppy.
        top_k: eigenpairs of the matrix-free method.
        n_modes: stiffest/sloppiest modes described in the report.
        max_exact_params: above this the ``auto`` method goes matrix-free.
        at_train_end: also analyse once training ends (``fisher/final``).
        plots: write the PNG figures (the JSON is always written).
        use_eval_model: analyse the weights used for validation and export (the EMA copy when
            the module keeps one) instead of the raw training weights.
        output_subdir: folder of the run directory that receives the files.
        probe_selection: ``first`` (the first ``probe_size`` training structures) or
            ``diverse`` (cover every element pair first, see :mod:`mlip_plugins.fim.probe`).
    """

    def __init__(
        self,
        every_n_epochs: int = 5,
        probe_size: int = 8,
        energy_weight: float = 1.0,
        forces_weight: float = 1.0,
        stress_weight: float = 1.0,
        method: str = "auto",
        sloppy_threshold: float = 1e-6,
        top_k: int = 20,
        n_modes: int = 5,
        max_exact_params: int = 20000,
        at_train_end: bool = True,
        plots: bool = True,
        use_eval_model: bool = True,
        output_subdir: str = "fisher",
        probe_selection: str = "first",
    ):
        super().__init__()
        if every_n_epochs < 0 or probe_size < 1:
            raise ValueError("fisher callback: every_n_epochs must be >= 0 and probe_size >= 1")
        self.every_n_epochs = int(every_n_epochs)
        self.probe_size = int(probe_size)
        self.weights = FisherWeights(energy=energy_weight, forces=forces_weight, stress=stress_weight)
        self.method = method
        self.sloppy_threshold = float(sloppy_threshold)
        self.top_k = int(top_k)
        self.n_modes = int(n_modes)
        self.max_exact_params = int(max_exact_params)
        self.at_train_end = bool(at_train_end)
        self.plots = bool(plots)
        self.use_eval_model = bool(use_eval_model)
        self.output_subdir = output_subdir
        self.probe_selection = probe_selection
        self.history: list[dict] = []
        self.last_report: FisherReport | None = None
        self._last_epoch: int | None = None

    # -- helpers -----------------------------------------------------------------------
    def probe_graphs(self, trainer: L.Trainer) -> list:
        """``probe_size`` training graphs (``trainer.datamodule.train_graphs``), see ``probe_selection``."""
        datamodule = getattr(trainer, "datamodule", None)
        graphs = getattr(datamodule, "train_graphs", None)
        if graphs is None:
            loader = trainer.train_dataloader
            dataset = getattr(loader, "dataset", None)
            graphs = list(dataset) if dataset is not None else None
        if not graphs:
            raise RuntimeError("fisher callback: no training graphs found (needs trainer.datamodule.train_graphs)")
        return select_probe(list(graphs), self.probe_size, self.probe_selection)

    def output_dir(self, trainer: L.Trainer) -> Path:
        return Path(trainer.default_root_dir) / self.output_subdir

    def _model(self, pl_module: L.LightningModule):
        if self.use_eval_model and getattr(pl_module, "eval_model", None) is not None:
            return pl_module.eval_model
        return pl_module.model

    def analyse(self, trainer: L.Trainer, pl_module: L.LightningModule, tag: str) -> FisherReport | None:
        """Run the analysis now, log it and write its files; returns the report (rank 0 only)."""
        if not trainer.is_global_zero:
            return None
        with torch.enable_grad():
            report = analyse(
                self._model(pl_module), self.probe_graphs(trainer), weights=self.weights, method=self.method,
                sloppy_threshold=self.sloppy_threshold, n_modes=self.n_modes, top_k=self.top_k,
                max_exact_params=self.max_exact_params,
            )
        epoch = int(trainer.current_epoch)
        scalars = report.scalars()
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=int(trainer.global_step))
        directory = self.output_dir(trainer)
        directory.mkdir(parents=True, exist_ok=True)
        report.settings.update({"epoch": epoch, "global_step": int(trainer.global_step), "tag": tag,
                                "probe_size": self.probe_size})
        report.save_json(directory / f"{tag}.json")
        if self.plots:
            from mlip_plugins.fim.plots import plot_attribution, plot_spectrum

            plot_spectrum(report, directory / f"{tag}_spectrum.png", title=f"FIM spectrum, {tag} ({report.n_params} parameters)")
            plot_attribution(report, directory / f"{tag}_attribution.png")
        self.history.append({"tag": tag, "epoch": epoch, "global_step": int(trainer.global_step), **report.metrics})
        (directory / "history.json").write_text(json.dumps(self.history, indent=1, default=str))
        self.last_report = report
        self._last_epoch = epoch
        m = report.metrics
        log.info("fisher %s: %d params, condition %s, %s sloppy, effective dim %s (%.1f s)", tag, report.n_params,
                 m.get("condition_number"), m.get("n_sloppy"), m.get("effective_dimension"), m.get("seconds", 0.0))
        return report

    # -- hooks -------------------------------------------------------------------------
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.every_n_epochs == 0:
            return
        epoch = int(trainer.current_epoch)
        if (epoch + 1) % self.every_n_epochs == 0:
            self.analyse(trainer, pl_module, f"epoch{epoch:04d}")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.at_train_end:
            self.analyse(trainer, pl_module, "final")
            for logger in trainer.loggers:
                logger.save()

    def state_dict(self) -> dict:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = list(state_dict.get("history", []))
