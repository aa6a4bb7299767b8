"""SNES (GPUMD's optimiser): the algorithm on toy problems and the Lightning module on a tiny NEP fit."""

from __future__ import annotations

import torch

from mlip_plugins.optim.snes import SNES, default_eta_sigma, minimize, rank_utilities


def test_utilities_are_rank_based_and_sum_to_zero():
    u = rank_utilities(50)
    assert abs(float(u.sum())) < 1e-12
    assert bool((u[:-1] >= u[1:]).all()) and float(u[0]) > 0 > float(u[-1])
    assert default_eta_sigma(1000, 1) < default_eta_sigma(100, 1)


def test_snes_converges_on_an_ill_conditioned_quadratic():
    scales = torch.logspace(0, 2, 12, dtype=torch.float64)
    target = torch.linspace(-1, 1, 12, dtype=torch.float64)

    def loss(z):
        return ((scales * (z - target)) ** 2).sum()

    x0 = torch.zeros(12, dtype=torch.float64)
    best, value, snes = minimize(loss, x0, generations=400, population=20, sigma0=0.5, seed=1)
    assert float(loss(x0)) > 10.0
    assert value < 1e-4 and torch.allclose(best, target, atol=1e-2)
    assert float(snes.sigma.max()) < 0.05  # the search distribution contracted


def test_per_group_ranking_uses_each_groups_own_fitness():
    """Two groups whose losses conflict in the total: each converges to its own optimum only
    when ranked on its own column."""
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    target = torch.tensor([1.0, -1.0, 0.5, 2.0, 0.0, -2.0], dtype=torch.float64)

    def fitness(z):
        first = ((z[:3] - target[:3]) ** 2).sum()
        second = ((z[3:] - target[3:]) ** 2).sum()
        return torch.stack([first + 1e3 * second.detach() * 0, second])  # columns: group 0, group 1

    snes = SNES(torch.zeros(6, dtype=torch.float64), sigma0=0.5, population=16, groups=groups, seed=0)
    for _ in range(300):
        samples = snes.ask()
        snes.tell(torch.stack([fitness(z) for z in samples]))
    assert torch.allclose(snes.mu, target, atol=2e-2)


def test_snes_module_fits_a_tiny_nep(tmp_path):
    """One generation per batch in the Lightning trainer: the fit improves, the model holds the
    best sample, and mu/sigma are saved in the checkpoint."""
    import lightning as L
    import numpy as np
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from torch_geometric.loader import DataLoader

    from lightning_modules.snes import SNESModule, group_fitness
    from mlip_plugins.data.structures import LabelKeys, atoms_to_graph, extract_labels
    from mlip_plugins.nep.model import fit_descriptor_scaler

    frames = []
    for seed in range(4):
        atoms = bulk("Cu", "fcc", a=3.65, cubic=True).repeat((2, 1, 1))
        atoms.symbols[np.random.default_rng(seed).random(len(atoms)) < 0.4] = "Ni"
        atoms.rattle(0.1, seed=seed)
        atoms.calc = EMT()
        atoms.info["energy"] = atoms.get_potential_energy()
        atoms.arrays["forces"] = atoms.get_forces()
        atoms.calc = None
        frames.append(atoms)
    graphs = [atoms_to_graph(a, 4.0, extract_labels(a, LabelKeys(), "test")) for a in frames]
    elements = sorted({int(z) for g in graphs for z in g.z.tolist()})
    model = {"elements": elements, "cutoff": 4.0,
             "energy": {"model": {"name": "nep", "cutoff_angular": 3.5, "n_max": [2, 2], "basis_size": [3, 3], "l_max": [2, 0, 0], "neuron": 4}}}
    module = SNESModule(model, loss={"energy": 1.0, "forces": 1.0, "stress": 0.0},
                        optimizer={"name": "snes", "population": 8, "sigma0": 0.1}, scheduler={"name": "none"})
    fit_descriptor_scaler(module.model, graphs)
    loader = DataLoader(graphs, batch_size=4)

    def fitness() -> float:
        batch = next(iter(loader))
        out = module.model(batch)
        mask = module._structure_mask(batch)
        return float(group_fitness(batch, {k: v.detach() for k, v in out.items()}, module.loss_weights, mask)[-1])

    before = fitness()
    sigma0 = module.snes_sigma.clone()
    trainer = L.Trainer(max_epochs=10, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, inference_mode=False, default_root_dir=str(tmp_path))
    trainer.fit(module, train_dataloaders=loader)
    assert int(module.snes_generation) == 10
    assert fitness() < before
    assert not torch.equal(module.snes_sigma, sigma0)
    assert all(p.requires_grad for p in module.model.parameters())
    state = module.state_dict()
    assert "snes_mu" in state and "snes_sigma" in state


def test_snes_run_resumed_from_a_checkpoint_equals_an_uninterrupted_one(tmp_path):
    """The sampling generator's state is in the checkpoint: 2 + 2 generations == 4 generations."""
    import lightning as L
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from torch_geometric.loader import DataLoader

    from lightning_modules.snes import SNESModule
    from mlip_plugins.data.structures import LabelKeys, atoms_to_graph, extract_labels

    graphs = []
    for seed in range(2):
        atoms = bulk("Cu", "fcc", a=3.65, cubic=True)
        atoms.rattle(0.1, seed=seed)
        atoms.calc = EMT()
        atoms.info["energy"] = atoms.get_potential_energy()
        atoms.arrays["forces"] = atoms.get_forces()
        graphs.append(atoms_to_graph(atoms, 4.0, extract_labels(atoms, LabelKeys(), "test")))
    model = {"elements": [29], "cutoff": 4.0,
             "energy": {"model": {"name": "nep", "cutoff_angular": 3.5, "n_max": [2, 2], "basis_size": [3, 3], "l_max": [2, 0, 0], "neuron": 3}}}

    def fresh() -> SNESModule:
        torch.manual_seed(0)
        return SNESModule(model, loss={"energy": 1.0, "forces": 1.0, "stress": 0.0},
                          optimizer={"name": "snes", "population": 6, "sigma0": 0.1, "seed": 3}, scheduler={"name": "none"})

    def fit(module, epochs: int, ckpt=None, save=None):
        trainer = L.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, inference_mode=False, default_root_dir=str(tmp_path))
        trainer.fit(module, train_dataloaders=DataLoader(graphs, batch_size=2), ckpt_path=ckpt)
        if save:
            trainer.save_checkpoint(save)
        return module

    full = fit(fresh(), 4)
    fit(fresh(), 2, save=tmp_path / "half.ckpt")
    resumed = fit(fresh(), 4, ckpt=str(tmp_path / "half.ckpt"))
    assert int(resumed.snes_generation) == 4
    assert torch.equal(resumed.snes_mu, full.snes_mu) and torch.equal(resumed.snes_sigma, full.snes_sigma)
