"""GPUMD's train.xyz in every command (issue 15, item 5): the conventions (lower-case ``lattice``/
``properties``, a ``force`` column, ``virial``) are detected from the header, so mlip-train (without
experiment=nep), mlip-eval and mlip-fim read the file; ``--cfg job`` shows nep.in's keywords merged."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_module

from mlip_plugins.data.reading import detect_format, read_structures

DATASETS = Path(os.environ.get("MLIP_DATASETS", Path(__file__).resolve().parents[2] / "shared" / "datasets"))
TINY = ["model=composable", "model.energy.descriptor.n_max=2", "model.energy.descriptor.basis_size=3", "model.energy.readout.hidden=[4]",
        "model.cutoff=4.0", "data.batch_size=4", "trainer.enable_progress_bar=false", "trainer.max_epochs=1", "logger=[]"]


@pytest.fixture(scope="module")
def gpumd_xyz(tmp_path_factory, cuau_frames) -> Path:
    """Six Cu/Au EMT cells written as GPUMD writes train.xyz (lattice=, virial=, a force column)."""
    from mlip_plugins.io.gpumd_xyz import write_gpumd_xyz

    path = tmp_path_factory.mktemp("gpumd") / "train.xyz"
    with open(path, "w") as handle:
        write_gpumd_xyz(handle, cuau_frames(6, seed=1))
    assert "lattice=" in path.read_text().splitlines()[1]
    return path


@pytest.fixture(scope="module")
def checkpoint(gpumd_xyz, tmp_path_factory) -> str:
    """mlip-train's default model (no experiment=nep) trained one epoch on the GPUMD file."""
    from lightning_modules.train import run_training

    with initialize_config_module("mlip_plugins.conf", version_base=None):
        cfg = compose("train", overrides=[f"data.path={gpumd_xyz}", f"run_dir={tmp_path_factory.mktemp('run')}", *TINY])
    result = run_training(cfg)
    assert result["metrics"]["forces_rmse"] > 0 and result["metrics"]["stress_rmse"] > 0  # forces and virial were read
    return result["last_ckpt"]


def test_gpumd_conventions_are_detected_from_the_header(gpumd_xyz, tmp_path):
    from ase.io import read, write

    assert detect_format(gpumd_xyz) == "gpumd-xyz"
    extxyz = tmp_path / "ase.xyz"
    write(extxyz, read(gpumd_xyz, ":", format="gpumd-xyz"), format="extxyz")
    assert detect_format(extxyz) is None                     # ASE's own extxyz: left to ASE
    structures = read_structures(gpumd_xyz)
    assert len(structures) == 6 and {"energy", "forces", "stress"} <= set(structures[0].labels)
    virial = read(gpumd_xyz, 0, format="gpumd-xyz").info["virial"]
    assert np.allclose(structures[0].labels["stress"], -virial / structures[0].atoms.get_volume())


def test_pbte_train_xyz_keeps_its_force_column():
    """GPUMD's PbTe set says Lattice= but names the forces 'force': read as GPUMD, not as extxyz without forces."""
    path = DATASETS / "gpumd_pbte" / "train.xyz"
    if not path.exists():
        pytest.skip(f"{path} absent (set MLIP_DATASETS)")
    structures = read_structures(path, index="0:2")
    assert detect_format(path) == "gpumd-xyz"
    assert all(s.labels.get("forces") is not None and np.abs(s.labels["forces"]).max() > 0 for s in structures)


def test_mlip_eval_reads_a_gpumd_file(checkpoint, gpumd_xyz, tmp_path):
    from mlip_plugins.cli.evaluate import build_parser, run

    metrics = run(build_parser().parse_args([checkpoint, str(gpumd_xyz), "-o", str(tmp_path / "eval")]))
    assert metrics["forces_rmse"] > 0 and metrics["stress_rmse"] > 0
    forced = run(build_parser().parse_args([checkpoint, str(gpumd_xyz), "-o", str(tmp_path / "e2"), "--format", "gpumd-xyz"]))
    assert forced["forces_rmse"] == pytest.approx(metrics["forces_rmse"])


def test_mlip_fim_reads_a_gpumd_file(checkpoint, gpumd_xyz, capsys):
    from mlip_plugins.cli.fim import main

    assert main([checkpoint, str(gpumd_xyz), "--probe-size", "3", "--json"]) == 0
    assert '"eigenvalues"' in capsys.readouterr().out


def test_cfg_job_shows_the_nep_in_keywords_merged(tmp_path):
    nep_in = tmp_path / "nep.in"
    nep_in.write_text("type 2 Mo W\ncutoff 4.5 3.5\nn_max 3 2\n")
    result = subprocess.run([sys.executable, "-m", "lightning_modules.train", "experiment=nep", f"nep_in={nep_in}", "--cfg", "job"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=200)
    assert result.returncode == 0, result.stderr
    from omegaconf import OmegaConf

    shown = OmegaConf.create(result.stdout)
    assert list(shown.model.elements) == ["Mo", "W"] and shown.model.cutoff == 4.5
