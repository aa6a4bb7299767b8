"""Training a plain NEP through its written-out force chain rule (``Potential.analytic_forces``,
on by default) gives the loss, parameter gradients and trained weights of autograd's double
backward through the force graph (``analytic_forces = False``), float64, on a batch of several
structures of different sizes and elements with a full neighbour list: a bulk cell, a one-atom
cell smaller than the cutoff (every neighbour a periodic image of the atom itself), a slab and a
cluster, with stress labels on the periodic ones."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.emt import EMT
from torch_geometric.data import Batch
from torch_geometric.loader import DataLoader

from lightning_modules.module import PotentialModule
from mlip_plugins.data.structures import LabelKeys, atoms_to_graph, extract_labels

CUTOFF = 4.6
MODELS = {
    "nep4": dict(),
    "nep3_zbl_cubic": dict(version=3, zbl={"inner": 0.6, "outer": 1.4}, l_max=[4, 1, 0, 1, 1, 1, 1]),
}


def labelled_graphs() -> list:
    rng = np.random.default_rng(5)
    crystal = bulk("Cu", "fcc", a=3.7, cubic=True).repeat((2, 2, 1))
    crystal.positions += rng.normal(scale=0.1, size=crystal.positions.shape)
    crystal.positions[1] = crystal.positions[0] + [0.9, 0.4, 0.3]  # a close pair (ZBL)
    tiny = Atoms("Cu", positions=[[0.1, 0.0, 0.2]], cell=[[2.6, 0.1, 0.0], [0.2, 2.5, 0.1], [0.0, 0.3, 2.7]], pbc=True)
    slab = bulk("Au", "fcc", a=4.1).repeat((2, 2, 2))
    slab.rattle(0.1, seed=2)
    slab.pbc = [True, True, False]
    slab.cell[2] = [0.0, 0.0, 30.0]
    cluster = molecule("CH3CH2OH")
    cluster.positions *= 1.6
    graphs = []
    for name, atoms in (("bulk", crystal), ("tiny", tiny), ("slab", slab), ("cluster", cluster)):
        atoms = atoms.copy()
        atoms.set_chemical_symbols(list(rng.choice(["Cu", "Ag", "Au"], size=len(atoms))))
        atoms.calc = EMT()
        atoms.get_forces()
        if atoms.pbc.all():
            atoms.get_stress()
        graphs.append(atoms_to_graph(atoms, CUTOFF, extract_labels(atoms, LabelKeys(), name), where=name))
    return graphs


def module(model: dict) -> PotentialModule:
    config = {"elements": [29, 47, 79], "cutoff": CUTOFF, "energy": {"model": {
        "name": "nep", "cutoff_angular": 3.6, "n_max": [3, 3], "basis_size": [4, 5], "l_max": [4, 2, 0], "neuron": 6, **model}}}
    trainer = PotentialModule(config, loss={"energy": 1.0, "forces": 1.0, "stress": 0.5}).double()
    trainer.log = lambda *a, **k: None
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a scaler, E0 and energy scale that are not the identity
        potential = trainer.model
        nep = potential.energy_model
        nep.q_scaler.copy_(0.3 + torch.rand(nep.q_scaler.shape, generator=generator, dtype=torch.float64))
        potential.e0.copy_(torch.randn(potential.e0.shape, generator=generator, dtype=torch.float64))
        potential.energy_scale.fill_(0.8)
    return trainer


def loss_and_gradients(trainer: PotentialModule, batch, analytic: bool):
    trainer.model.analytic_forces = analytic
    trainer.zero_grad(set_to_none=True)
    loss = trainer.training_step(batch, 0)
    trainer.backward(loss)
    return loss.detach(), {name: p.grad.clone() for name, p in trainer.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("model", MODELS.values(), ids=MODELS.keys())
def test_the_analytic_loss_and_gradients_are_autograds(float64, model):
    graphs = labelled_graphs()
    batch = Batch.from_data_list(graphs)
    assert bool(batch.has_stress.any()) and not bool(batch.has_stress.all())
    trainer = module(model)
    fast, reference = loss_and_gradients(trainer, batch, True), loss_and_gradients(trainer, batch, False)
    torch.testing.assert_close(fast[0], reference[0], rtol=1e-10, atol=0)
    assert fast[1].keys() == reference[1].keys() and len(fast[1]) >= 4
    for name, grad in reference[1].items():
        torch.testing.assert_close(fast[1][name], grad, rtol=1e-10, atol=1e-12 * float(grad.abs().max()), msg=name)
    # and the outputs themselves, stress included
    outputs = []
    for analytic in (True, False):
        trainer.model.analytic_forces = analytic
        outputs.append(trainer.model(batch, compute_forces=True, compute_stress=True, create_graph=True))
    for key in ("energy", "atomic_energies", "forces", "stress"):
        torch.testing.assert_close(outputs[0][key], outputs[1][key], rtol=1e-10, atol=1e-12, msg=key)


def test_the_autograd_path_is_the_off_switch(float64, monkeypatch):
    """With ``analytic_forces = False`` (or for inference, without ``create_graph``), the chain
    rule is not called."""
    from mlip_plugins.nep import analytic

    calls = []
    original = analytic.batch_energy_forces_virial
    monkeypatch.setattr(analytic, "batch_energy_forces_virial", lambda *a, **k: calls.append(1) or original(*a, **k))
    trainer = module({})
    batch = Batch.from_data_list(labelled_graphs())
    trainer.model(batch, compute_forces=True, create_graph=True)
    assert calls == [1]
    trainer.model.analytic_forces = False
    trainer.model(batch, compute_forces=True, create_graph=True)
    trainer.model.analytic_forces = True
    trainer.model(batch, compute_forces=True)
    assert calls == [1]


def test_halving_refuses_a_list_that_is_not_full(float64):
    from mlip_plugins.nep.analytic import one_way_edges

    batch = Batch.from_data_list(labelled_graphs()[:2])
    assert 2 * one_way_edges(batch.edge_index, batch.shifts).numel() == batch.edge_index.shape[1]
    with pytest.raises(ValueError, match="not a full"):
        one_way_edges(batch.edge_index[:, 1:], batch.shifts[1:])


def train(graphs, analytic: bool, steps: int = 6) -> dict:
    trainer = module(MODELS["nep3_zbl_cubic"])
    trainer.model.analytic_forces = analytic
    loader = DataLoader(graphs, batch_size=2, shuffle=False)
    fit = L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, num_sanity_val_steps=0, accelerator="cpu", devices=1)
    fit.fit(trainer, train_dataloaders=loader)
    return {name: p.detach().clone() for name, p in trainer.model.named_parameters()}


def test_a_short_training_run_gives_the_same_weights_both_ways(float64):
    graphs = labelled_graphs()
    fast, reference = train(graphs, True), train(graphs, False)
    start = module(MODELS["nep3_zbl_cubic"]).model.state_dict()
    assert any(not torch.equal(fast[name], start[name]) for name in fast)
    for name, weights in reference.items():
        torch.testing.assert_close(fast[name], weights, rtol=1e-10, atol=1e-12, msg=name)
