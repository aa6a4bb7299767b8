"""The full-batch L-BFGS refinement after training (lightning_modules/refine.py)."""

from __future__ import annotations

import json
import types
from datetime import timedelta

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.calculators.emt import EMT

from lightning_modules.module import PotentialModule
from lightning_modules.datamodule import chunked_batches
from lightning_modules.refine import FullBatchObjective, RefineConfig, refine_full_batch, split_budget
from mlip_plugins.data.structures import atoms_to_graph
from mlip_plugins.dtypes import default_dtype
from mlip_plugins.models.builder import ConfigError

MODEL = {"elements": [29], "cutoff": 4.0,
         "energy": {"descriptor": {"name": "radial", "n_max": 2, "basis_size": 3}, "readout": {"name": "mlp", "hidden": [4]}}}


def _graphs(n: int, seed: int = 0, sign: float = 1.0) -> list:
    """Rattled EMT Cu cells of 2-16 atoms; ``sign=-1`` mirrors the labels (a set the model
    cannot fit together with the original)."""
    rng = np.random.default_rng(seed)
    graphs = []
    for k in range(n):
        atoms = bulk("Cu", "fcc", a=3.55 + 0.03 * (k % 4), cubic=k % 2 == 0).repeat((1 + k % 2, 1, 1))
        atoms.positions += rng.normal(scale=0.08, size=atoms.positions.shape)
        atoms.calc = EMT()
        labels = {"energy": sign * atoms.get_potential_energy(), "forces": sign * atoms.get_forces()}
        graphs.append(atoms_to_graph(atoms, 4.0, labels))
    return graphs


def _module(ema: bool = False) -> PotentialModule:
    torch.manual_seed(0)
    return PotentialModule(MODEL, loss={"energy": 1.0, "forces": 1.0}, ema={"decay": 0.9} if ema else None)


def _data(train, val) -> types.SimpleNamespace:
    return types.SimpleNamespace(train_graphs=train, val_graphs=val)


def _state(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


pytestmark = pytest.mark.usefixtures("float64")  # tests/conftest.py


def test_chunked_loss_and_gradient_equal_one_pass_over_the_whole_set():
    """The denominators are the whole set's label totals, so chunks add up to the full-batch loss."""
    module, graphs = _module(), _graphs(7)
    weights, scales = module.loss_weights, module.loss_scale_map()
    values, grads = [], []
    for chunk_atoms in (10_000, 9):  # one chunk; several (every chunk at most 9 atoms or one structure)
        batches = chunked_batches(graphs, list(range(len(graphs))), chunk_atoms, torch.device("cpu"))
        objective = FullBatchObjective(module.model, batches, weights, scales, needs_stress=False)
        module.model.zero_grad()
        values.append(float(objective.value(backward=True)))
        grads.append(torch.cat([p.grad.flatten() for p in objective.params]))
    assert len(chunked_batches(graphs, list(range(len(graphs))), 9, torch.device("cpu"))) > 3
    assert values[1] == pytest.approx(values[0], rel=1e-12)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-10, atol=1e-14)


def test_the_refined_objective_carries_the_models_regularisation():
    """L-BFGS minimises what Adam minimised: the data loss plus NEP's L2 term (value and gradient)."""
    from mlip_plugins.nep.model import nep_regularization

    torch.manual_seed(0)
    nep = {"elements": [29], "cutoff": 4.0, "energy": {"model": {
        "name": "nep", "cutoff": 4.0, "cutoff_angular": 3.5, "n_max": [2, 2], "basis_size": [3, 3],
        "l_max": [2, 0, 0], "neuron": 4, "lambda_2": 0.5}}}
    module = PotentialModule(nep, loss={"energy": 1.0, "forces": 1.0})
    batches = chunked_batches(_graphs(4), list(range(4)), 10_000, torch.device("cpu"))
    args = (module.model, batches, module.loss_weights, module.loss_scale_map(), False)
    plain, regularized = FullBatchObjective(*args), FullBatchObjective(*args, regularize=True)
    module.model.zero_grad()
    data = float(plain.value(backward=True))
    data_grad = [p.grad.clone() for p in plain.params]
    module.model.zero_grad()
    total = float(regularized.value(backward=True))
    nep_model = module.model.energy_model
    reg = nep_regularization(nep_model, 0.0, 0.5)
    assert float(reg.detach()) > 1e-3 * data
    assert total == pytest.approx(data + float(reg.detach()), rel=1e-12)
    reg_grad = torch.autograd.grad(reg, plain.params, allow_unused=True)
    for p, g0, gr in zip(plain.params, data_grad, reg_grad):
        torch.testing.assert_close(p.grad, g0 + (gr if gr is not None else 0.0), rtol=1e-10, atol=1e-14)


def test_refinement_lowers_the_training_loss_and_hands_the_ema_weights_to_the_model():
    module, train, val = _module(ema=True), _graphs(8, seed=1), _graphs(3, seed=2)
    summary = refine_full_batch(module, _data(train, val), RefineConfig(share=0.5, max_iterations=15), deadline=None)
    assert summary["kept"]
    assert summary["after"]["train"] < 0.5 * summary["before"]["train"]
    assert summary["after"]["val"] < summary["before"]["val"]
    for raw, averaged in zip(module.model.parameters(), module.ema.module.parameters()):
        assert torch.equal(raw, averaged)


