"""A NEP inside a composite energy tree, trained together; nep.txt export where the result is still a
pure NEP (NEP descriptor + element-routed tanh MoE readout), a one-line refusal (exit 2) where not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

NEP_DESCRIPTOR = {"name": "nep", "cutoff": [5.0, 4.0], "n_max": [2, 2], "basis_size": [3, 3], "l_max": [2, 0, 0]}
NEP_MODEL = {"name": "nep", "cutoff": 5.0, "cutoff_angular": 4.0, "n_max": [2, 2], "basis_size": [3, 3], "l_max": [2, 0, 0], "neuron": 4}


def moe_readout(**changes) -> dict:
    readout = {"name": "moe", "num_experts": 3, "top_k": 2, "num_shared": 1, "hidden": [4], "activation": "tanh",
               "router": {"name": "element"}}
    readout.update(changes)
    return readout


def train(tmp_path, cuau_frames, energy: dict) -> dict:
    from ase.io import write
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from lightning_modules.train import run_training

    data = tmp_path / "cuau.xyz"
    write(data, cuau_frames(8, 0), format="extxyz")
    with initialize_config_module("mlip_plugins.conf", version_base=None):
        cfg = compose("train", overrides=[f"data.path={data}", "data.file_format=extxyz", "experiment=nep", "dtype=float64",
                                          f"run_dir={tmp_path / 'run'}", "trainer.max_epochs=2", "trainer.enable_progress_bar=false",
                                          "logger=[]", "data.batch_size=2"])
    OmegaConf.set_struct(cfg, False)
    cfg.model.energy = OmegaConf.create(energy)
    return run_training(cfg)


def test_nep_descriptor_with_an_moe_readout_trains_together_and_exports_as_a_pure_nep(tmp_path, cuau_frames):
    from calorine.calculators import CPUNEP

    from mlip_plugins.calculator import MLIPCalculator
    from mlip_plugins.checkpoint import load_potential, load_torch_file
    from mlip_plugins.cli.export import _test_structure, main as export_main

    result = train(tmp_path, cuau_frames, {"descriptor": NEP_DESCRIPTOR, "readout": moe_readout()})
    state = load_torch_file(result["last_ckpt"])["state_dict"]
    assert any("descriptor.c_radial" in k for k in state) and any("routed.weights" in k for k in state)
    out = tmp_path / "nep.txt"
    assert export_main([result["last_ckpt"], "-o", str(out)]) == 0
    # (shared 1 + top-2) x 4 hidden = 12 neurons, + 1 constant neuron carrying the per-element biases
    assert out.read_text().splitlines()[5].split()[:2] == ["ANN", "13"]
    atoms = _test_structure(["Cu", "Au"], spacing=2.6)
    ours, theirs = atoms.copy(), atoms.copy()
    ours.calc = MLIPCalculator(load_potential(result["last_ckpt"]), dtype=torch.float64)
    theirs.calc = CPUNEP(str(out))
    assert abs(ours.get_potential_energy() - theirs.get_potential_energy()) / len(atoms) < 1e-6
    np.testing.assert_allclose(ours.get_forces(), theirs.get_forces(), atol=1e-5)


def test_nep_with_ensemble_charges_trains_together_but_export_refuses(tmp_path, cuau_frames, capsys):
    from mlip_plugins.checkpoint import load_torch_file
    from mlip_plugins.cli.export import main as export_main

    ensemble = {"name": "ensemble_electrostatic", "descriptor": {"name": "radial", "n_max": 3, "basis_size": 4},
                "readout": {"name": "mlp", "hidden": [8]},
                "charges": {"states": [1, 0, -1], "hidden": [4], "prior_cutoff": 4.0},
                "solver": {"name": "ewald", "accuracy": 1.0e-4}}
    result = train(tmp_path, cuau_frames, {"sum": [{"model": NEP_MODEL}, {"model": ensemble}]})
    state = load_torch_file(result["last_ckpt"])["state_dict"]
    assert any("terms.0.w0" in k for k in state) and any("terms.1." in k for k in state)
    out = tmp_path / "nep.txt"
    assert export_main([result["last_ckpt"], "-o", str(out)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1  # one line (the other stderr line is the thread report)
    message = errors[0]
    assert "sum(nep, EnsembleElectrostaticModel)" in message and "nep.txt holds a single NEP" in message
    assert not out.exists()


@pytest.mark.parametrize("readout,reason", [
    (moe_readout(router={"name": "global"}), "routes by structure"),
    (moe_readout(activation="silu"), "activation is silu"),
    (moe_readout(hidden=[4, 4]), "2 hidden layers"),
])
def test_moe_readouts_that_are_not_a_nep_are_refused(tmp_path, float64, readout, reason):
    from mlip_plugins.models.builder import build_potential
    from mlip_plugins.nep.nep_txt import NEPFormatError, write_nep

    potential = build_potential({"elements": ["Cu", "Au"], "cutoff": 5.0, "energy": {"descriptor": NEP_DESCRIPTOR, "readout": readout}})
    with pytest.raises(NEPFormatError, match=reason):
        write_nep(potential, tmp_path / "nep.txt")
    assert not (tmp_path / "nep.txt").exists()
