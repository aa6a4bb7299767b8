"""Physics-only atomic-state ensemble charges: dissociation, bounds, totals, smoothness, gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from torch_geometric.data import Batch

from mlip_plugins.data.structures import atoms_to_graph
from mlip_plugins.graph import build_atomic_graph
from mlip_plugins.charges.ensemble import (
    InfeasibleChargeError,
    ensemble_charges,
    ensemble_state_weights,
    physics_model,
    qeq_charges,
    qeq_charges_of_atoms,
    solve_ensemble,
)
from mlip_plugins.charges.ensemble.coulomb import gaussian_widths, shielded_coulomb

CUTOFF = 8.0


def dimer(symbols: str, distance: float) -> Atoms:
    return Atoms(symbols, positions=[[0.0, 0.0, 0.0], [distance, 0.0, 0.0]])


def batch_graph(structures, total_charges=None, pos=None):
    """One float64 AtomicGraph for a list of Atoms (positions optionally a leaf tensor)."""
    total_charges = total_charges or [0.0] * len(structures)
    data = [atoms_to_graph(a, CUTOFF, labels={"total_charge": q}) for a, q in zip(structures, total_charges)]
    batch = Batch.from_data_list(data)
    batch.pos, batch.cell = batch.pos.double(), batch.cell.double()
    species = torch.zeros(batch.num_nodes, dtype=torch.long)
    return build_atomic_graph(batch, species, pos=batch.pos if pos is None else pos)


def coulomb_energy(graph, charges):
    """1/2 sum_{i != j in a structure} q_i q_j J_ij (shielded, non-periodic), per structure."""
    energy = torch.zeros(graph.num_graphs, dtype=torch.float64)
    sigma = gaussian_widths(graph.z)
    for b in range(graph.num_graphs):
        idx = (graph.batch == b).nonzero().view(-1)
        i, j = torch.triu_indices(len(idx), len(idx), offset=1)
        i, j = idx[i], idx[j]
        dist = (graph.pos[i] - graph.pos[j]).norm(dim=-1)
        pair = shielded_coulomb(dist, torch.sqrt(sigma[i] ** 2 + sigma[j] ** 2))
        energy = energy.index_add(0, torch.tensor([b]), (charges[i] * charges[j] * pair).sum().view(1))
    return energy


def dimer_coulomb_energy(graph, charges):
    """The same for a batch of dimers (atoms 2b and 2b+1), vectorised."""
    sigma = gaussian_widths(graph.z)
    dist = (graph.pos[0::2] - graph.pos[1::2]).norm(dim=-1)
    return charges[0::2] * charges[1::2] * shielded_coulomb(dist, torch.sqrt(sigma[0::2] ** 2 + sigma[1::2] ** 2))


def physics_energy_and_charges(model, graph, coulomb=coulomb_energy):
    """Total energy = ensemble free energy + Coulomb energy of the ensemble charges."""
    out = model.ensemble(torch.zeros(graph.num_atoms, 0, dtype=torch.float64), graph)
    free = torch.zeros(graph.num_graphs, dtype=torch.float64).index_add(0, graph.batch, out.energy())
    return free + coulomb(graph, out.charges), out


@pytest.mark.parametrize("pair", ["LiH", "NaCl"])
def test_dissociation_is_neutral_where_qeq_is_not(pair):
    far = dimer(pair, 10.0)
    q_ensemble = ensemble_charges(far)
    q_qeq = qeq_charges_of_atoms(far)
    assert np.abs(q_ensemble).max() < 0.01
    assert np.abs(q_qeq).max() > 0.2  # QEq: spurious transfer (chi_B - chi_A)/(J_A + J_B) at any distance
    # the QEq limit at infinite separation is the analytic (chi_B - chi_A) / (J_A + J_B): 0.237 e for LiH
    very_far = qeq_charges(torch.tensor([[0.0, 0, 0], [1e6, 0, 0]], dtype=torch.float64), torch.tensor(far.numbers))
    if pair == "LiH":
        assert float(very_far[0]) == pytest.approx(0.2368, abs=2e-3)
    # near equilibrium both give a cation on the metal
    q_near = ensemble_charges(dimer(pair, 1.6 if pair == "LiH" else 2.36))
    assert q_near[0] > 0.9 and q_near[1] < -0.9


def test_qeq_charges_leave_the_state_range_but_ensemble_charges_do_not():
    lih = dimer("LiH", 1.5)
    assert qeq_charges_of_atoms(lih)[0] > 1.0
    distances = np.linspace(0.8, 12.0, 57)
    structures = [dimer(p, r) for p in ("LiH", "NaCl") for r in distances]
    for states in [(1, 0, -1), (2, 1, 0, -1)]:
        model = physics_model(states=states)
        graph = batch_graph(structures)
        out = model.ensemble(torch.zeros(graph.num_atoms, 0, dtype=torch.float64), graph)
        w = out.weights
        assert (w >= 0).all() and torch.allclose(w.sum(-1), torch.ones(graph.num_atoms, dtype=torch.float64), atol=1e-12)
        assert (out.charges <= max(states) + 1e-12).all() and (out.charges >= min(states) - 1e-12).all()


@pytest.mark.parametrize(
    ("atoms", "total"),
    [(dimer("LiH", 1.6), 1.0), (dimer("LiH", 1.6), -1.0), (dimer("NaCl", 2.4), 1.0), (molecule("H2O"), -1.0), (molecule("CH4"), 1.0)],
)
def test_total_charge_is_exact_for_charged_molecules(atoms, total):
    charges = ensemble_charges(atoms, total_charge=total)
    assert charges.sum() == pytest.approx(total, abs=1e-10)
    assert charges.min() >= -1 - 1e-12 and charges.max() <= 1 + 1e-12


def test_each_structure_of_a_batch_gets_its_own_chemical_potential():
    structures = [dimer("LiH", 1.6), molecule("H2O"), dimer("NaCl", 9.0), bulk("NaCl", "rocksalt", a=5.64)]
    totals = [1.0, -1.0, 0.0, 0.0]
    graph = batch_graph(structures, totals)
    out = physics_model().ensemble(torch.zeros(graph.num_atoms, 0, dtype=torch.float64), graph)
    sums = torch.zeros(4, dtype=torch.float64).index_add(0, graph.batch, out.charges)
    assert torch.allclose(sums, torch.tensor(totals, dtype=torch.float64), atol=1e-10)
    for k, atoms in enumerate(structures):  # batching changes nothing
        alone = ensemble_charges(atoms, total_charge=totals[k])
        assert np.allclose(out.charges[graph.batch == k].numpy(), alone, atol=1e-9)
    crystal = out.charges[graph.batch == 3]  # periodic rock salt: Na+ / Cl-
    assert crystal[0] > 0.9 and crystal[1] < -0.9


def test_infeasible_total_charge_is_reported():
    with pytest.raises(InfeasibleChargeError, match="structure 0"):
        ensemble_charges(dimer("LiH", 1.6), total_charge=3.0)
    assert ensemble_charges(dimer("LiH", 1.6), total_charge=1.9, states=(2, 1, 0, -1))[0] > 0.9


def _max_step(values: np.ndarray) -> float:
    return float(np.abs(np.diff(values, axis=0)).max())


@pytest.mark.parametrize(("pair", "start", "stop"), [("LiH", 1.7, 2.9), ("NaCl", 5.2, 7.2)])
def test_charges_and_forces_are_continuous_along_the_dissociation_curve(pair, start, stop):
    """Across the ionic/covalent switch, halving the step halves the largest change between
    neighbouring points of q(R) and F(R) (a jump would not shrink)."""
    model = physics_model()
    steps = []
    for n in (201, 401):
        distances = np.linspace(start, stop, n)
        structures = [dimer(pair, r) for r in distances]
        pos = torch.tensor(np.concatenate([a.positions for a in structures]), requires_grad=True)
        graph = batch_graph(structures, pos=pos)
        energy, out = physics_energy_and_charges(model, graph, dimer_coulomb_energy)
        forces = -torch.autograd.grad(energy.sum(), pos)[0]
        q = out.charges.detach().numpy().reshape(n, 2)
        f = forces.detach().numpy().reshape(n, 2, 3)[:, 0, 0]
        assert np.isfinite(f).all()
        assert q[0, 0] > 0.5 > q[-1, 0]  # the switch is inside the window
        steps.append((_max_step(q), _max_step(f)))
    (dq1, df1), (dq2, df2) = steps
    assert dq2 < 0.6 * dq1 and df2 < 0.6 * df1
    assert dq2 < 0.05


def test_finite_difference_forces_of_a_cluster():
    rng = np.random.default_rng(0)
    atoms = Atoms("LiHNaCl", positions=[[0, 0, 0], [1.7, 0.2, 0], [0.3, 2.6, 0.4], [2.4, 2.9, -0.3]])
    atoms.positions += rng.normal(scale=0.05, size=(4, 3))
    model = physics_model(temperature=0.2)

    def energy_of(positions: torch.Tensor) -> torch.Tensor:
        return physics_energy_and_charges(model, batch_graph([atoms], pos=positions))[0].sum()

    pos = torch.tensor(atoms.positions, requires_grad=True)
    forces = -torch.autograd.grad(energy_of(pos), pos)[0]
    h = 1e-5
    numeric = torch.zeros_like(forces)
    for i in range(4):
        for c in range(3):
            plus, minus = pos.detach().clone(), pos.detach().clone()
            plus[i, c] += h
            minus[i, c] -= h
            numeric[i, c] = -(energy_of(plus) - energy_of(minus)) / (2 * h)
    assert torch.allclose(forces, numeric, atol=1e-6, rtol=1e-6)
    assert forces.abs().max() > 0.1  # a non-trivial check


def test_solver_gradients_match_implicit_function_theorem():
    """First and second derivatives of the charges w.r.t. the state energies (gradcheck/gradgradcheck)."""
    gen = torch.Generator().manual_seed(0)
    energies = (torch.randn(4, 3, generator=gen, dtype=torch.float64) * 0.3).requires_grad_(True)
    temperature = torch.full((4,), 0.2, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(4, 3, dtype=torch.bool)
    mask[3, 0] = False
    batch = torch.tensor([0, 0, 1, 1])
    total = torch.tensor([0.5, -0.3], dtype=torch.float64)

    def charges(e, t):
        return solve_ensemble(e, (1, 0, -1), mask, t, batch, total, 2).charges

    assert torch.autograd.gradcheck(charges, (energies, temperature), fast_mode=True)
    assert torch.autograd.gradgradcheck(charges, (energies, temperature), fast_mode=True)


def test_state_weights_report_and_plot(tmp_path):
    weights = ensemble_state_weights(dimer("NaCl", 2.36))
    table = weights.table()
    assert "0:Na" in table and "1:Cl" in table and "mu =" in table
    assert weights.weights[0, 0] > 0.99 and weights.weights[1, 2] > 0.99  # Na cation, Cl anion
    assert weights.most_ionic() in (0, 1)
    path = weights.plot(tmp_path / "nacl.png")
    assert path.stat().st_size > 1000


def test_separated_fragments_do_not_exchange_charge():
    """The ion-pair prior counts only bound ion pairs, so a covalent molecule is not turned into a
    cheap acceptor that a distant ionic cluster fills through the common chemical potential."""
    square = Atoms("NaClNaCl", positions=[[0, 0, 0], [2.5, 0, 0], [2.5, 2.5, 0], [0, 2.5, 0]])
    for name in ("H2O", "CH3OH", "NH3"):
        partner = molecule(name)
        partner.positions += [15.0, 0.0, 0.0]
        charges = ensemble_charges(square + partner)
        assert abs(charges[:4].sum()) < 0.01, name
        assert charges[0] > 0.9  # the cluster itself stays ionic
