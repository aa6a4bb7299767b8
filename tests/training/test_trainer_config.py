"""Lightning Trainer arguments in the config (issue 15, item 3) and one-line Hydra errors."""

from __future__ import annotations

import subprocess
import sys

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from lightning_modules.trainer_args import reconcile_precision, trainer_kwargs

PLAIN = ["trainer.max_time=00:00:10:00", "trainer.precision=32", "trainer.accumulate_grad_batches=2",
         "trainer.limit_train_batches=3", "trainer.limit_val_batches=0.5", "trainer.limit_test_batches=1",
         "trainer.val_check_interval=2", "trainer.check_val_every_n_epoch=2", "trainer.max_steps=7"]
TINY = ["model=composable", "model.energy.descriptor.n_max=2", "model.energy.descriptor.basis_size=3", "model.energy.readout.hidden=[4]",
        "model.cutoff=4.0", "data.batch_size=4", "trainer.enable_progress_bar=false", "trainer.max_epochs=1", "logger=[]",
        "trainer.limit_train_batches=2"]


def _compose(overrides: list[str]):
    with initialize_config_module("mlip_plugins.conf", version_base=None):
        return compose("train", overrides=overrides)


def test_common_trainer_arguments_are_plain_overrides_that_lightning_takes():
    cfg = _compose(PLAIN)
    kwargs = trainer_kwargs(OmegaConf.to_container(cfg.trainer, resolve=True))
    assert None not in kwargs.values()
    trainer = L.Trainer(**kwargs, logger=False, enable_checkpointing=False)
    assert trainer.limit_train_batches == 3 and trainer.limit_val_batches == 0.5
    assert trainer.accumulate_grad_batches == 2 and trainer.check_val_every_n_epoch == 2 and trainer.max_steps == 7


def test_every_declared_null_is_a_lightning_argument():
    import inspect

    accepted = set(inspect.signature(L.Trainer).parameters)
    declared = set(_compose([]).trainer)
    assert declared <= accepted, declared - accepted


def _run(tmp_path, tiny_xyz, overrides):
    from lightning_modules.train import run_training

    result = run_training(_compose([f"data.path={tiny_xyz}", f"run_dir={tmp_path}", *TINY, *overrides]))
    saved = OmegaConf.load(tmp_path / "config.yaml")
    state = torch.load(result["last_ckpt"], weights_only=True)["state_dict"]
    dtypes = {t.dtype for t in state.values() if t.is_floating_point()}
    return saved, dtypes


def test_precision_64_makes_the_run_float64(tmp_path, tiny_xyz):
    saved, dtypes = _run(tmp_path, tiny_xyz, ["trainer.precision=64"])
    assert saved.dtype == "float64" and str(saved.trainer.precision) == "64"
    assert dtypes == {torch.float64}


def test_dtype_float64_sets_the_precision(tmp_path, tiny_xyz):
    saved, dtypes = _run(tmp_path, tiny_xyz, ["experiment=float64"])
    assert saved.dtype == "float64" and saved.trainer.precision == "64-true"
    assert dtypes == {torch.float64}


@pytest.mark.parametrize(("precision", "dtype"), [(None, "float32"), ("32-true", "float32"), ("bf16-mixed", "float32"),
                                                  ("64-true", "float64"), (64, "float64")])
def test_reconcile_precision(precision, dtype):
    cfg = OmegaConf.create({"dtype": "float64" if precision == "bf16-mixed" else "float32", "trainer": {"precision": precision}})
    reconcile_precision(cfg)
    assert cfg.dtype == dtype
    assert cfg.trainer.precision == (precision if precision is not None else "32-true")


def _cli(args: list[str], tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lightning_modules.train", *args, f"hydra.run.dir={tmp_path / 'run'}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=200)


@pytest.mark.parametrize(("override", "expected"), [
    ("trainer.max_tme=00:01:00:00", "did you mean trainer.max_time"),
    ("trainer.track_grad_norm=2", "+trainer.track_grad_norm=..."),
    ("+trainer.max_epochs=3", "without the '+'"),
    ("+model.energy={product: [\n  {name: a}]}", "one line"),
    ("model=composabel", "did you mean model=composable?"),           # not 17-24 lines of search path
    ("logger=[csv,tensorbord]", "did you mean logger=tensorboard?"),
])
def test_a_bad_override_is_one_line_with_a_hint(tmp_path, override, expected):
    result = _cli([override], tmp_path)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("mlip-train: error: ") and expected in lines[0]


def test_help_names_the_app(tmp_path):
    result = subprocess.run([sys.executable, "-m", "lightning_modules.train", "--help"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=200)
    assert result.returncode == 0 and result.stdout.startswith("mlip-train is powered by Hydra"), result.stdout[:200]
