"""The ``fisher`` callback inside a real (tiny) training run selected from the Hydra config tree."""

from __future__ import annotations

import csv
import json

import torch
from hydra import compose, initialize_config_module

from mlip_plugins import registry

TINY = ["model=composable", "model.energy.descriptor.n_max=2", "model.energy.descriptor.basis_size=3", "model.energy.readout.hidden=[4]",
        "model.cutoff=4.0", "data.batch_size=8", "trainer.enable_progress_bar=false", "scheduler.warmup_steps=1",
        "data.val_fraction=0.2", "data.test_fraction=0.0"]


def test_fisher_callback_in_training_run(tmp_path, tiny_xyz):
    from lightning_modules.train import run_training

    assert registry.resolve("callbacks", "fisher").__name__ == "FisherCallback"
    run_dir = tmp_path / "run"
    overrides = [f"data.path={tiny_xyz}", "trainer.max_epochs=2", f"run_dir={run_dir}", *TINY, "callbacks=[default,fisher]",
                 "callbacks.fisher.every_n_epochs=1", "callbacks.fisher.probe_size=2", "callbacks.fisher.plots=false"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with initialize_config_module("mlip_plugins.conf", version_base=None):
            cfg = compose("train", overrides=overrides)
        run_training(cfg)
    finally:
        torch.set_num_threads(threads)
        torch.set_default_dtype(torch.float32)
    fisher = run_dir / "fisher"
    for name in ("epoch0000.json", "epoch0001.json", "final.json", "history.json"):
        assert (fisher / name).exists(), name
    report = json.loads((fisher / "final.json").read_text())
    assert report["method"] == "exact" and report["n_params"] == len(report["eigenvalues"])
    assert report["metrics"]["lambda_max"] > 0 and report["terms"][0]["name"] == "main"
    assert len(json.loads((fisher / "history.json").read_text())) == 3
    with open(run_dir / "logs" / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    logged = [r for r in rows if r.get("fim/condition_number")]
    assert len(logged) == 3 and all(float(r["fim/n_sloppy"]) >= 0 for r in logged)


def test_fisher_callback_writes_plots(tmp_path):
    """Plots are written next to the JSON when enabled (no training needed: a stub trainer)."""
    from types import SimpleNamespace

    import numpy as np
    from ase.build import bulk
    from ase.calculators.emt import EMT

    from mlip_plugins.fim.callback import FisherCallback
    from mlip_plugins.data.structures import atoms_to_graph
    from mlip_plugins.models import build_potential

    torch.manual_seed(0)
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.positions += np.random.default_rng(0).normal(scale=0.05, size=(4, 3))
    atoms.calc = EMT()
    graph = atoms_to_graph(atoms, 4.0, {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()})
    potential = build_potential({"elements": ["Cu"], "cutoff": 4.0, "energy": {
        "descriptor": {"name": "radial", "n_max": 2, "basis_size": 3}, "readout": {"name": "linear"}, "name": "lin"}})
    logged = []
    logger = SimpleNamespace(log_metrics=lambda metrics, step: logged.append(metrics), save=lambda: None)
    trainer = SimpleNamespace(is_global_zero=True, datamodule=SimpleNamespace(train_graphs=[graph]), current_epoch=4,
                              global_step=10, loggers=[logger], default_root_dir=str(tmp_path), sanity_checking=False)
    callback = FisherCallback(every_n_epochs=5, probe_size=3)
    callback.on_train_epoch_end(trainer, SimpleNamespace(model=potential))
    for name in ("epoch0004.json", "epoch0004_spectrum.png", "epoch0004_attribution.png"):
        assert (tmp_path / "fisher" / name).stat().st_size > 0, name
    assert logged and "fim/effective_dimension" in logged[0]
