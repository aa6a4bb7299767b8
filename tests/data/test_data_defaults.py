"""Elements come from the data (issue 15, item 2): presets default to ``elements: auto``,
``data=file`` without a path is an error, and the embedded demo set announces itself."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_module

import mlip_plugins

PRESETS = sorted(p.stem for p in (Path(mlip_plugins.__file__).parent.parent / "conf" / "model").glob("*.yaml"))
TINY = ["model=composable", "model.energy.descriptor.n_max=2", "model.energy.descriptor.basis_size=3", "model.energy.readout.hidden=[4]",
        "model.cutoff=4.0", "data.batch_size=4", "trainer.enable_progress_bar=false", "trainer.max_epochs=1", "logger=[]"]


def _compose(overrides: list[str]):
    with initialize_config_module("mlip_plugins.conf", version_base=None):
        return compose("train", overrides=overrides)


@pytest.fixture(scope="module")
def cuau_xyz(tmp_path_factory, cuau_frames) -> Path:
    from ase.io import write

    path = tmp_path_factory.mktemp("cuau") / "cuau.xyz"
    write(path, cuau_frames(8, seed=0), format="extxyz")
    return path


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_takes_its_elements_from_the_data(preset):
    assert _compose([f"model={preset}"]).model.elements == "auto"


def test_a_two_element_file_builds_a_two_element_model(tmp_path, cuau_xyz):
    from lightning_modules.train import run_training

    cfg = _compose([f"data.path={cuau_xyz}", f"run_dir={tmp_path / 'run'}", *TINY])
    result = run_training(cfg)
    from mlip_plugins.checkpoint import load_potential

    potential = load_potential(result["last_ckpt"])
    assert [int(z) for z in potential.atomic_numbers] == [29, 79]


def test_data_file_without_a_path_is_a_one_line_error(tmp_path):
    result = subprocess.run([sys.executable, "-m", "lightning_modules.train", "data=file", f"hydra.run.dir={tmp_path / 'run'}"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=200)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "data.path" in lines[0], result.stderr
    assert not (tmp_path / "run").exists()


def test_training_on_the_demo_set_says_so(caplog):
    from lightning_modules.datamodule import AtomsDataModule

    with caplog.at_level(logging.INFO, logger="mlip_plugins.data"):
        AtomsDataModule(cutoff=4.0, default_dataset={"n_structures": 6}).setup("fit")
    notes = [r.getMessage() for r in caplog.records if "demo dataset" in r.getMessage()]
    assert len(notes) == 1 and "data.path" in notes[0]


def test_build_potential_rejects_auto_with_a_hint():
    from mlip_plugins.models import build_potential
    from mlip_plugins.models.builder import ConfigError

    with pytest.raises(ConfigError, match="model.elements"):
        build_potential(_compose([]).model)


def test_explicit_e0_of_some_elements_fits_the_others():
    """``e0={Cu: -3.51, Au: -3.81}`` on seven-element data: Cu and Au as given, the other five fitted."""
    from ase import Atoms

    from mlip_plugins.data.statistics import fit_e0
    from mlip_plugins.data.structures import atoms_to_graph

    true = {13: -1.5, 29: -3.51, 79: -3.81, 47: -2.0}
    rng = np.random.default_rng(0)
    graphs = []
    for _ in range(30):
        numbers = rng.choice(sorted(true), size=rng.integers(2, 6)).tolist()
        atoms = Atoms(numbers=numbers, positions=rng.normal(size=(len(numbers), 3)) * 5)
        graphs.append(atoms_to_graph(atoms, 1.0, {"energy": sum(true[z] for z in numbers)}))
    elements = sorted(true)
    e0 = fit_e0(graphs, elements, fixed={"Cu": -3.51, "Au": -9.0})   # Au deliberately off: it stays fixed
    assert e0[elements.index(29)] == -3.51 and e0[elements.index(79)] == -9.0
    assert np.isfinite(e0).all() and not np.allclose(e0[elements.index(13)], -1.5, atol=1e-3)  # compensates for Au
    e0 = fit_e0(graphs, elements, fixed={"Cu": -3.51, "Au": -3.81})
    np.testing.assert_allclose(e0, [true[z] for z in elements], atol=1e-6)
    with pytest.raises(ValueError, match="unknown element 'Xx'"):
        fit_e0(graphs, elements, fixed={"Xx": 1.0})