def _refine_float32_run(dtype: str) -> tuple[PotentialModule, dict, list, list, list]:
    """A float32 run's module refined with ``refine.dtype=dtype``: (module, summary, the dtypes
    of the positions and of the energies the model saw and gave, its parameters before)."""
    with default_dtype(torch.float32):
        module, train, val = _module(ema=True), _graphs(8, seed=1), _graphs(3, seed=2)
        raw = list(module.model.parameters())
        positions, energies = [], []
        model = module.eval_model
        hooks = [model.register_forward_pre_hook(lambda _, args: positions.append(args[0].pos.dtype)),
                 model.register_forward_hook(lambda _, args, out: energies.append(out["energy"].dtype))]
        config = RefineConfig(share=0.5, max_iterations=15, dtype=dtype)
        summary = refine_full_batch(module, _data(train, val), config, deadline=None)
        for hook in hooks:
            hook.remove()
        assert torch.get_default_dtype() == torch.float32
    return module, summary, sorted(set(positions), key=str), sorted(set(energies), key=str), raw


def _assert_float32_weights_kept(module: PotentialModule, raw: list) -> None:
    """The same ``Parameter`` objects (the trainer's optimiser holds them), all float32 again,
    and the energies in the model's own dtype again."""
    assert all(a is b for a, b in zip(raw, module.model.parameters()))
    for model in (module.model, module.ema.module):
        assert {p.dtype for p in model.parameters()} == {torch.float32}
        assert {b.dtype for b in model.buffers() if b.is_floating_point()} <= {torch.float32}
        assert model.energy_dtype is None


def test_a_float32_run_refined_in_float64_keeps_its_float32_weights():
    """``refine.dtype: float64``: the closure runs the model in float64; the weights come back
    in float32 and the caller's default dtype is untouched."""
    module, summary, positions, energies, raw = _refine_float32_run("float64")
    assert positions == [torch.float64] and energies == [torch.float64]
    assert summary["kept"] and summary["after"]["train"] < 0.5 * summary["before"]["train"]
    _assert_float32_weights_kept(module, raw)
    with pytest.raises(ConfigError, match="refine.dtype"):
        RefineConfig(share=0.1, dtype="float16")


def test_the_mixed_refinement_computes_in_float32_and_sums_energies_in_float64():
    """``refine.dtype: mixed`` (the default): the model keeps the run's float32, the structure
    energies it returns are float64 (``Potential.energy_dtype``), and it fits as well as the
    float64 refinement on the same data."""
    assert RefineConfig().dtype == "mixed"
    module, summary, positions, energies, raw = _refine_float32_run("mixed")
    assert positions == [torch.float32] and energies == [torch.float64]
    assert summary["kept"] and summary["after"]["train"] < 0.5 * summary["before"]["train"]
    _assert_float32_weights_kept(module, raw)
    reference = _refine_float32_run("float64")[1]
    assert summary["after"]["train"] == pytest.approx(reference["after"]["train"], rel=0.05)


def test_weights_that_raise_the_validation_loss_are_not_kept():
    module, train = _module(), _graphs(8, seed=1)
    val = _graphs(8, seed=1, sign=-1.0)  # the training set with mirrored labels
    start = _state(module.model)
    summary = refine_full_batch(module, _data(train, val), RefineConfig(share=0.5, max_iterations=15), deadline=None)
    assert summary["after"]["train"] < summary["before"]["train"]
    assert summary["after"]["val"] > summary["before"]["val"]
    assert not summary["kept"]
    for before, after in zip(start, module.model.parameters()):
        assert torch.equal(before, after)


def test_large_training_sets_are_not_refined():
    module = _module()
    start = _state(module.model)
    summary = refine_full_batch(module, _data(_graphs(4), []), RefineConfig(share=0.5, max_structures=3), deadline=None)
    assert "skipped" in summary
    assert all(torch.equal(a, b) for a, b in zip(start, module.model.parameters()))


def test_the_wall_budget_is_split_between_training_and_refinement():
    assert split_budget("00:00:08:00", 0.25) == (timedelta(minutes=6), 480.0)
    assert split_budget({"minutes": 2}, 0.5) == (timedelta(minutes=1), 120.0)
    assert split_budget(None, 0.5) == (None, None)
    with pytest.raises(ConfigError, match="trainer.max_time"):
        split_budget("8 minutes", 0.5)
    with pytest.raises(ConfigError, match="refine.share"):
        RefineConfig(share=1.0)
    with pytest.raises(ConfigError, match="refine"):
        RefineConfig.from_config({"shares": 0.1})
    with pytest.raises(ConfigError, match="refine.max_iterations"):
        RefineConfig(share=0.1, max_iterations=0)
    # a share of a wall budget; without one only a set number of iterations refines
    assert RefineConfig(share=0.2).enabled(wall_budget=True)
    assert not RefineConfig(share=0.2).enabled(wall_budget=False)
    assert RefineConfig(share=0.2, max_iterations=10).enabled(wall_budget=False)
    assert not RefineConfig(share=0.0, max_iterations=10).enabled(wall_budget=True)


