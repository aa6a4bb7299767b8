"""The training recipe of issue 17: variance-normalised loss terms, a cosine schedule that
ends with the wall budget, and a test file that holds back no training structure."""

from __future__ import annotations

import math
import types

import numpy as np
import pytest
import torch
from ase.build import bulk
from lightning.pytorch.callbacks import Timer

from lightning_modules.datamodule import AtomsDataModule
from lightning_modules.losses import LossWeights, errors, total_loss
from lightning_modules.module import PotentialModule
from mlip_plugins import keys
from mlip_plugins.data.statistics import label_variances
from mlip_plugins.data.structures import atoms_to_graph

MODEL = {"elements": [29], "cutoff": 4.0,
         "energy": {"descriptor": {"name": "radial", "n_max": 2, "basis_size": 3}, "readout": {"name": "mlp", "hidden": [4]}}}


def _graphs(n=6, seed=0):
    rng = np.random.default_rng(seed)
    graphs = []
    for k in range(n):
        atoms = bulk("Cu", "fcc", a=3.6 + 0.05 * k, cubic=True)
        labels = {"energy": -3.5 * len(atoms) + 0.1 * k * len(atoms), "forces": rng.normal(scale=0.5, size=(len(atoms), 3))}
        graphs.append(atoms_to_graph(atoms, 4.0, labels))
    return graphs


def test_label_variances_are_the_spreads_of_what_the_loss_compares():
    graphs = _graphs()
    scales = label_variances(graphs, [29], np.array([-3.5]))
    per_atom = np.array([0.1 * k for k in range(6)])
    assert scales["energy"] == pytest.approx(np.var(per_atom), rel=1e-5)  # float32 labels
    forces = torch.cat([g.forces for g in graphs]).double()
    assert scales["forces"] == pytest.approx(float(forces.pow(2).mean()), rel=1e-6)
    assert scales["stress"] == scales["charges"] == 1.0  # unlabelled: left as is


def test_variance_normalisation_divides_each_term_by_its_scale():
    from torch_geometric.data import Batch

    batch = Batch.from_data_list(_graphs(3))
    out = {"energy": batch.energy.view(-1) + 0.3 * 4, "forces": batch.forces + 0.2}
    errs = errors(batch, out)
    raw, raw_parts = total_loss(errs, LossWeights(energy=1.0, forces=1.0))
    scales = {"energy": torch.tensor(0.5), "forces": torch.tensor(4.0)}
    normalised, parts = total_loss(errs, LossWeights(energy=1.0, forces=1.0, normalize="variance"), scales=scales)
    assert float(parts["energy"]) == pytest.approx(float(raw_parts["energy"]) / 0.5)
    assert float(parts["forces"]) == pytest.approx(float(raw_parts["forces"]) / 4.0)
    assert float(normalised) == pytest.approx(0.09 / 0.5 + 0.04 / 4.0, rel=1e-5)
    assert float(raw) == pytest.approx(0.09 + 0.04, rel=1e-5)
    with pytest.raises(ValueError, match="loss.normalize"):
        LossWeights(normalize="std")


def test_element_weights_count_a_minority_elements_charges_that_many_times():
    """``loss.element_weights.charges: {Au: 4}``: the charge term is the mean over atoms with the
    Au atoms counted four times; other targets and elements are untouched."""
    from ase import Atoms
    from torch_geometric.data import Batch

    atoms = Atoms("MgOAuO", positions=[[0, 0, 0], [2.1, 0, 0], [0, 0, 2.5], [0, 2.1, 0]])
    labels = {"energy": -1.0, "forces": np.zeros((4, 3)), "charges": np.array([1.0, -1.0, 0.0, 0.0])}
    batch = Batch.from_data_list([atoms_to_graph(atoms, 4.0, labels)])
    miss = torch.tensor([0.1, 0.1, 0.4, 0.1])  # the charge errors; Au's is the large one
    out = {"energy": batch.energy.view(-1), "forces": batch.forces + 0.2, "charges": batch.charges + miss}
    plain = LossWeights(energy=1.0, forces=1.0, charges=1.0)
    weighted = LossWeights(energy=1.0, forces=1.0, charges=1.0, element_weights={"charges": {"Au": 4.0}})
    _, parts = total_loss(errors(batch, out, plain), plain)
    _, weighted_parts = total_loss(errors(batch, out, weighted), weighted)
    assert float(parts["charges"]) == pytest.approx(float(miss.pow(2).mean()), rel=1e-6)
    assert float(weighted_parts["charges"]) == pytest.approx((3 * 0.01 + 4 * 0.16) / 7, rel=1e-6)
    assert float(weighted_parts["forces"]) == pytest.approx(float(parts["forces"]))
    assert weighted.final_stage().element_weights == weighted.element_weights  # every stage keeps them
    for bad, match in (({"energy": {"Au": 2.0}}, "loss.element_weights: expected"),
                       ({"charges": {"Xx": 2.0}}, "unknown element 'Xx'"),
                       ({"charges": {"Au": -1.0}}, "loss.element_weights.charges.Au")):
        with pytest.raises(ValueError, match=match):
            LossWeights(element_weights=bad)


