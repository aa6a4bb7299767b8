"""Our energy/force/virial_train.out of GPUMD's PbTe nep.txt reproduce GPUMD's own files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

DATASETS = Path(os.environ.get("MLIP_DATASETS", Path(__file__).resolve().parents[3] / "shared" / "datasets"))
PBTE = DATASETS / "gpumd_pbte"


@pytest.mark.skipif(not (PBTE / "nep.txt").exists(), reason=f"GPUMD PbTe example not found at {PBTE} (set MLIP_DATASETS)")
def test_prediction_files_match_gpumds(tmp_path, float64):
    from mlip_plugins.data.loading import load_graph_file
    from mlip_plugins.data.structures import LabelKeys
    from mlip_plugins.nep.gpumd_outputs import write_prediction_files
    from mlip_plugins.nep.nep_txt import load_nep_potential

    potential = load_nep_potential(PBTE / "nep.txt")
    graphs = load_graph_file(str(PBTE / "train.xyz"), potential.cutoff, LabelKeys(), use_cache=False)[:6]
    files = write_prediction_files(potential, graphs, tmp_path)
    n_atoms = sum(int(g.num_nodes) for g in graphs)
    for name, rows in (("energy", len(graphs)), ("force", n_atoms), ("virial", len(graphs))):
        ours = np.loadtxt(files[name])
        gpumd = np.loadtxt(PBTE / f"{name}_train.out")[:rows]
        assert ours.shape == gpumd.shape, name
        # GPUMD prints 6 significant digits (float32 on the GPU); forces agree to ~1e-5 eV/Å
        np.testing.assert_allclose(ours, gpumd, rtol=2e-5, atol=2e-5, err_msg=name)


def test_a_gnep_run_writes_gpumds_prediction_files(tmp_path, cuau_frames):
    from ase.io import write

    from hydra import compose, initialize_config_module

    from lightning_modules.train import run_training

    data = tmp_path / "cuau.xyz"
    frames = cuau_frames(8, 0)
    write(data, frames, format="extxyz")
    with initialize_config_module("mlip_plugins.conf", version_base=None):
        cfg = compose("train", overrides=[f"data.path={data}", "data.file_format=extxyz", "experiment=nep", f"run_dir={tmp_path / 'run'}",
                          "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "logger=[]",
                          "model.energy.model.n_max=[2,2]", "model.energy.model.basis_size=[3,3]",
                                          "model.energy.model.neuron=4"])
    result = run_training(cfg)
    run = Path(result["run_dir"])
    train = np.loadtxt(run / "energy_train.out", ndmin=2)
    test = np.loadtxt(run / "energy_test.out", ndmin=2)
    assert train.shape[1] == 2 and len(train) + len(test) <= len(frames) and len(train) >= 1
    assert np.loadtxt(run / "force_train.out", ndmin=2).shape == (4 * len(train), 6)
    virial = np.loadtxt(run / "virial_train.out", ndmin=2)
    assert virial.shape == (len(train), 12) and np.all(virial[:, 6:] != -1e6)  # EMT frames carry stress
