"""End-to-end training: the Hydra app, run directory contents, resume, DDP, loggers, ASE use."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module

from lightning_modules.train import run_training

TINY = ["model=composable", "model.energy.descriptor.n_max=3", "model.energy.descriptor.basis_size=4", "model.energy.readout.hidden=[8]",
        "model.cutoff=4.0", "data.batch_size=4", "trainer.enable_progress_bar=false", "scheduler.warmup_steps=2"]


def compose_config(overrides: list[str]):
    with initialize_config_module("mlip_plugins.conf", version_base=None):
        return compose("train", overrides=overrides)


def cli(args: list[str], cwd, env=None, timeout=400):
    return subprocess.run([sys.executable, "-m", "lightning_modules.train", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def test_cli_end_to_end_writes_a_complete_run_directory(tmp_path, tiny_xyz):
    run_dir = tmp_path / "run"
    result = cli([f"data.path={tiny_xyz}", "trainer.max_epochs=2", f"hydra.run.dir={run_dir}", *TINY,
                  "logger=[csv,tensorboard,wandb]"], tmp_path, env={"WANDB_MODE": "offline"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Final validation errors" in result.stdout and "F " in result.stdout
    for name in ("checkpoints/last.ckpt", "config.yaml", "parity.png", "metrics.json", "split.json", "logs/metrics.csv"):
        assert (run_dir / name).exists(), name
    assert any((run_dir / "tensorboard").rglob("events.out.tfevents*"))
    assert any((run_dir / "wandb").glob("offline-run-*"))
    # the checkpoint loads safely and is an ASE calculator
    from mlip_plugins.calculator import MLIPCalculator
    from mlip_plugins.data.default_dataset import generate_default_dataset

    atoms = generate_default_dataset(2, seed=5)[0]
    atoms.calc = MLIPCalculator.from_file(run_dir / "checkpoints" / "last.ckpt")
    assert np.isfinite(atoms.get_potential_energy())
    assert atoms.get_forces().shape == (len(atoms), 3)
    assert atoms.get_stress().shape == (6,)
    # mlip-eval on the same file
    evaluation = subprocess.run([sys.executable, "-m", "mlip_plugins.cli.evaluate", str(run_dir / "checkpoints" / "last.ckpt"),
                                 str(tiny_xyz), "-o", str(tmp_path / "eval"), "--group-by", "config_type"],
                                capture_output=True, text=True, timeout=200)
    assert evaluation.returncode == 0, evaluation.stderr
    assert (tmp_path / "eval" / "metrics.json").exists() and (tmp_path / "eval" / "parity.png").exists()
    # --group-by: the groups partition the file, and their energy MAEs average to the whole file's
    import json

    from ase.io import read

    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    groups = {k: v for k, v in metrics["groups"].items() if k != "key"}
    tags = [a.info["config_type"] for a in read(tiny_xyz, ":")]
    assert metrics["groups"]["key"] == "config_type" and {k: v["structures"] for k, v in groups.items()} == {t: tags.count(t) for t in set(tags)}
    weighted = sum(v["structures"] * v["energy_mae"] for v in groups.values()) / len(tags)
    assert abs(weighted - metrics["energy_mae"]) < 1e-6 * metrics["energy_mae"] and "errors by config_type" in evaluation.stdout


def test_help_lists_config_groups(tmp_path):
    result = cli(["--help"], tmp_path, timeout=100)
    assert result.returncode == 0
    for group in ("data:", "model:", "trainer:", "logger:", "callbacks:", "experiment:"):
        assert group in result.stdout, group


def _parameters(ckpt_path):
    state = torch.load(ckpt_path, weights_only=True)["state_dict"]
    return {k: v for k, v in state.items() if k.startswith("model.")}


class StopAfterEpoch:
    """Interrupt a run at the end of an epoch, as a crash would (the schedule is unchanged)."""

    def __new__(cls, epoch: int):
        from lightning.pytorch.callbacks import Callback

        class _Stop(Callback):
            def on_train_epoch_end(self, trainer, pl_module):
                if trainer.current_epoch + 1 >= epoch:
                    trainer.should_stop = True

        return _Stop()


def test_resume_matches_uninterrupted_run_float64(tmp_path, tiny_xyz):
    common = [f"data.path={tiny_xyz}", "experiment=float64", *TINY, "logger=[]", "ema={decay: 0.9}", "trainer.max_epochs=4"]
    full = run_training(compose_config([*common, f"run_dir={tmp_path / 'full'}"]))
    run_training(compose_config([*common, f"run_dir={tmp_path / 'part'}",
                                 "+callbacks.stop={_target_: test_train.StopAfterEpoch, epoch: 2}"]))
    resumed = run_training(compose_config([*common, f"run_dir={tmp_path / 'part'}",
                                           f"ckpt_path={tmp_path / 'part' / 'checkpoints' / 'last.ckpt'}"]))
    a, b = _parameters(full["last_ckpt"]), _parameters(resumed["last_ckpt"])
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= 1e-10


def test_ddp_two_cpu_processes_one_checkpoint(tmp_path, tiny_xyz):
    run_dir = tmp_path / "ddp"
    result = cli([f"data.path={tiny_xyz}", "trainer=ddp", "trainer.accelerator=cpu", "trainer.max_epochs=1",
                  f"hydra.run.dir={run_dir}", *TINY, "logger=[]"], tmp_path, timeout=500)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in output
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("*.ckpt")) == ["best.ckpt", "last.ckpt"]
    assert output.count("Final validation errors") == 1


def test_the_epochs_loss_terms_add_up_to_its_logged_loss(tmp_path, tiny_xyz):
    """``train/loss_<term>`` are the epoch's structure-weighted means of the terms, logged once
    per epoch: with unit weights on raw terms (one stage) they add up to ``train/loss_epoch``."""
    import csv

    cfg = compose_config([f"data.path={tiny_xyz}", *TINY, "trainer.max_epochs=3", "loss.energy=1.0", "loss.forces=1.0",
                          "loss.stress=0.0", "loss.normalize=none", "loss.final=null", "logger=[csv]", f"run_dir={tmp_path / 'run'}"])
    run_training(cfg)
    with open(tmp_path / "run" / "logs" / "metrics.csv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("train/loss_epoch")]
    assert len(rows) == 3
    for row in rows:
        total = float(row["train/loss_energy"]) + float(row["train/loss_forces"])
        assert total == pytest.approx(float(row["train/loss_epoch"]), rel=1e-5)
