"""Bad input gives one clear line naming file, frame and field; the CLI exits non-zero and
leaves no run directory behind."""

from __future__ import annotations

import os
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
        "unknown plugin": ([f"data.path={good_file}", "model=composable", "model.energy.descriptor.name=radail"], "did you mean 'radial'"),
    }
    for name, (args, message) in cases.items():
        result = _train([*args, f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
        assert result.returncode == 2, (name, result.stderr[-2000:])
        error_lines = [line for line in result.stderr.splitlines() if line.startswith("mlip-train: error:")]
        assert len(error_lines) == 1 and message in error_lines[0], (name, result.stderr[-2000:])
        assert "Traceback" not in result.stderr, name
        assert not (tmp_path / "run").exists(), name


# ----------------------------------------------------------------------------- tiny periodic cells
def _tiny_cell(tmp_path, n_atoms: int, edge: float):
    from ase import Atoms

    atoms = Atoms(["Cu"] * n_atoms, positions=[[k * edge / (2 * n_atoms)] * 3 for k in range(n_atoms)],
                  cell=np.eye(3) * edge, pbc=True)
    atoms.calc = SinglePointCalculator(atoms, energy=-3.0 * n_atoms, forces=np.zeros((n_atoms, 3)))
    path = tmp_path / f"tiny_{n_atoms}.xyz"
    write(path, [_frame(), atoms], format="extxyz")
    return path


@pytest.fixture
def no_neighbour_lists_of_tiny_cells(monkeypatch):
    """Fail (instead of allocating GiBs) if a neighbour list of a cell under 1 Å is ever built."""
    import mlip_plugins.data.structures as structures

    real = structures.neighbor_list

    def guarded(positions, cell, pbc, cutoff):
        assert not (np.any(pbc) and abs(np.linalg.det(cell)) < 1.0), "neighbour list of a tiny cell was built"
        return real(positions, cell, pbc, cutoff)

    monkeypatch.setattr(structures, "neighbor_list", guarded)


@pytest.mark.parametrize("n_atoms, edge, density", [(1, 0.05, r"8e\+03"), (2, 0.01, r"2e\+06")])
def test_tiny_periodic_cells_are_refused_before_any_neighbour_list(tmp_path, n_atoms, edge, density,
                                                                   no_neighbour_lists_of_tiny_cells):
    path = _tiny_cell(tmp_path, n_atoms, edge)
    with pytest.raises(DataError, match=rf"tiny_{n_atoms}.xyz: frame 1: field 'cell': density {density} atoms/Å³ .*"
                                        rf"neighbours per atom within 1.5 Å, above the limit of 10000"):
        read_structures(path)
    assert len(read_structures(path, on_error="skip")) == 1  # the good frame is kept


def test_a_cell_fine_for_the_geometry_check_is_refused_at_the_model_cutoff(tmp_path, no_neighbour_lists_of_tiny_cells):
    from mlip_plugins.data.graph_cache import build_graphs

    structures = read_structures(_tiny_cell(tmp_path, 1, 0.3))  # ~520 images within 1.5 Å: allowed
    with pytest.raises(DataError, match=r"tiny_1.xyz: frame 1: field 'cell': density 37 atoms/Å³ .* within 5 Å"):
        build_graphs(structures, 5.0)


def test_the_neighbour_estimate_matches_real_structures():
    from ase.build import bulk, fcc111, molecule

    from mlip_plugins.data.neighbors import neighbor_estimate, neighbor_list

    for atoms in (bulk("Cu", "fcc", a=3.6, cubic=True), bulk("Cu", "fcc", a=3.6, cubic=True).repeat(4),
                  fcc111("Cu", (3, 3, 4), vacuum=8.0), molecule("CH4")):
        edges, _ = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, 5.0)
        estimate = neighbor_estimate(atoms.positions, atoms.cell.array, atoms.pbc, 5.0).per_atom
        assert 0.5 < estimate / (edges.shape[1] / len(atoms)) < 2.0
    # a cell thin along one vector: normal density, but ~1000 images of the atom itself
    from ase import Atoms

    thin = Atoms("Cu", cell=np.diag([100.0, 100.0, 0.01]), pbc=True)
    edges, _ = neighbor_list(thin.positions, thin.cell.array, thin.pbc, 5.0)
    assert neighbor_estimate(thin.positions, thin.cell.array, thin.pbc, 5.0).per_atom >= edges.shape[1]
# ----------------------------------------------------------------------------- config mistakes (issue 14)
BROKEN_PLUGINS = {"plugin_raises.py": "raise RuntimeError('this plugin needs a GPU driver')\n",
                  "plugin_syntax.py": "def broken(:\n"}


@pytest.fixture
def hostile_files(tmp_path, monkeypatch):
    """An empty and a random-bytes checkpoint, and plugin modules that fail at import."""
    (tmp_path / "empty.ckpt").write_bytes(b"")
    (tmp_path / "random.ckpt").write_bytes(np.random.default_rng(0).bytes(4096))
    for name, source in BROKEN_PLUGINS.items():
        (tmp_path / name).write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


CONFIG_MISTAKES = {
    "trainer key": (["+trainer.max_epoch=3"], r"trainer.max_epoch: not an option of Trainer; did you mean trainer.max_epochs\?"),
    "trainer key set by mlip-train": (["+trainer.logger=false"], r"trainer.logger: set by mlip-train itself"),
    "data key": (["+data.bach_size=3"], r"data.bach_size: not an option of AtomsDataModule; did you mean data.batch_size\?"),
    "optimizer key": (["+optimizer.weight_decy=0.1"], r"optimizer.weight_decy: not an option of Adam; did you mean optimizer.weight_decay\?"),
    "loss key": (["+loss.forcs=1.0"], r"loss.forcs: not an option of LossWeights; did you mean loss.forces\?"),
    "data label key": (["+data.keys.enrgy=E"], r"data.keys.enrgy: not an option of LabelKeys; did you mean data.keys.energy\?"),
    "data on_error": (["data.on_error=ignore"], r"data.on_error: expected raise or skip, got 'ignore'"),
    "trainer value": (["trainer.max_epochs=abc"], r"trainer.max_epochs: 'abc' is not a valid value \(expected Optional\[int\]\)"),
    "cutoff zero": (["model.cutoff=0"], r"model.cutoff: a cutoff must be a finite number > 0"),
    "cutoff negative": (["model.cutoff=-2"], r"model.cutoff: a cutoff must be a finite number > 0"),
    "cutoff inf": (["model.cutoff=inf"], r"model.cutoff: a cutoff must be a finite number > 0 \(Å\), got inf"),
    "cutoff nan": (["model.cutoff=nan"], r"model.cutoff: a cutoff must be a finite number > 0 \(Å\), got nan"),
    "cutoff text": (["model.cutoff=abc"], r"model.cutoff: a cutoff must be a finite number > 0 \(Å\), got 'abc'"),
    "e0 text": (["e0={Cu: abc}"], r"e0.Cu: expected a finite reference energy in eV, got 'abc'"),
    "e0 unknown element": (["e0={Cu: -3.0, Qq: 1.0}"], r"e0.Qq: unknown element 'Qq'"),
    "empty checkpoint": (["ckpt_path={tmp}/empty.ckpt"], r"empty.ckpt: the file is empty"),
    "random checkpoint": (["ckpt_path={tmp}/random.ckpt"], r"random.ckpt: cannot resume: not a PyTorch checkpoint"),
    "plugin raises at import": (["model=composable", "model.energy.descriptor.name=plugin_raises:Desc"],
                                r"'plugin_raises:Desc': the module raised RuntimeError: this plugin needs a GPU driver"),
    "plugin syntax error": (["model=composable", "model.energy.descriptor.name=plugin_syntax:Desc"], r"'plugin_syntax:Desc': the module raised SyntaxError"),
    "no gpu": (["trainer=gpu"], r"trainer.accelerator=gpu: no CUDA GPU is available on this machine"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_MISTAKES))
def test_config_mistakes_are_user_errors_naming_the_key(case, good_file, hostile_files):
    import torch
    from hydra import compose, initialize_config_module

    from lightning_modules.train import run_training
    from mlip_plugins.errors import MLIPError

    if case == "no gpu" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    args, message = CONFIG_MISTAKES[case]
    args = [arg.replace("{tmp}", str(hostile_files)) for arg in args]
    with initialize_config_module("mlip_plugins.conf", version_base=None):
        cfg = compose("train", overrides=[f"data.path={good_file}", "model.elements=[Cu]", "trainer.max_epochs=1",
                                          "logger=[]", "trainer.enable_progress_bar=false", *args,
                                          f"run_dir={hostile_files / 'run'}"])
    with pytest.raises(MLIPError, match=message) as info:
        run_training(cfg)
    assert "\n" not in str(info.value) and "weights_only" not in str(info.value)


def test_cli_config_mistakes_one_line_exit_2_and_no_run_dir(tmp_path, good_file, hostile_files):
    cases = {
        "trainer key": (["+trainer.foo=1"], "trainer.foo: not an option of Trainer"),
        "null group": (["logger=null"], "logger=null: a config group cannot be null; use logger=[]"),
        "random checkpoint": ([f"ckpt_path={hostile_files / 'random.ckpt'}"], "cannot resume: not a PyTorch checkpoint"),
    }
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(hostile_files), os.environ.get("PYTHONPATH", "")]))}
    for name, (args, message) in cases.items():
        result = subprocess.run(
            [sys.executable, "-m", "lightning_modules.train", f"data.path={good_file}", "model.elements=[Cu]", *args,
             "trainer.max_epochs=1", "trainer.enable_progress_bar=false", f"hydra.run.dir={tmp_path / 'run'}"],
            cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
        assert result.returncode == 2, (name, result.stderr[-2000:])
        error_lines = [line for line in result.stderr.splitlines() if line.startswith("mlip-train: error:")]
        assert len(error_lines) == 1 and message in error_lines[0], (name, result.stderr[-2000:])
        assert "Traceback" not in result.stderr and "weights_only" not in result.stderr, name
        assert not (tmp_path / "run").exists(), name