def test_loss_scales_are_module_state_and_old_checkpoints_load():
    module = PotentialModule(MODEL, loss={"normalize": "variance"})
    module.set_loss_scales({"energy": 0.25, "forces": 2.0})
    state = module.state_dict()
    n = len(keys.TARGETS)
    assert state["loss_scales"].tolist() == [0.25, 2.0] + [1.0] * (n - 2)
    old = {"state_dict": {k: v for k, v in state.items() if k != "loss_scales"}}
    module.on_load_checkpoint(old)
    fresh = PotentialModule(MODEL)
    fresh.load_state_dict(old["state_dict"])  # strict: the missing buffer was filled with ones
    assert fresh.loss_scales.tolist() == [1.0] * n
    # a checkpoint from before the BEC / dipole / polarizability targets: four scales, padded with ones
    four = {"state_dict": dict(state, loss_scales=state["loss_scales"][:4].clone())}
    module.on_load_checkpoint(four)
    fresh.load_state_dict(four["state_dict"])
    assert fresh.loss_scales.tolist() == [0.25, 2.0] + [1.0] * (n - 2)


def _cosine_factor(module, trainer):
    module._trainer = trainer
    config = module.configure_optimizers()
    return config["lr_scheduler"]["scheduler"].lr_lambdas[0]


def test_cosine_schedule_follows_the_wall_budget(monkeypatch):
    """With ``trainer.max_time`` and no step limit, the learning rate reaches its floor when the
    budget is spent; with a step limit that comes first, the steps decide."""
    module = PotentialModule(MODEL, scheduler={"name": "cosine", "warmup_steps": 0, "min_lr_ratio": 0.1})
    clock = {"now": 100.0}
    monkeypatch.setattr("lightning.pytorch.callbacks.timer.time.monotonic", lambda: clock["now"])
    timer = Timer(duration={"seconds": 60})
    timer.on_train_start(None, None)
    trainer = types.SimpleNamespace(estimated_stepping_batches=math.inf, callbacks=[timer])
    factor = _cosine_factor(module, trainer)
    assert factor(10) == pytest.approx(1.0)
    clock["now"] = 130.0  # half the budget
    assert factor(10) == pytest.approx(0.1 + 0.9 * 0.5)
    clock["now"] = 200.0  # past the budget
    assert factor(10) == pytest.approx(0.1)
    steps_first = _cosine_factor(module, types.SimpleNamespace(estimated_stepping_batches=100, callbacks=[timer]))
    clock["now"] = 100.0
    assert steps_first(100) == pytest.approx(0.1)


def test_test_file_holds_back_no_training_structure(tiny_xyz):
    """With data.test_path, the training file is split into train and validation only."""
    alone = AtomsDataModule(cutoff=4.0, train_path=str(tiny_xyz), val_fraction=0.25, test_fraction=0.25)
    alone.setup()
    with_test = AtomsDataModule(cutoff=4.0, train_path=str(tiny_xyz), test_path=str(tiny_xyz), val_fraction=0.25, test_fraction=0.25)
    with_test.setup()
    n = len(alone.train_graphs) + len(alone.val_graphs) + len(alone.test_graphs)
    assert len(with_test.val_graphs) == len(alone.val_graphs)
    assert len(with_test.train_graphs) + len(with_test.val_graphs) == n
    assert len(with_test.test_graphs) == n


def test_final_stage_weights_apply_from_their_start_in_training_only():
    module = PotentialModule(MODEL, loss={"energy": 1.0, "forces": 1.0, "final": {"start": 0.7, "energy": 10.0}})
    trainer = types.SimpleNamespace(estimated_stepping_batches=100, callbacks=[], global_step=69)
    module._trainer = trainer
    assert module._training_weights().energy == 1.0
    trainer.global_step = 70
    staged = module._training_weights()
    assert (staged.energy, staged.forces, staged.final) == (10.0, 1.0, None)
    assert module.loss_weights.energy == 1.0  # validation keeps the first-stage weights
    with pytest.raises(ValueError, match="loss.final"):
        LossWeights(final={"begin": 0.5})


