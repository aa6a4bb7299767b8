"""Linearised FIM uncertainty: closed form for a linear model, persistence, extrapolation signal."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.calculators.emt import EMT
from torch_geometric.data import Batch

from mlip_plugins.data.structures import atoms_to_graph
from mlip_plugins.graph import build_atomic_graph
from mlip_plugins.models import build_potential
from mlip_plugins.uncertainty import FisherUncertainty

CUTOFF = 4.0


# float64 default dtype (conftest's fixture; conftest also pins one intra-op thread)
pytestmark = pytest.mark.usefixtures("float64")


def structures(count: int, symbols=("Cu", "Au"), seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    graphs = []
    for _ in range(count):
        atoms = bulk("Cu", "fcc", a=3.75, cubic=True)
        atoms.set_chemical_symbols(list(rng.choice(list(symbols), size=len(atoms))))
        atoms.set_cell(atoms.cell.array * rng.uniform(0.97, 1.03), scale_atoms=True)
        atoms.positions += rng.normal(scale=0.1, size=atoms.positions.shape)
        atoms.calc = EMT()
        graphs.append(atoms_to_graph(atoms, CUTOFF, {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}))
    return graphs


def linear_potential():
    torch.manual_seed(0)
    potential = build_potential({"elements": ["Cu", "Au"], "cutoff": CUTOFF, "energy": {
        "descriptor": {"name": "radial", "n_max": 3, "basis_size": 4}, "readout": {"name": "linear"}, "name": "lin"}})
    for p in potential.energy_model.descriptor.parameters():
        p.requires_grad_(False)
    return potential


def design_rows(potential, graph) -> tuple[torch.Tensor, torch.Tensor]:
    """(∂E/∂θ [S·D], ∂F/∂θ [3N, S·D]) of a linear single-term model, from its descriptor."""
    term = potential.energy_model
    pos = graph.pos.clone().requires_grad_(True)
    species = potential.element_map(graph.z)
    features = term.descriptor(build_atomic_graph(graph, species, pos=pos))
    design = torch.zeros(2, term.descriptor.dim).index_add(0, species, features).reshape(-1)
    forces = -torch.stack([torch.autograd.grad(d, pos, retain_graph=True)[0].reshape(-1) for d in design]).T
    return design.detach(), forces


def test_linear_model_matches_closed_form_covariance():
    potential = linear_potential()
    train = structures(5)
    unc = FisherUncertainty.fit(potential, train, ridge=1e-6, keep=0.0)
    # noise = mean squared residuals of the (untrained) model per property
    with torch.enable_grad():
        out = potential(Batch.from_data_list(train))
    natoms = torch.tensor([g.num_nodes for g in train], dtype=torch.float64)
    e_res = (out["energy"].detach() - torch.cat([g.energy for g in train])) / natoms
    assert unc.noise["energy"] == pytest.approx(float(e_res.pow(2).mean()), rel=1e-10)
    # F = Σ g gᵀ/σ², C = (F + α)⁻¹
    rows, weights = [], []
    for g in train:
        design, forces = design_rows(potential, g)
        rows += [design / g.num_nodes, *forces]
        weights += [1 / unc.noise["energy"]] + [1 / unc.noise["forces"]] * forces.shape[0]
    psi = torch.stack(rows)
    fisher = psi.T @ torch.diag(torch.tensor(weights)) @ psi
    alpha = 1e-6 * float(torch.linalg.eigvalsh(fisher).max())
    cov = torch.linalg.inv(fisher + alpha * torch.eye(fisher.shape[0]))
    test = structures(2, seed=7)
    std = unc.predict_std(potential, Batch.from_data_list(test))
    for k, g in enumerate(test):
        design, forces = design_rows(potential, g)
        assert float(std["energy_std"][k]) == pytest.approx(float(design @ cov @ design) ** 0.5, rel=1e-6)
    design, forces = design_rows(potential, test[1])
    expected = torch.einsum("mp,pq,mq->m", forces, cov, forces).sqrt().view(-1, 3)
    torch.testing.assert_close(std["forces_std"][4:], expected, rtol=1e-6, atol=1e-12)
    assert std["forces_std_atom"].shape == (8,) and std["energy_per_atom_std"].shape == (2,)
    # a stronger prior (larger ridge) can only shrink the predicted variance
    tighter = unc.with_ridge(1e-2).predict_std(potential, test[0])
    assert tighter["energy_std"][0] < std["energy_std"][0]
    assert unc.with_ridge(1e-6).alpha == pytest.approx(unc.alpha)


def test_save_load_roundtrip_and_layout_check(tmp_path):
    potential = linear_potential()
    unc = FisherUncertainty.fit(potential, structures(3))
    unc.scale["forces"] = 2.0
    path = unc.save(tmp_path / "unc.pt")
    loaded = FisherUncertainty.load(path)
    graph = structures(1, seed=3)[0]
    a, b = unc.predict_std(potential, graph), loaded.predict_std(potential, graph)
    for key in a:
        torch.testing.assert_close(a[key], b[key])
    other = build_potential({"elements": ["Cu", "Au"], "cutoff": CUTOFF, "energy": {
        "descriptor": {"name": "radial", "n_max": 2, "basis_size": 4}, "readout": {"name": "linear"}, "name": "lin"}})
    with pytest.raises(ValueError, match="differ"):
        loaded.predict_std(other, graph)
    (tmp_path / "bad.pt").write_bytes(b"not a file")
    with pytest.raises(Exception):
        FisherUncertainty.load(tmp_path / "bad.pt")


def test_std_flags_structures_outside_the_training_data():
    """Fitted on pure Cu, the model is certain about Cu and uncertain about Au-containing cells."""
    torch.manual_seed(0)
    potential = build_potential({"elements": ["Cu", "Au"], "cutoff": CUTOFF, "energy": {
        "descriptor": {"name": "radial", "n_max": 2, "basis_size": 3}, "readout": {"name": "mlp", "hidden": [4]}, "name": "m"}})
    unc = FisherUncertainty.fit(potential, structures(4, symbols=("Cu",)))
    cu = unc.predict_std(potential, structures(2, symbols=("Cu",), seed=5))
    alloy = unc.predict_std(potential, structures(2, symbols=("Cu", "Au"), seed=5))
    assert float(alloy["energy_per_atom_std"].min()) > 10 * float(cu["energy_per_atom_std"].max())
    assert float(alloy["forces_std_atom"].median()) > 5 * float(cu["forces_std_atom"].median())
    stats = unc.assess(potential, structures(3, symbols=("Cu", "Au"), seed=9) + structures(3, symbols=("Cu",), seed=9))
    # an untrained model's errors carry no signal to rank; only the bookkeeping is checked here
    # (the ranking on held-out data is measured in benchmarks/fim_uncertainty.py)
    assert -1 <= stats["energy_spearman"] <= 1 and stats["energy_count"] == 6 and stats["forces_count"] == 24
    assert 0 <= stats["forces_within_1std"] <= stats["forces_within_2std"] <= 1
