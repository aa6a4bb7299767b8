"""Training a qNEP (GPUMD's charge NEP) with gradients from a nep.in with charge_mode 1 | 2, with
charge and Born-effective-charge loss terms, and exporting a nep.txt that calorine evaluates alike."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import bulk

DATASETS = Path(os.environ.get("MLIP_DATASETS", Path(__file__).resolve().parents[3] / "shared" / "datasets"))
QNEP = DATASETS / "gpumd_qnep" / "nep.txt"
needs_qnep = pytest.mark.skipif(not QNEP.exists(), reason=f"GPUMD's qNEP example not found at {QNEP} (set MLIP_DATASETS)")


def labelled_pbte(n: int, seed: int = 0) -> list:
    """Rattled 8-atom PbTe cells labelled by GPUMD's qNEP PbTe model (calorine): energy, forces,
    charges and Born effective charges (GPUMD's bec:R:9 layout)."""
    from ase.calculators.singlepoint import SinglePointCalculator
    from calorine.calculators import CPUNEP

    calc = CPUNEP(str(QNEP))
    frames = []
    for k in range(n):
        atoms = bulk("PbTe", "rocksalt", a=6.46, cubic=True)
        atoms.rattle(0.08, seed=seed + k)
        atoms.calc = calc
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        charges = np.array(atoms.calc.results["charges"])
        bec = np.array(atoms.calc.results["born_effective_charges"]).reshape(len(atoms), 9)
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        atoms.arrays["charges"] = charges
        atoms.arrays["bec"] = bec
        frames.append(atoms)
    return frames


def test_nep_in_charge_mode_sets_the_qnep(tmp_path):
    from mlip_plugins.nep.nep_in import NEPInputError, nep_in_to_overrides

    path = tmp_path / "nep.in"
    path.write_text("type 2 Te Pb\ncharge_mode 1\n")
    assert nep_in_to_overrides(path)["model"]["energy"]["model"]["charge_mode"] == 1
    path.write_text("type 2 Te Pb\nversion 3\ncharge_mode 2\n")
    with pytest.raises(NEPInputError, match="line 3: charge_mode 2: a qNEP is a NEP4 model"):
        nep_in_to_overrides(path)


@needs_qnep
def test_bec_labels_train_the_bec_scale(tmp_path, float64):
    """A loss with only a BEC term has gradients on the charge network and on sqrt(eps_inf)."""
    from ase.io import write
    from torch_geometric.data import Batch

    from lightning_modules.module import PotentialModule
    from mlip_plugins.data.loading import load_graph_file
    from mlip_plugins.data.structures import LabelKeys

    path = tmp_path / "pbte.xyz"
    write(path, labelled_pbte(2), format="extxyz")
    graphs = load_graph_file(str(path), 5.0, LabelKeys(), use_cache=False)
    assert bool(graphs[0].has_bec) and graphs[0].bec.shape == (8, 3, 3)
    model = {"elements": ["Te", "Pb"], "cutoff": 5.0,
             "energy": {"model": {"name": "nep", "cutoff": 5.0, "cutoff_angular": 4.0, "n_max": [2, 2], "basis_size": [3, 3],
                                  "l_max": [2, 0, 0], "neuron": 4, "charge_mode": 2}}}
    module = PotentialModule(model, loss={"energy": 0.0, "forces": 0.0, "bec": 1.0})
    loss = module.training_step(Batch.from_data_list(graphs), 0)
    loss.backward()
    nep = module.model.energy_model
    assert float(loss) > 0 and nep.sqrt_epsilon_inf.grad.abs() > 0 and nep.w1_charge.grad.abs().sum() > 0


@needs_qnep
@pytest.mark.parametrize("charge_mode", [1, 2])
def test_a_qnep_trained_from_nep_in_exports_what_calorine_evaluates(tmp_path, charge_mode):
    from ase.io import write
    from calorine.calculators import CPUNEP
    from hydra import compose, initialize_config_module

    from lightning_modules.train import run_training
    from mlip_plugins.calculator import MLIPCalculator
    from mlip_plugins.checkpoint import load_potential
    from mlip_plugins.cli.export import main as export_main

    data = tmp_path / "pbte.xyz"
    write(data, labelled_pbte(6), format="extxyz")
    nep_in = tmp_path / "nep.in"
    nep_in.write_text(f"type 2 Te Pb\nversion 4\ncharge_mode {charge_mode}\ncutoff 5 4\nn_max 2 2\nbasis_size 3 3\n"
                      "l_max 4 2 0\nneuron 4\nbatch 2\ngeneration 4\noutput_interval 2\n")
    with initialize_config_module("mlip_plugins.conf", version_base=None):
        cfg = compose("train", overrides=[f"data.path={data}", "data.file_format=extxyz", "experiment=nep", f"nep_in={nep_in}",
                                          f"run_dir={tmp_path / 'run'}", "dtype=float64", "loss.charges=1.0", "loss.bec=1.0",
                                          "trainer.enable_progress_bar=false", "logger=[]"])
    result = run_training(cfg)
    run = Path(result["run_dir"])
    from calorine.nep import read_loss

    loss = read_loss(str(run / "loss.out"))  # a charge model's 14 columns, with charge and BEC errors
    assert np.loadtxt(run / "loss.out", ndmin=2).shape[1] == 14
    assert loss["RMSE_Q_train"].iloc[-1] > 0 and loss["RMSE_Z_train"].iloc[-1] > 0 and loss["RMSE_Z_test"].iloc[-1] > 0
    out = tmp_path / "qnep.txt"
    assert export_main([result["last_ckpt"], "-o", str(out)]) == 0
    assert out.read_text().startswith(f"nep4_charge{charge_mode} 2 Te Pb")
    atoms = bulk("PbTe", "rocksalt", a=6.46, cubic=True).repeat((2, 1, 1))
    atoms.rattle(0.1, seed=7)
    ours, theirs = atoms.copy(), atoms.copy()
    ours.calc = MLIPCalculator(load_potential(result["last_ckpt"]), dtype=torch.float64)
    theirs.calc = CPUNEP(str(out))
    n = len(atoms)
    assert abs(ours.get_potential_energy() - theirs.get_potential_energy()) / n < 1e-6
    np.testing.assert_allclose(ours.get_forces(), theirs.get_forces(), atol=1e-5)
    np.testing.assert_allclose(ours.calc.results["charges"], theirs.calc.results["charges"], atol=1e-6)
    np.testing.assert_allclose(np.reshape(ours.calc.results["born_effective_charges"], (n, 9)),
                               np.reshape(theirs.calc.results["born_effective_charges"], (n, 9)), atol=1e-6)