def test_a_run_with_refinement_saves_and_reports_the_refined_weights(tmp_path, tiny_xyz, caplog):
    """last.ckpt holds the weights that metrics.json was computed from (after the refinement)."""
    import logging

    from hydra import compose, initialize_config_module

    from lightning_modules.train import run_training
    from mlip_plugins.checkpoint import load_potential
    from mlip_plugins.evaluation import metrics_from_predictions, predict
    from mlip_plugins.data.loading import load_graph_file
    from mlip_plugins.data.structures import LabelKeys

    overrides = [f"data.path={tiny_xyz}", "model=composable", "model.energy.descriptor.n_max=3",
                 "model.energy.descriptor.basis_size=4", "model.energy.readout.hidden=[8]", "model.cutoff=4.0",
                 "data.batch_size=4", "trainer.enable_progress_bar=false", "trainer.max_epochs=4", "data.val_fraction=0.3",
                 "trainer.max_time=00:00:05:00", "refine.share=0.2", "refine.max_iterations=10",
                 "dtype=float64", f"run_dir={tmp_path / 'run'}", "~logger"]
    with initialize_config_module("mlip_plugins.conf", version_base=None):
        cfg = compose("train", overrides=overrides)
    with caplog.at_level(logging.INFO, logger="mlip_plugins.train"):
        result = run_training(cfg)
    assert "(kept)" in caplog.text  # the refined weights replaced the trained ones
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    potential = load_potential(result["last_ckpt"])
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    graphs = load_graph_file(str(tiny_xyz), 4.0, LabelKeys(), None)
    val = [graphs[i] for i in split["val"]]
    again = metrics_from_predictions(predict(potential, val))
    assert again["energy_mae"] == pytest.approx(metrics["energy_mae"], rel=1e-9)
    assert again["forces_mae"] == pytest.approx(metrics["forces_mae"], rel=1e-9)


@pytest.mark.slow
def test_ddp_refinement_equals_one_process(tmp_path, tiny_xyz):
    """Two gloo processes sum their shares of the full-batch gradient: the L-BFGS steps, and so
    the refined weights, are those of one process on the whole set."""
    import subprocess
    import sys

    from hydra import compose, initialize_config_module

    from lightning_modules.train import run_training

    common = [f"data.path={tiny_xyz}", "model=composable", "model.energy.descriptor.n_max=3",
              "model.energy.descriptor.basis_size=4", "model.energy.readout.hidden=[8]", "model.cutoff=4.0",
              "trainer.enable_progress_bar=false", "trainer.max_epochs=2", "trainer.accelerator=cpu", "dtype=float64",
              "refine.share=0.5", "refine.max_iterations=5", "logger=[]", "seed=2"]
    ddp_dir = tmp_path / "ddp"
    result = subprocess.run([sys.executable, "-m", "lightning_modules.train", *common, "trainer=ddp", "data.batch_size=2",
                             f"hydra.run.dir={ddp_dir}"], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "(kept)" in result.stdout + result.stderr
    with initialize_config_module("mlip_plugins.conf", version_base=None):
        cfg = compose("train", overrides=[*common, "data.batch_size=4", f"run_dir={tmp_path / 'single'}"])
    single = run_training(cfg)

    def weights(path):
        state = torch.load(path, weights_only=True)["state_dict"]
        return {k: v for k, v in state.items() if k.startswith(("model.", "ema."))}

    a, b = weights(single["last_ckpt"]), weights(ddp_dir / "checkpoints" / "last.ckpt")
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-7


def test_charges_held_by_the_charges_first_stage_stay_fixed_in_the_refinement():
    """With ``loss.initial.freeze: charges`` the refinement moves the rest of the model only."""
    model = {"elements": [29], "cutoff": 4.0, "energy": {"model": {
        "name": "electrostatic", "descriptor": {"name": "radial", "n_max": 2, "basis_size": 3},
        "readout": {"name": "mlp", "hidden": [4]}, "charges": {"name": "latent", "hidden": [4]}, "solver": {"name": "ewald"}}}}
    torch.manual_seed(0)
    module = PotentialModule(model, loss={"energy": 1.0, "forces": 1.0,
                                          "initial": {"end": 0.2, "energy": 0.0, "forces": 0.0, "freeze": "charges"}})
    energy_model = module.model.energy_model
    held = [*energy_model.charge_model.parameters(), *energy_model.descriptor.parameters()]
    before_held, before_readout = _state(torch.nn.ParameterList(held)), _state(energy_model.readout)
    summary = refine_full_batch(module, _data(_graphs(6, seed=1), _graphs(2, seed=2)), RefineConfig(share=0.5, max_iterations=5), deadline=None)
    assert summary["kept"]
    assert all(torch.equal(a, b) for a, b in zip(_state(torch.nn.ParameterList(held)), before_held))
    assert any(not torch.equal(a, b) for a, b in zip(_state(energy_model.readout), before_readout))