def test_an_initial_stage_trains_its_weights_until_its_end_then_the_usual_ones():
    """``loss.initial`` (a charges-first stage, as the 4G-HDNNP fits charges before energies)
    holds until its end; then the first-stage weights, then ``loss.final``."""
    module = PotentialModule(MODEL, loss={"energy": 1.0, "forces": 1.0, "charges": 1.0, "final": {"start": 0.7, "energy": 10.0},
                                          "initial": {"end": 0.2, "energy": 0.0, "forces": 0.0}})
    trainer = types.SimpleNamespace(estimated_stepping_batches=100, callbacks=[], global_step=19)
    module._trainer = trainer
    first = module._training_weights()
    assert (first.energy, first.forces, first.charges, first.initial, first.final) == (0.0, 0.0, 1.0, None, None)
    trainer.global_step = 20
    assert (module._training_weights().energy, module._training_weights().forces) == (1.0, 1.0)
    trainer.global_step = 70
    assert module._training_weights().energy == 10.0
    with pytest.raises(ValueError, match="loss.initial"):
        LossWeights(initial={"start": 0.5})
    with pytest.raises(ValueError, match="after loss.final starts"):
        LossWeights(initial={"end": 0.8}, final={"start": 0.7, "energy": 10.0})


def test_e0_is_refitted_to_the_residual_energies_after_an_energy_free_first_stage():
    """After ``loss.initial`` without energies, E0 (model and EMA copy) moves by the least-squares
    fit of E_label - E_model, so the model's mean residual per atom is zero; only once per run."""
    from lightning_modules.e0_refit import residual_energies

    graphs = _graphs()
    module = PotentialModule(MODEL, loss={"energy": 1.0, "forces": 1.0, "charges": 1.0,
                                          "initial": {"end": 0.2, "energy": 0.0, "forces": 0.0}}, ema={"decay": 0.99})
    module._trainer = types.SimpleNamespace(estimated_stepping_batches=100, callbacks=[], global_step=10,
                                            datamodule=types.SimpleNamespace(train_graphs=graphs))
    before = module.model.e0.clone()
    module.on_train_batch_start(None, 0)  # still in the initial stage
    assert torch.equal(module.model.e0, before)
    _, residual = residual_energies(module.model, graphs, "cpu")
    atoms = np.array([g.num_nodes for g in graphs])
    module._trainer.global_step = 20
    module.on_train_batch_start(None, 0)
    assert float(module.model.e0 - before) == pytest.approx(residual.sum() / atoms.sum(), rel=1e-5)
    assert torch.equal(module.ema.module.e0, module.model.e0)
    _, after = residual_energies(module.model, graphs, "cpu")
    assert abs(after.sum()) < 1e-4 * np.abs(residual).sum()
    shifted = module.model.e0.clone()
    module.on_train_batch_start(None, 0)
    assert torch.equal(module.model.e0, shifted)
    checkpoint = {"state_dict": {}}
    module.on_save_checkpoint(checkpoint)
    assert checkpoint["e0_refitted"] is True


def test_freeze_charges_holds_the_charge_model_and_its_descriptor_after_the_initial_stage():
    """``loss.initial.freeze: charges``: from the stage's end on, the parameters the charges depend
    on get no update (their gradients are dropped before the optimiser step); the rest train."""
    model = {"elements": ["Na", "Cl"], "cutoff": 4.0, "energy": {"model": {
        "name": "electrostatic", "descriptor": {"name": "radial", "n_max": 2, "basis_size": 3},
        "readout": {"name": "linear"}, "charges": {"name": "latent", "hidden": [4]}, "solver": {"name": "direct"}}}}
    module = PotentialModule(model, loss={"energy": 1.0, "forces": 1.0, "charges": 1.0,
                                          "initial": {"end": 0.2, "energy": 0.0, "forces": 0.0, "freeze": "charges"}})
    module._trainer = types.SimpleNamespace(estimated_stepping_batches=100, callbacks=[], global_step=10)
    energy_model = module.model.energy_model
    held = {id(p) for p in [*energy_model.charge_model.parameters(), *energy_model.descriptor.parameters()]}
    for step, expect_held in ((10, False), (20, True)):
        module._trainer.global_step = step
        for p in module.model.parameters():
            p.grad = torch.ones_like(p)
        module.on_before_optimizer_step(None)
        for p in module.model.parameters():
            assert (p.grad is None) == (expect_held and id(p) in held)
    with pytest.raises(ValueError, match="freeze"):
        LossWeights(initial={"end": 0.2, "freeze": "readout"})
    plain = PotentialModule(MODEL, loss={"initial": {"end": 0.2, "energy": 0.0, "freeze": "charges"}})
    with pytest.raises(ValueError, match="no charge model"):
        plain.setup("fit")
