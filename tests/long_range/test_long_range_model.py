"""The ``electrostatic`` energy model in a Potential: forces/stress vs finite differences, charges."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from torch_geometric.data import Batch

from mlip_plugins import registry
from mlip_plugins.data.structures import atoms_to_graph
from mlip_plugins.graph import build_atomic_graph
from mlip_plugins.long_range import COULOMB_CONSTANT, EwaldSolver, LatentCharges, conserve_total_charge
from mlip_plugins.long_range.model import ElectrostaticModel
from mlip_plugins.long_range.reference_crystals import CRYSTALS
from mlip_plugins.models.builder import build_potential
from mlip_plugins.models.outputs import OutputConflictError
from mlip_plugins.testing.finite_differences import numerical_force, numerical_stress

CUTOFF = 4.5


def rattled_rocksalt(repeat=(1, 1, 1), seed=0):
    atoms = CRYSTALS["NaCl_cubic"].atoms(2.82, repeat)
    rng = np.random.default_rng(seed)
    atoms.positions += rng.normal(scale=0.1, size=atoms.positions.shape)
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + [[0.01, 0.02, 0.0], [0.0, -0.01, 0.015], [0.01, 0.0, 0.02]]), scale_atoms=True)
    atoms.arrays["charges"] = atoms.get_initial_charges() * 0.9
    return atoms


def molecule(seed=1):
    rng = np.random.default_rng(seed)
    atoms = Atoms("NaClNaClNa", positions=rng.uniform(0, 5.0, size=(5, 3)))
    atoms.arrays["charges"] = np.array([0.5, -0.7, 0.6, -0.2, 0.8])  # total +1
    return atoms


def model_config(solver="ewald", charges="fixed", exterior=None, readout="linear"):
    return {
        "elements": ["Na", "Cl"],
        "cutoff": CUTOFF,
        "energy": {
            "model": {
                "name": "electrostatic",
                "descriptor": {"name": "radial", "n_max": 3, "basis_size": 4},
                "readout": {"name": readout},
                "charges": {"name": charges},
                "solver": {"name": solver, "accuracy": 1e-7 if solver == "ewald" else 1e-4},
                "exterior": exterior,
            }
        },
    }


def batch_of(structures):
    data = []
    for atoms in structures:
        labels = {"charges": atoms.arrays["charges"], "total_charge": float(atoms.arrays["charges"].sum())}
        data.append(atoms_to_graph(atoms, CUTOFF, labels))
    return Batch.from_data_list(data)


def energy_of(potential, structure):
    return float(potential(batch_of([structure]), compute_forces=False)["energy"].sum().detach())


@pytest.mark.parametrize("solver", ["ewald", "pme", "p3m"])
def test_forces_and_stress_match_finite_differences(float64, solver):
    torch.manual_seed(0)
    potential = build_potential(model_config(solver, exterior={"channels": 2, "exclusion_radius": 4.0} if solver == "ewald" else None))
    crystal = rattled_rocksalt()
    out = potential(batch_of([crystal]), compute_stress=True)
    energy = lambda atoms: energy_of(potential, atoms)  # noqa: E731
    for atom, axis in [(0, 0), (3, 2), (6, 1)]:
        fd = numerical_force(energy, crystal, atom, axis, 1e-4)
        assert float(out["forces"][atom, axis]) == pytest.approx(fd, abs=1e-6, rel=1e-5)
    for a, b in [(0, 0), (1, 2), (2, 1)]:
        fd = numerical_stress(energy, crystal, a, b, 1e-4)
        assert float(out["stress"][0, a, b]) == pytest.approx(fd, abs=1e-7, rel=1e-5)


def test_electrostatic_energy_is_coulomb_of_fixed_charges(float64):
    """With fixed charges the long-range part equals the solver's energy; mixed periodic/molecule batch."""
    potential = build_potential(model_config())
    structures = [rattled_rocksalt(), molecule()]
    out = potential(batch_of(structures))
    graph = build_atomic_graph(batch_of(structures), torch.zeros(sum(map(len, structures)), dtype=torch.long))
    reference = EwaldSolver(cutoff=CUTOFF, accuracy=1e-7)(graph, graph.charges)["energy"]
    per_structure = torch.zeros(2).index_add(0, graph.batch, out["electrostatic_energy"])
    assert torch.allclose(per_structure, reference, rtol=1e-10)
    assert torch.allclose(out["charges"], graph.charges)


