"""Training that GPUMD users recognise: loss.out, staged training, fine-tuning from a nep.txt."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

DATASETS = Path(os.environ.get("MLIP_DATASETS", Path(__file__).resolve().parents[3] / "shared" / "datasets"))
PBTE = DATASETS / "gpumd_pbte"
TINY_NEP = ["model.energy.model.n_max=[2,2]", "model.energy.model.basis_size=[3,3]", "model.energy.model.neuron=4"]


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_module

    with initialize_config_module("mlip_plugins.conf", version_base=None):
        return compose("train", overrides=overrides)


def _cuau_data(tmp_path, cuau_frames, n=8):
    from ase.io import write

    data = tmp_path / "cuau.xyz"
    write(data, cuau_frames(n, 0), format="extxyz")
    return data


def test_loss_out_has_gpumds_columns_and_the_final_rmses(tmp_path, cuau_frames):
    from calorine.nep import read_loss

    from lightning_modules.train import run_training

    data = _cuau_data(tmp_path, cuau_frames)
    cfg = _compose([f"data.path={data}", "data.file_format=extxyz", "experiment=nep", f"run_dir={tmp_path / 'run'}",
                    "trainer.max_epochs=2", "trainer.enable_progress_bar=false", "logger=[]", "data.batch_size=2",
                    "callbacks.gpumd_outputs.loss_interval=1", "model.energy.model.lambda_1=0.01", *TINY_NEP])
    run = Path(run_training(cfg)["run_dir"])
    loss = read_loss(str(run / "loss.out"))
    assert list(loss.columns) == ["total_loss", "L1", "L2", "RMSE_E_train", "RMSE_F_train", "RMSE_V_train",
                                  "RMSE_E_test", "RMSE_F_test", "RMSE_V_test"]
    raw = np.loadtxt(run / "loss.out", ndmin=2)  # plotting scripts read it with loadtxt: 10 columns
    assert raw.shape[1] == 10
    steps = loss.index.to_numpy()
    assert steps[0] == 1 and np.all(np.diff(steps) == 1)  # one row per generation (interval 1)
    assert np.all(loss["L1"] > 0) and np.all(loss["L2"] == 0)
    # the last row's training RMSEs are those of energy/force/virial_train.out, written at the same time
    energy = np.loadtxt(run / "energy_train.out", ndmin=2)
    force = np.loadtxt(run / "force_train.out", ndmin=2)
    virial = np.loadtxt(run / "virial_train.out", ndmin=2)
    last = loss.iloc[-1]
    np.testing.assert_allclose(last["RMSE_E_train"], np.sqrt(np.mean((energy[:, 0] - energy[:, 1]) ** 2)), rtol=1e-4)
    np.testing.assert_allclose(last["RMSE_F_train"], np.sqrt(np.mean((force[:, :3] - force[:, 3:]) ** 2)), rtol=1e-4)
    np.testing.assert_allclose(last["RMSE_V_train"], np.sqrt(np.mean((virial[:, :6] - virial[:, 6:]) ** 2)), rtol=1e-4)
    assert last["RMSE_E_test"] > 0  # the validation set is GPUMD's test set


def test_staged_training_from_a_nep_in(tmp_path, cuau_frames):
    from calorine.nep import read_loss
    from omegaconf import OmegaConf

    from lightning_modules.train import run_training
    from mlip_plugins.checkpoint import load_torch_file

    data = _cuau_data(tmp_path, cuau_frames)
    nep_in = tmp_path / "nep.in"
    nep_in.write_text("type 2 Cu Au\ncutoff 5 4\nn_max 2 2\nbasis_size 3 3\nneuron 4\nbatch 2\n"
                      "generation 3 2\nlambda_e 1.0 10.0\nstart_lr 1e-3 1e-4\noutput_interval 1\n")
    cfg = _compose([f"data.path={data}", "data.file_format=extxyz", "experiment=nep", f"run_dir={tmp_path / 'run'}",
                    f"nep_in={nep_in}", "trainer.enable_progress_bar=false", "logger=[]"])
    result = run_training(cfg)
    run = tmp_path / "run"
    assert [Path(r["run_dir"]).name for r in result["stages"]] == ["stage1", "stage2"]
    second = OmegaConf.load(run / "stage2" / "config.yaml")
    assert second.trainer.max_steps == 2 and second.loss.energy == 10.0 and second.optimizer.lr == 1e-4
    # one loss.out, a header block per stage with generations from zero; calorine lays them end to end
    text = (run / "loss.out").read_text()
    assert text.count("# columns") == 2
    assert read_loss(str(run / "loss.out")).index.tolist() == [1, 2, 3, 4, 5]
    # stage 2 starts from stage 1's model: its descriptor scaler (fitted once, with stage 1's initial
    # coefficients) and E0 are stage 1's, not refitted
    states = [load_torch_file(run / s / "checkpoints" / "last.ckpt")["state_dict"] for s in ("stage1", "stage2")]
    for key in ("model.energy_model.q_scaler", "model.e0"):
        torch.testing.assert_close(states[0][key], states[1][key], rtol=0, atol=0)
    assert not torch.equal(states[0]["model.energy_model.w0"], states[1]["model.energy_model.w0"])  # and trains on


def test_nep_in_stages_need_matching_value_counts(tmp_path):
    from mlip_plugins.nep.nep_in import NEPInputError, nep_in_to_overrides

    path = tmp_path / "nep.in"
    path.write_text("type 1 Cu\ngeneration 100 50\nlambda_f 1 2 3\n")
    with pytest.raises(NEPInputError, match=r"line 3: lambda_f: expected 1 or 2 values"):
        nep_in_to_overrides(path)
    path.write_text("type 1 Cu\ngeneration 100\nlambda_f 1 2\n")
    with pytest.raises(NEPInputError, match=r"line 3: lambda_f: several values need as many stages"):
        nep_in_to_overrides(path)


@pytest.mark.skipif(not (PBTE / "nep.txt").exists(), reason=f"GPUMD PbTe example not found at {PBTE} (set MLIP_DATASETS)")
def test_fine_tuning_from_gpumds_pbte_nep_starts_at_its_loss(tmp_path):
    """init_from=nep.txt: the first step's training loss is the loaded model's loss (computed here
    from calorine's CPUNEP on the same structures), and the exported result loads in calorine."""
    import lightning as L
    from ase.io import read, write
    from calorine.calculators import CPUNEP

    import lightning_modules.train as train_app
    from lightning_modules.train import run_training
    from mlip_plugins.calculator import MLIPCalculator
    from mlip_plugins.checkpoint import load_potential
    from mlip_plugins.cli.export import main as export_main

    frames = read(PBTE / "train.xyz", index=":4")
    data = tmp_path / "pbte.xyz"
    write(data, frames, format="extxyz")
    seen = {}

    class FirstStep(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if "loss" not in seen:
                seen["loss"] = float(outputs["loss"])
                seen["sources"] = list(batch.source)

    cfg = _compose([f"data.path={data}", "data.file_format=gpumd-xyz", "experiment=nep", f"run_dir={tmp_path / 'run'}",
                    f"init_from={PBTE / 'nep.txt'}", "dtype=float64", "trainer.max_steps=1", "trainer.enable_progress_bar=false",
                    "logger=[]", "data.batch_size=4", "data.val_fraction=0.25", "data.test_fraction=0", "loss.energy=1.0",
                    "loss.forces=1.0", "loss.stress=0.0", "loss.normalize=none", "loss.final=null", "optimizer.lr=1e-6"])
    original = train_app.build_callbacks
    train_app.build_callbacks = lambda c: original(c) + [FirstStep()]
    try:
        result = run_training(cfg)
    finally:
        train_app.build_callbacks = original
    # the loaded model's loss on the same structures: MSE of energy per atom + MSE of force components
    calc = CPUNEP(str(PBTE / "nep.txt"))
    e_terms, f_terms = [], []
    for source in seen["sources"]:
        frame = frames[int(source.rsplit(":", 1)[-1])]
        e_ref = frame.get_potential_energy()
        atoms = frame.copy()
        f_ref = atoms.arrays["force"]  # GPUMD's column name
        atoms.calc = calc
        e_terms.append(((atoms.get_potential_energy() - e_ref) / len(atoms)) ** 2)
        f_terms.append((atoms.get_forces() - f_ref) ** 2)
    expected = np.mean(e_terms) + np.mean(np.concatenate(f_terms))
    np.testing.assert_allclose(seen["loss"], expected, rtol=1e-8)
    # the fine-tuned model exports to a nep.txt that calorine loads and evaluates like ours
    out = tmp_path / "fine_tuned.txt"
    assert export_main([result["last_ckpt"], "-o", str(out)]) == 0
    ours = frames[0].copy()
    ours.calc = MLIPCalculator(load_potential(result["last_ckpt"]), dtype=torch.float64)
    theirs = frames[0].copy()
    theirs.calc = CPUNEP(str(out))
    assert abs(theirs.get_potential_energy() - ours.get_potential_energy()) / len(ours) < 1e-6
    np.testing.assert_allclose(theirs.get_forces(), ours.get_forces(), atol=1e-5)
