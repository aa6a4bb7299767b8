"""Bad input gives one clear line naming file, frame and field; the CLI exits non-zero and
leaves no run directory behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write

from mlip_plugins.data.reading import read_structures
from mlip_plugins.data.structures import DataError, LabelKeys


def _frame(energy=-3.0, shift=0.0):
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.positions[0] += shift
    atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=np.zeros((4, 3)))
    return atoms


@pytest.fixture
def good_file(tmp_path):
    path = tmp_path / "good.xyz"
    write(path, [_frame(), _frame(-3.1, 0.05)], format="extxyz")
    return path


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="nope.xyz: file not found"):
        read_structures(tmp_path / "nope.xyz")


def test_truncated_extxyz_names_the_frame(good_file, tmp_path):
    lines = good_file.read_text().splitlines()
    truncated = tmp_path / "truncated.xyz"
    truncated.write_text("\n".join(lines[: len(lines) - 2]) + "\n")
    with pytest.raises(DataError, match=r"truncated.xyz: frame 1: cannot parse"):
        read_structures(truncated)
    kept = read_structures(truncated, on_error="skip")
    assert len(kept) == 1


def test_missing_energy_key(good_file):
    with pytest.raises(DataError, match=r"good.xyz: frame 0: field 'REF_energy': missing"):
        read_structures(good_file, LabelKeys(energy="REF_energy"), require_energy=True)


@pytest.mark.parametrize("where", ["positions", "energy", "forces"])
def test_nan_and_inf(tmp_path, where):
    frames = [_frame(), _frame()]
    bad = frames[1]
    if where == "positions":
        bad.positions[2, 1] = np.nan
        bad.calc = SinglePointCalculator(bad, energy=-3.0, forces=np.zeros((4, 3)))
    elif where == "energy":
        bad.calc.results["energy"] = np.inf
    else:
        bad.calc.results["forces"][3, 0] = np.nan
    path = tmp_path / f"nan_{where}.xyz"
    write(path, frames, format="extxyz")
    with pytest.raises(DataError, match=rf"nan_{where}.xyz: frame 1: field '{where}'"):
        read_structures(path)


def test_duplicate_atoms(tmp_path):
    atoms = _frame()
    atoms.positions[1] = atoms.positions[0]
    path = tmp_path / "dup.xyz"
    write(path, [atoms], format="extxyz")
    with pytest.raises(DataError, match=r"dup.xyz: frame 0: field 'positions': atoms .* closer than"):
        read_structures(path)


def test_zero_volume_cell(tmp_path):
    atoms = _frame()
    atoms.cell[2] = [0, 0, 0]
    path = tmp_path / "flat.xyz"
    write(path, [atoms], format="extxyz")
    with pytest.raises(DataError, match=r"flat.xyz: frame 0: field 'cell': zero-volume"):
        read_structures(path)


def _train(args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "lightning_modules.train", *args, "trainer.max_epochs=1", "trainer.enable_progress_bar=false"],
        cwd=cwd, capture_output=True, text=True, timeout=300,
    )


def test_cli_bad_inputs_one_line_errors_and_no_run_dir(tmp_path, good_file):
    unknown = tmp_path / "unknown.xyz"
    frames = [_frame(), _frame()]
    frames[1].symbols[0] = "Zn"
    frames[1].calc = SinglePointCalculator(frames[1], energy=-3.0, forces=np.zeros((4, 3)))
    write(unknown, frames, format="extxyz")
    cases = {
        "missing": (["data.path=missing.xyz"], "missing.xyz: file not found"),
        "unknown element": ([f"data.path={unknown}", "model.elements=[Cu]"], "frame 1: field 'numbers': element Zn"),
        "missing key": ([f"data.path={good_file}", "data.keys.energy=REF_energy"], "field 'REF_energy': missing"),
        "unknown plugin": ([f"data.path={good_file}", "model=default", "model.energy.descriptor.name=radail"], "did you mean 'radial'"),
    }
    for name, (args, message) in cases.items():
        result = _train([*args, f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
        assert result.returncode == 2, (name, result.stderr[-2000:])
        error_lines = [line for line in result.stderr.splitlines() if line.startswith("mlip-train: error:")]
        assert len(error_lines) == 1 and message in error_lines[0], (name, result.stderr[-2000:])
        assert "Traceback" not in result.stderr, name
        assert not (tmp_path / "run").exists(), name