def test_latent_charges_conserve_total_charge_exactly(float64):
    torch.manual_seed(0)
    structures = [rattled_rocksalt(), molecule(), rattled_rocksalt((2, 1, 1), seed=3)]
    data = batch_of(structures)
    data.total_charge = torch.tensor([0.0, 1.0, -2.0])
    graph = build_atomic_graph(data, (data.z == 17).long())
    features = torch.randn(graph.num_atoms, 6)
    for redistribution in ("uniform", "weighted"):
        model = LatentCharges(6, 2, hidden=[8], redistribution=redistribution)
        q = model(features, graph)
        totals = torch.zeros(3).index_add(0, graph.batch, q)
        assert torch.allclose(totals, data.total_charge, atol=1e-12, rtol=0)
        assert q.std() > 1e-3  # not trivially uniform
    species = registry.resolve("charge_models", "species")(6, 2, initial=[1.0, -1.0])
    assert torch.allclose(torch.zeros(3).index_add(0, graph.batch, species(features, graph)), data.total_charge, atol=1e-12)
    raw = torch.randn(graph.num_atoms)
    assert torch.allclose(torch.zeros(3).index_add(0, graph.batch, conserve_total_charge(raw, graph)), data.total_charge, atol=1e-12)


def test_latent_charges_with_zero_initial_scale_start_uniform_and_still_learn(float64):
    """initial_scale=0: the untrained head gives each atom the share Q/N of its structure's
    charge (no random Coulomb forces at the start), and the head still gets gradients."""
    torch.manual_seed(0)
    data = batch_of([rattled_rocksalt(), molecule()])
    data.total_charge = torch.tensor([0.0, 1.0])
    graph = build_atomic_graph(data, (data.z == 17).long())
    features = torch.randn(graph.num_atoms, 6)
    model = LatentCharges(6, 2, hidden=[8], initial_scale=0.0)
    q = model(features, graph)
    counts = torch.bincount(graph.batch).to(q.dtype)
    assert torch.allclose(q, (data.total_charge / counts)[graph.batch], atol=1e-12, rtol=0)
    assert LatentCharges(6, 2, hidden=[8])(features, graph).std() > 1e-3  # the usual init is not uniform
    (q * torch.arange(graph.num_atoms, dtype=q.dtype)).sum().backward()
    assert model.head.layers[-1].weight.grad.abs().sum() > 0


def test_learned_charges_in_potential_and_gradients(float64):
    """The latent head gets gradients from energy and force losses; totals stay exact in the model."""
    torch.manual_seed(0)
    potential = build_potential(model_config(charges="latent", readout="mlp", exterior={"channels": 2, "exclusion_radius": 4.0}))
    data = batch_of([rattled_rocksalt(), molecule()])
    out = potential(data, create_graph=True)
    totals = torch.zeros(2).index_add(0, data.batch, out["charges"])
    assert torch.allclose(totals, data.total_charge, atol=1e-12)
    loss = out["energy"].pow(2).sum() + out["forces"].pow(2).sum()
    loss.backward()
    head = potential.energy_model.charge_model.head
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    counts = potential.parameter_counts()
    assert counts["electrostatic.charges"] > 0 and counts["electrostatic.exterior"] > 0


def test_fixed_charges_need_data_charges(float64):
    potential = build_potential(model_config())
    atoms = rattled_rocksalt()
    data = Batch.from_data_list([atoms_to_graph(atoms, CUTOFF)])
    with pytest.raises(ValueError, match="needs per-atom charges"):
        potential(data)


def test_registered_plugins_and_config_preset(float64):
    from pathlib import Path

    from omegaconf import OmegaConf

    assert registry.resolve("energy_models", "electrostatic") is ElectrostaticModel
    assert registry.resolve("charge_models", "latent") is LatentCharges
    conf = Path(__file__).resolve().parents[2] / "conf"
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(conf), version_base=None):
        cfg = compose(config_name="train", overrides=["model=long_range", "model/solver=p3m", "model.elements=[Na,Cl]"])
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    assert model_cfg["energy"]["model"]["solver"]["name"] == "p3m"
    potential = build_potential(model_cfg)
    out = potential(batch_of([rattled_rocksalt()]))
    assert out["energy"].shape == (1,) and torch.isfinite(out["forces"]).all()
    assert abs(float(out["charges"].sum().detach())) < 1e-10
    assert COULOMB_CONSTANT == pytest.approx(14.399645, rel=1e-7)


