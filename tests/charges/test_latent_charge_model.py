"""The ``ensemble`` charge model and ``ensemble_electrostatic`` energy model inside a Potential."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from torch_geometric.data import Batch

from mlip_plugins import registry
from mlip_plugins.data.structures import atoms_to_graph
from mlip_plugins.charges.ensemble.charge_model import EnsembleChargeModel
from mlip_plugins.charges.ensemble.ensemble_model import EnsembleElectrostaticModel
from mlip_plugins.models.builder import build_potential
from mlip_plugins.testing import check_plugin
from mlip_plugins.testing.finite_differences import numerical_force

CUTOFF = 4.5


def model_config(name: str = "ensemble_electrostatic", charges: dict | None = None) -> dict:
    descriptor = {"name": "radial", "n_max": 5, "basis_size": 6}
    energy = {
        "name": name,
        "descriptor": descriptor,
        "readout": {"name": "mlp", "hidden": [8]},
        "charges": {"temperature": 0.12, "hidden": [8], **(charges or {})},
        "solver": {"name": "direct"},
    }
    if name == "electrostatic":
        energy["charges"]["name"] = "ensemble"
    return {"elements": ["H", "Li", "Na", "Cl"], "cutoff": CUTOFF, "energy": {"model": energy}}


def randomised(potential, seed: int = 0, scale: float = 0.3):
    """Give every parameter (the zero-initialised corrections included) a random value."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in potential.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return potential


def batch_of(structures, totals=None, dtype=torch.float64):
    totals = totals or [0.0] * len(structures)
    data = [atoms_to_graph(a, CUTOFF, labels={"total_charge": q}) for a, q in zip(structures, totals)]
    batch = Batch.from_data_list(data)
    batch.pos, batch.cell = batch.pos.to(dtype), batch.cell.to(dtype)
    return batch


def cluster() -> Atoms:
    rng = np.random.default_rng(1)
    atoms = Atoms("NaClLiHNaCl", positions=[[0, 0, 0], [2.4, 0, 0], [0, 2.5, 0.3], [2.3, 2.2, 0], [0.2, 0.1, 2.6], [2.5, 0.2, 2.4]])
    atoms.positions += rng.normal(scale=0.1, size=(6, 3))
    return atoms


def test_plugins_are_registered_and_conform():
    assert registry.resolve("charge_models", "ensemble") is EnsembleChargeModel
    assert registry.resolve("energy_models", "ensemble_electrostatic") is EnsembleElectrostaticModel
    for group, cls in [("charge_models", EnsembleChargeModel), ("energy_models", EnsembleElectrostaticModel)]:
        report = check_plugin(group, cls)
        assert all(v == "passed" for v in report.values()), report


@pytest.mark.parametrize("name", ["ensemble_electrostatic", "electrostatic"])
def test_random_model_forces_match_finite_differences_and_totals_are_exact(float64, name):
    potential = randomised(build_potential(model_config(name)).double())
    atoms = cluster()
    batch = batch_of([atoms], [1.0])
    out = potential(batch)
    assert float(out["charges"].detach().sum()) == pytest.approx(1.0, abs=1e-10)
    assert out["state_weights"].shape == (6, 3)
    assert out["charges"].abs().max() <= 1.0
    assert out["charges"].abs().max() > 0.05  # the random corrections do move charge
    energy = lambda structure: float(potential(batch_of([structure], [1.0]), compute_forces=False)["energy"][0].detach())  # noqa: E731
    for i, c in [(0, 0), (1, 2), (3, 1), (5, 0)]:
        numeric = numerical_force(energy, atoms, i, c, 1e-5)
        assert float(out["forces"][i, c]) == pytest.approx(numeric, abs=1e-6, rel=1e-6)


def test_dissociated_atoms_stay_neutral_after_any_training(float64):
    """Learned corrections vanish for an atom without neighbours and T is bounded, so a pair
    beyond the cutoff keeps its measured-state (neutral) charges whatever the parameters."""
    for seed in range(3):
        potential = randomised(build_potential(model_config()).double(), seed=seed, scale=2.0)
        far = [Atoms(p, positions=[[0, 0, 0], [10.0, 0, 0]]) for p in ("LiH", "NaCl", "HCl")]
        charges = potential(batch_of(far), compute_forces=False)["charges"]
        assert charges.abs().max() < 0.01


def test_force_training_gradient_is_exact(float64):
    """d(sum F^2)/d(theta) by autograd (double backward through the chemical-potential solve)
    matches a finite difference in theta: the recorded Newton steps give exact 2nd derivatives."""
    potential = randomised(build_potential(model_config()).double(), seed=4)
    batch = batch_of([cluster()], [-1.0])
    charge_model = potential.energy_model.charge_model
    params = [charge_model.temperature_raw, charge_model.correction.layers[-1].weight]

    def loss() -> torch.Tensor:
        return potential(batch, create_graph=True)["forces"].pow(2).sum()

    grads = torch.autograd.grad(loss(), params)
    h = 1e-6
    for param, grad, index in [(params[0], grads[0], (2,)), (params[1], grads[1], (1, 3, 0))]:
        with torch.no_grad():
            param[index] += h
        up = float(loss().detach())
        with torch.no_grad():
            param[index] -= 2 * h
        down = float(loss().detach())
        with torch.no_grad():
            param[index] += h
        assert float(grad[index]) == pytest.approx((up - down) / (2 * h), rel=1e-5, abs=1e-7)


def test_float32_model_keeps_totals():
    potential = randomised(build_potential(model_config()), seed=2)
    batch = batch_of([cluster(), cluster()], [1.0, -1.0], dtype=torch.float32)
    out = potential(batch)
    assert out["charges"].dtype == torch.float32
    sums = torch.zeros(2).index_add(0, batch.batch, out["charges"])
    assert torch.allclose(sums, torch.tensor([1.0, -1.0]), atol=1e-5)
    assert torch.isfinite(out["forces"]).all()


def test_unknown_option_and_element_are_reported():
    with pytest.raises(TypeError, match="unexpected options: colour"):
        EnsembleChargeModel(in_dim=4, num_species=1, colour="red")
    with pytest.raises(ValueError, match="strictly inside"):
        EnsembleChargeModel(in_dim=4, num_species=1, temperature=0.5)


def test_hydra_presets_build():
    """``model=ensemble`` and ``model=long_range model/charges=ensemble`` compose and build."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    with initialize_config_module(config_module="mlip_plugins.conf", version_base=None):
        for overrides, node in ((["model=ensemble"], "ensemble_electrostatic"), (["model=long_range", "model/charges=ensemble"], "electrostatic")):
            cfg = OmegaConf.to_container(compose(config_name="train", overrides=overrides).model, resolve=True)
            cfg["elements"] = ["Na", "Cl"]
            potential = build_potential(cfg)
            assert type(potential.energy_model).__name__.lower().startswith(node.split("_")[0])
            assert isinstance(potential.energy_model.charge_model, EnsembleChargeModel)
