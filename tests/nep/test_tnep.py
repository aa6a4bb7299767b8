"""TNEP (GPUMD's model_type 1 | 2: dipole, polarizability): read, evaluated with calorine parity on
GPUMD's fixtures, written back exactly, and trained from a nep.in."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.io import read

DATASETS = Path(os.environ.get("MLIP_DATASETS", Path(__file__).resolve().parents[3] / "shared" / "datasets"))
FIXTURES = DATASETS / "gpumd_pytest_fixtures_and_nep_models" / "fixtures"
needs_fixtures = pytest.mark.skipif(not FIXTURES.exists(), reason=f"GPUMD's fixtures not found at {FIXTURES} (set MLIP_DATASETS)")
CASES = {
    "dipole": ("tnep-water-polarization.txt", "water-nat63-from-md.xyz", "get_dipole_moment", "nep4_dipole"),
    "polarizability": ("tnep-BaZrO3-susceptibility.txt", "BaZrO3-nat40-rattled.xyz", "get_polarizability", "nep4_polarizability"),
}


@needs_fixtures
@pytest.mark.parametrize("kind", sorted(CASES))
def test_tnep_matches_calorine_and_writes_back_exactly(tmp_path, kind):
    from calorine.calculators import CPUNEP

    from mlip_plugins.calculator import MLIPCalculator
    from mlip_plugins.nep.nep_txt import load_nep_potential, write_nep

    model, structure, getter, header = CASES[kind]
    atoms = read(FIXTURES / "structures" / structure)
    reference = getattr(CPUNEP(str(FIXTURES / "models" / model)), getter)(atoms)
    ours = atoms.copy()
    ours.calc = MLIPCalculator.from_file(FIXTURES / "models" / model)
    ours.get_potential_energy()
    np.testing.assert_allclose(ours.calc.results[kind], reference, rtol=1e-10, atol=1e-10)
    assert np.abs(ours.get_forces()).max() == 0.0  # not a potential
    written = write_nep(load_nep_potential(FIXTURES / "models" / model), tmp_path / "nep.txt")
    assert written.read_text().startswith(header)
    np.testing.assert_allclose(getattr(CPUNEP(str(written)), getter)(atoms), reference, rtol=1e-12, atol=1e-12)


def test_tnep_headers_refuse_zbl_and_charges(tmp_path):
    from mlip_plugins.nep.nep_txt import NEPFormatError, read_nep

    path = tmp_path / "nep.txt"
    path.write_text("nep4_zbl_dipole 1 O\nzbl 1 2\n")
    with pytest.raises(NEPFormatError, match="line 1: 'nep4_zbl_dipole': a dipole / polarizability model has no ZBL"):
        read_nep(path)


@needs_fixtures
@pytest.mark.parametrize("kind", sorted(CASES))
def test_a_tnep_trained_from_nep_in_exports_what_calorine_evaluates(tmp_path, kind):
    from ase.io import write
    from calorine.calculators import CPUNEP
    from calorine.nep import read_loss
    from hydra import compose, initialize_config_module

    from lightning_modules.train import run_training
    from mlip_plugins.calculator import MLIPCalculator
    from mlip_plugins.checkpoint import load_potential
    from mlip_plugins.cli.export import main as export_main

    model, structure, getter, header = CASES[kind]
    teacher = CPUNEP(str(FIXTURES / "models" / model))
    base = read(FIXTURES / "structures" / structure)
    frames = []
    for k in range(6):  # rattled copies labelled by GPUMD's TNEP (no energies: a TNEP has none)
        atoms = base.copy()
        atoms.rattle(0.05, seed=k)
        value = np.asarray(getattr(teacher, getter)(atoms))
        atoms.info["dipole" if kind == "dipole" else "pol"] = value.reshape(-1)
        frames.append(atoms)
    data = tmp_path / "data.xyz"
    write(data, frames, format="extxyz")
    symbols = sorted(set(base.get_chemical_symbols()))
    nep_in = tmp_path / "nep.in"
    nep_in.write_text(f"type {len(symbols)} {' '.join(symbols)}\nmodel_type {1 if kind == 'dipole' else 2}\ncutoff 4 3\n"
                      "n_max 2 2\nbasis_size 3 3\nl_max 2 0 0\nneuron 4\nbatch 2\ngeneration 6\noutput_interval 2\n")
    with initialize_config_module("mlip_plugins.conf", version_base=None):
        cfg = compose("train", overrides=[f"data.path={data}", "data.file_format=extxyz", "experiment=nep", f"nep_in={nep_in}",
                                          f"run_dir={tmp_path / 'run'}", "dtype=float64", "trainer.enable_progress_bar=false",
                                          "logger=[]"])
    result = run_training(cfg)
    loss = read_loss(str(Path(result["run_dir"]) / "loss.out"))  # GPUMD's 6 columns of a tensor model
    assert list(loss.columns) == ["total_loss", "L1", "L2", "RMSE_P_train", "RMSE_P_test"]
    assert np.all(loss["RMSE_P_train"] > 0)
    assert loss["RMSE_P_train"].iloc[-1] < loss["RMSE_P_train"].iloc[0]  # it learns
    out = tmp_path / "tnep.txt"
    assert export_main([result["last_ckpt"], "-o", str(out), "--no-check"]) == 0
    assert out.read_text().startswith(header)
    atoms = frames[0].copy()
    ours = atoms.copy()
    ours.calc = MLIPCalculator(load_potential(result["last_ckpt"]), dtype=torch.float64)
    ours.get_potential_energy()
    np.testing.assert_allclose(ours.calc.results[kind], getattr(CPUNEP(str(out)), getter)(atoms), rtol=1e-9, atol=1e-9)
