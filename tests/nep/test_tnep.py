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


def _tnep_training_files(tmp_path, kind: str):
    """Six rattled copies of GPUMD's fixture labelled by GPUMD's TNEP (no energies: a TNEP has
    none), written to data.xyz, and a tiny nep.in for them: (frames, data.xyz, nep.in)."""
    from ase.io import write
    from calorine.calculators import CPUNEP

    model, structure, getter, _ = CASES[kind]
    teacher = CPUNEP(str(FIXTURES / "models" / model))
    base = read(FIXTURES / "structures" / structure)
    frames = []
    for k in range(6):
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
    return frames, data, nep_in


@needs_fixtures
@pytest.mark.parametrize("kind", sorted(CASES))
def test_a_tnep_trained_from_nep_in_exports_what_calorine_evaluates(tmp_path, kind):
    from calorine.calculators import CPUNEP
    from calorine.nep import read_loss
    from hydra import compose, initialize_config_module

    from lightning_modules.train import run_training
    from mlip_plugins.calculator import MLIPCalculator
    from mlip_plugins.checkpoint import load_potential
    from mlip_plugins.cli.export import main as export_main

    model, structure, getter, header = CASES[kind]
    frames, data, nep_in = _tnep_training_files(tmp_path, kind)
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
    _check_tnep_prediction_files(tmp_path, Path(result["run_dir"]), kind, frames, nep_in, load_potential(result["last_ckpt"]))
    for which in ("train", "test"):  # loss.out's last RMSEs: GPUMD's, over the files' 3 / 6 components, written at once
        table = np.loadtxt(Path(result["run_dir"]) / f"{kind}_{which}.out", ndmin=2)
        half = table.shape[1] // 2
        np.testing.assert_allclose(loss[f"RMSE_P_{which}"].iloc[-1], np.sqrt(np.mean((table[:, :half] - table[:, half:]) ** 2)),
                                   rtol=1e-4)


#: GPUMD's order of a polarizability's six columns (xx yy zz xy yz zx)
REDUCED = ((0, 0), (1, 1), (2, 2), (0, 1), (1, 2), (2, 0))


def _gpumd_columns(kind: str, value) -> np.ndarray:
    """A dipole (3) or polarizability (3 x 3 -> 6, GPUMD's order) per structure as GPUMD's columns."""
    value = np.asarray(value, dtype=np.float64)
    return value.reshape(3) if kind == "dipole" else np.array([value.reshape(3, 3)[a, b] for a, b in REDUCED])


def _check_tnep_prediction_files(tmp_path, run, kind, frames, nep_in, potential):
    """GPUMD's dipole_*.out / polarizability_*.out of a TNEP run: one row per structure of the
    training and validation (GPUMD's test) sets, predictions then labels per atom in GPUMD's
    columns; calorine's read_structures reads them back beside a train.xyz / test.xyz of those
    structures, and the predictions are the trained model's."""
    import shutil

    from ase.io import write
    from calorine.nep import read_structures

    from mlip_plugins.calculator import MLIPCalculator

    assert not (run / "energy_train.out").exists() and not (run / "force_train.out").exists()  # as GPUMD: a TNEP has none
    width = 3 if kind == "dipole" else 6
    labels = np.array([_gpumd_columns(kind, a.info["dipole" if kind == "dipole" else "pol"]) / len(a) for a in frames])
    folder = tmp_path / "calorine"
    folder.mkdir()
    shutil.copy(nep_in, folder / "nep.in")
    seen = []
    for which in ("train", "test"):
        table = np.loadtxt(run / f"{kind}_{which}.out", ndmin=2)
        assert table.shape[1] == 2 * width
        # each row's reference is one frame's label per atom: that row is that frame
        rows = [int(np.argmin(np.abs(labels - row[width:]).max(1))) for row in table]
        np.testing.assert_allclose(table[:, width:], labels[rows], rtol=1e-5, atol=1e-7)
        predicted = []
        for k in rows:
            atoms = frames[k].copy()
            atoms.calc = MLIPCalculator(potential, dtype=torch.float64)
            atoms.get_potential_energy()
            predicted.append(_gpumd_columns(kind, atoms.calc.results[kind]) / len(atoms))
        np.testing.assert_allclose(table[:, :width], np.array(predicted), rtol=1e-5, atol=1e-7)
        write(folder / f"{which}.xyz", [frames[k] for k in rows], format="extxyz")
        shutil.copy(run / f"{kind}_{which}.out", folder / f"{kind}_{which}.out")
        seen += rows
    assert len(set(seen)) == len(seen) >= len(frames) - 1  # no structure twice (one may be held out as the test split)
    train, test = read_structures(str(folder))
    for structures, which in ((train, "train"), (test, "test")):
        table = np.loadtxt(run / f"{kind}_{which}.out", ndmin=2)
        assert len(structures) == len(table)
        for atoms, row in zip(structures, table):
            shape = (3,) if kind == "dipole" else (6,)
            assert atoms.info[f"{kind}_predicted"].shape == shape and atoms.info[f"{kind}_target"].shape == shape
            if kind == "dipole":
                np.testing.assert_array_equal(atoms.info["dipole_predicted"], row[:3])
                np.testing.assert_array_equal(atoms.info["dipole_target"], row[3:])
            else:  # calorine converts GPUMD's xx yy zz xy yz zx to ASE's Voigt order xx yy zz yz xz xy
                voigt = [0, 1, 2, 4, 5, 3]
                np.testing.assert_array_equal(atoms.info["polarizability_predicted"], row[:6][voigt])
                np.testing.assert_array_equal(atoms.info["polarizability_target"], row[6:][voigt])


@needs_fixtures
def test_a_tnep_trains_from_a_graph_store_as_from_memory(tmp_path):
    """Polarizability labels go through the graph store (data.streaming=true): the same loss scales
    (loss.normalize=variance, from the store's sums), the same training and the same
    polarizability_*.out as the in-memory run."""
    from hydra import compose, initialize_config_module

    from lightning_modules.train import run_training
    from mlip_plugins.keys import TARGETS

    _, data, nep_in = _tnep_training_files(tmp_path, "polarizability")
    runs = {}
    for name, extra in (("memory", []), ("store", ["data.streaming=true", f"data.store={tmp_path / 'store'}"])):
        with initialize_config_module("mlip_plugins.conf", version_base=None):
            cfg = compose("train", overrides=[f"data.path={data}", "data.file_format=extxyz", "experiment=nep",
                                              f"nep_in={nep_in}", f"run_dir={tmp_path / name}", "dtype=float64", "loss.normalize=variance",
                                              "trainer.enable_progress_bar=false", "logger=[]", *extra])
        runs[name] = run_training(cfg)
    scales = {name: torch.load(result["last_ckpt"], weights_only=False)["state_dict"]["loss_scales"] for name, result in runs.items()}
    assert scales["store"][TARGETS.index("polarizability")] != 1.0
    torch.testing.assert_close(scales["store"], scales["memory"], rtol=1e-9, atol=0)
    for which in ("train", "test"):
        memory, store = (np.loadtxt(tmp_path / name / f"polarizability_{which}.out", ndmin=2) for name in ("memory", "store"))
        np.testing.assert_allclose(store, memory, rtol=1e-9, atol=1e-12)