def _zero_short_range(potential):
    with torch.no_grad():
        for parameter in potential.energy_model.readout.parameters():
            parameter.zero_()


def test_energy_scale_does_not_touch_the_coulomb_energy(float64):
    """The training set's energy scale multiplies only the learned part: with the short-range
    readout zeroed, the model's energy and forces are the Coulomb energy and forces of the fixed
    charges for any ``energy_scale``, equal to the public ``electrostatics`` function."""
    from mlip_plugins.long_range import electrostatics

    potential = build_potential(model_config())
    _zero_short_range(potential)
    crystal = rattled_rocksalt()
    reference = electrostatics(crystal, charges=crystal.arrays["charges"], method="ewald", accuracy=1e-7, cutoff=CUTOFF)
    energies = []
    for scale in (1.0, 0.37, 7.3):
        potential.energy_scale.fill_(scale)
        out = potential(batch_of([crystal]))
        energies.append(float(out["energy"][0].detach()))
        # two independently tuned Ewald sums at accuracy 1e-7 agree to ~1e-8 relative
        assert energies[-1] == pytest.approx(reference.energy, rel=1e-6)
        assert np.allclose(out["forces"].detach().numpy(), reference.forces, atol=1e-5)
    assert np.allclose(energies, energies[0], rtol=1e-13)


def test_ensemble_energy_is_not_scaled(float64):
    """The latent-ensemble model's physical energy (Coulomb + ionisation) is independent of energy_scale."""
    torch.manual_seed(0)
    config = {
        "elements": ["Na", "Cl"],
        "cutoff": CUTOFF,
        "energy": {"model": {"name": "ensemble_electrostatic", "descriptor": {"name": "radial", "n_max": 3, "basis_size": 4},
                             "readout": {"name": "linear"}, "charges": {"temperature": 0.1, "hidden": [8]}, "solver": {"name": "ewald"}}},
    }
    potential = build_potential(config)
    _zero_short_range(potential)
    data = batch_of([rattled_rocksalt()])
    energies = []
    for scale in (1.0, 5.0):
        potential.energy_scale.fill_(scale)
        out = potential(data)
        physical = out["electrostatic_energy"].sum() + out["ensemble_energy"].sum()
        assert float(out["energy"][0].detach()) == pytest.approx(float(physical.detach()), rel=1e-10)
        energies.append(float(out["energy"][0].detach()))
    assert energies[0] == pytest.approx(energies[1], rel=1e-12)


def test_sum_adds_and_product_refuses_physical_energies(float64):
    electrostatic = model_config()["energy"]
    local = {"name": "local", "descriptor": {"name": "radial", "n_max": 3, "basis_size": 4}, "readout": {"name": "linear"}}
    summed = build_potential({**model_config(), "energy": {"sum": [electrostatic, local]}})
    single = build_potential(model_config())
    alone = build_potential({**model_config(), "energy": local})
    summed.energy_model.terms[0].load_state_dict(single.energy_model.state_dict())
    summed.energy_model.terms[1].load_state_dict(alone.energy_model.state_dict())
    for potential in (summed, single, alone):
        potential.energy_scale.fill_(3.0)
    data = batch_of([rattled_rocksalt()])
    # E0 is zero, so the energies of the two terms add, the Coulomb part unscaled in both
    expected = float(single(data)["energy"][0].detach()) + float(alone(data)["energy"][0].detach())
    out = summed(data)
    assert float(out["energy"][0].detach()) == pytest.approx(expected, rel=1e-10)
    assert torch.equal(out["charges"], single(data)["charges"])
    product = build_potential({**model_config(), "energy": {"product": [local, electrostatic]}})
    with pytest.raises(ValueError, match="not multiplied"):
        product(data)


def test_two_charge_models_in_one_sum_are_an_error_not_a_silent_overwrite(float64):
    """Charges merge by the declared rule 'unique': the second term must not replace the first's."""
    first = model_config()["energy"]
    second = {"model": {**first["model"], "charges": {"name": "species"}}}
    summed = build_potential({**model_config(), "energy": {"sum": [first, second]}})
    with pytest.raises(OutputConflictError, match="both produce 'charges'"):
        summed(batch_of([rattled_rocksalt()]))
