"""Long-range solvers on graph batches: invariances, mixed batches, direct sums, user function."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchpme
from ase import Atoms
from torch_geometric.data import Batch

from mlip_plugins import registry
from mlip_plugins.data.structures import atoms_to_graph
from mlip_plugins.graph import build_atomic_graph
from mlip_plugins.long_range import (
    COULOMB_CONSTANT,
    DirectSolver,
    EwaldSolver,
    LongRangeError,
    P3MSolver,
    PMESolver,
    electrostatics,
    tune_parameters,
)
from mlip_plugins.long_range.reference_crystals import CRYSTALS

CUTOFF = 5.0


def graph_of(atoms_list, cutoff=CUTOFF, requires_grad=False):
    data = Batch.from_data_list([atoms_to_graph(a, cutoff) for a in atoms_list])
    pos = data.pos.detach().clone().requires_grad_(requires_grad)
    return build_atomic_graph(data, torch.zeros(data.num_nodes, dtype=torch.long), pos=pos)


def charges_of(atoms_list):
    return torch.tensor(np.concatenate([a.get_initial_charges() for a in atoms_list]))


def rattled_rocksalt(repeat=(2, 2, 2), seed=0, a=5.64):
    atoms = CRYSTALS["NaCl_cubic"].atoms(a / 2.0, repeat)
    rng = np.random.default_rng(seed)
    atoms.positions += rng.normal(scale=0.1, size=atoms.positions.shape)
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + [[0.01, 0.02, 0.0], [0.0, -0.01, 0.015], [0.01, 0.0, 0.02]]), scale_atoms=True)
    return atoms


def cluster(seed=0, n=6):
    rng = np.random.default_rng(seed)
    atoms = Atoms(["Na", "Cl"] * (n // 2), positions=rng.uniform(0, 6.0, size=(n, 3)))
    atoms.set_initial_charges(([0.8, -0.8] * (n // 2)))
    return atoms


def brute_force_potentials(atoms):
    pos, q = atoms.get_positions(), atoms.get_initial_charges()
    r = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
    np.fill_diagonal(r, np.inf)
    return COULOMB_CONSTANT * (q[None, :] / r).sum(1)


def test_registered_solvers_resolve():
    for name, cls in {"ewald": EwaldSolver, "pme": PMESolver, "p3m": P3MSolver, "direct": DirectSolver}.items():
        assert registry.resolve("long_range", name) is cls


def test_energy_independent_of_smearing(float64):
    atoms = rattled_rocksalt()
    graph, q = graph_of([atoms], 8.0), charges_of([atoms])
    energies = [EwaldSolver(cutoff=8.0, smearing=s, accuracy=1e-10)(graph, q)["energy"].item() for s in (0.9, 1.1, 1.3)]
    assert np.ptp(energies) < 1e-8 * abs(energies[0])
    mesh = [cls(cutoff=8.0, smearing=s, accuracy=1e-5)(graph, q)["energy"].item() for cls in (PMESolver, P3MSolver) for s in (1.0, 1.3)]
    assert np.max(np.abs(np.array(mesh) - energies[0])) < 1e-5 * abs(energies[0])


def test_energy_independent_of_cell_choice(float64):
    """Primitive, conventional and super cells of NaCl; a rattled cell and its 2x1x2 repeat."""
    solver = EwaldSolver(cutoff=6.0, accuracy=1e-10)
    per_formula = []
    for name, repeat, n_fu in [("NaCl_primitive", (1, 1, 1), 1), ("NaCl_cubic", (1, 1, 1), 4), ("NaCl_primitive", (3, 2, 2), 12)]:
        atoms = CRYSTALS[name].atoms(2.82, repeat)
        per_formula.append(solver(graph_of([atoms], 6.0), charges_of([atoms]))["energy"].item() / n_fu)
    assert np.ptp(per_formula) < 1e-9 * abs(per_formula[0])
    assert per_formula[0] == pytest.approx(-COULOMB_CONSTANT * 1.7475645946 / 2.82, rel=1e-8)
    atoms = rattled_rocksalt((1, 1, 1))
    big = atoms.repeat((2, 1, 2))
    e_small = solver(graph_of([atoms], 6.0), charges_of([atoms]))["energy"].item()
    e_big = solver(graph_of([big], 6.0), charges_of([big]))["energy"].item()
    assert e_big == pytest.approx(4 * e_small, rel=1e-9)


@pytest.mark.parametrize("cls", [EwaldSolver, PMESolver, P3MSolver])
def test_mixed_batch_matches_single_structures_and_direct_sum(float64, cls):
    """A batch of periodic crystals of different sizes/cells and non-periodic clusters."""
    structures = [rattled_rocksalt((1, 1, 1)), cluster(0), rattled_rocksalt((2, 1, 1), seed=4), cluster(1, n=8)]
    solver = cls(cutoff=CUTOFF, accuracy=1e-3)  # batch == singles and cluster == direct sum hold exactly at any accuracy
    graph, q = graph_of(structures), charges_of(structures)
    out = solver(graph, q)
    singles = [solver(graph_of([a]), charges_of([a]))["energy"].item() for a in structures]
    assert np.allclose(out["energy"].numpy(), singles, rtol=1e-12, atol=1e-10)
    start = 0
    for atoms in structures:
        n = len(atoms)
        if not atoms.pbc.any():
            assert np.allclose(out["potentials"][start : start + n].numpy(), brute_force_potentials(atoms), rtol=1e-12)
        start += n
    energy = 0.5 * (q * out["potentials"])
    assert torch.allclose(torch.zeros(4).index_add(0, graph.batch, energy), out["energy"])


def test_ewald_batched_equals_loop(float64):
    structures = [rattled_rocksalt((1, 1, 1), seed=s) for s in range(3)] + [rattled_rocksalt((2, 1, 1), seed=5)]
    graph = graph_of(structures, requires_grad=True)
    q = charges_of(structures).requires_grad_(True)
    batched = EwaldSolver(cutoff=CUTOFF, accuracy=1e-6)(graph, q)["energy"]
    loop = EwaldSolver(cutoff=CUTOFF, accuracy=1e-6, batched=False)(graph, q)["energy"]
    assert torch.allclose(batched, loop, rtol=1e-12)
    g1 = torch.autograd.grad(batched.sum(), [graph.pos, q], retain_graph=True)
    g2 = torch.autograd.grad(loop.sum(), [graph.pos, q])
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, atol=1e-10)


def test_direct_solver_matches_torchpme_and_rejects_periodic(float64):
    atoms = cluster(2, n=10)
    graph, q = graph_of([atoms]), charges_of([atoms])
    phi = DirectSolver()(graph, q)["potentials"]
    n = len(atoms)
    i, j = torch.triu_indices(n, n, 1)
    pos = torch.tensor(atoms.get_positions())
    peer = torchpme.Calculator(torchpme.CoulombPotential(prefactor=COULOMB_CONSTANT))
    half = peer(q.view(-1, 1), torch.zeros(3, 3), pos, torch.stack([i, j], 1), (pos[i] - pos[j]).norm(dim=1)).view(-1)
    assert torch.allclose(phi, 2 * half, rtol=1e-13)
    with pytest.raises(LongRangeError, match="periodic"):
        DirectSolver()(graph_of([rattled_rocksalt((1, 1, 1))]), charges_of([rattled_rocksalt((1, 1, 1))]))


def test_exterior_potential_removes_near_field(float64):
    """Exclusion radius r_ex: pair kernel v_LR(r) s(r), s = ((1 - cos(pi r/r_ex))/2)^m inside r_ex, 1 outside."""
    atoms = Atoms("NaCl", positions=[[0, 0, 0], [2.0, 0, 0]])
    atoms.set_initial_charges([1.0, -1.0])
    solver = EwaldSolver(cutoff=CUTOFF, smearing=0.5)
    graph, q = graph_of([atoms]), charges_of([atoms])
    v_lr = COULOMB_CONSTANT * torch.erf(torch.tensor(2.0 / (2**0.5 * 0.5))) / 2.0
    for radius, degree in [(3.0, 1), (3.0, 2), (1.5, 1)]:
        switch = ((1 - np.cos(np.pi * 2.0 / radius)) / 2) ** degree if radius > 2.0 else 1.0
        phi = solver.potentials(graph, q, exclusion_radius=radius, exclusion_degree=degree)
        assert torch.allclose(phi, v_lr * switch * torch.tensor([-1.0, 1.0]), rtol=1e-12)
    assert torch.allclose(solver.potentials(graph, q, exclusion_radius=4.9, exclusion_degree=8), torch.zeros(2), atol=1e-2)
    # periodic: the exterior potential of a crystal = full potential minus the smooth near field
    crystal = rattled_rocksalt((1, 1, 1))
    g, qc = graph_of([crystal]), charges_of([crystal])
    two = solver.potentials(g, torch.stack([qc, qc], 1), exclusion_radius=[None, 4.0])
    near = torch.zeros_like(qc)
    src, dst = g.edge_index
    mask = g.edge_len < 4.0
    r = g.edge_len[mask]
    switch = 1 - ((1 - torch.cos(torch.pi * r / 4.0)) / 2)
    kernel = COULOMB_CONSTANT * (1 / r - torch.erfc(r / (2**0.5 * 0.5)) / r) * switch
    near.index_add_(0, dst[mask], qc[src[mask]] * kernel)
    short = torch.zeros_like(qc).index_add_(0, dst[mask], qc[src[mask]] * COULOMB_CONSTANT * torch.erfc(r / (2**0.5 * 0.5)) / r)
    assert torch.allclose(two[:, 1], two[:, 0] - short - near, atol=1e-10)


def test_slab_ewald_and_p3m_agree(float64):
    slab = rattled_rocksalt((2, 2, 1))
    slab.pbc = [True, True, False]
    cell = slab.cell.array.copy()
    cell[2] = [0.0, 0.0, 30.0]
    slab.set_cell(cell)
    graph, q = graph_of([slab]), charges_of([slab])
    ewald = EwaldSolver(cutoff=CUTOFF, accuracy=1e-7)(graph, q)["energy"].item()
    p3m = P3MSolver(cutoff=CUTOFF, accuracy=1e-4)(graph, q)["energy"].item()
    assert p3m == pytest.approx(ewald, rel=1e-4)


def test_electrostatics_user_function(float64):
    from ase.build import bulk

    nacl = bulk("NaCl", "rocksalt", a=5.64)
    nacl.set_initial_charges([1.0, -1.0])
    for method in ("ewald", "pme", "p3m"):
        energy, forces = electrostatics(nacl, method=method, accuracy=1e-6)
        assert energy == pytest.approx(-COULOMB_CONSTANT * 1.7475645946 / 2.82, rel=1e-5)
        assert np.abs(forces).max() < 1e-5
    atoms = cluster(3)
    energy, forces = electrostatics(atoms)
    assert energy == pytest.approx(0.5 * float(atoms.get_initial_charges() @ brute_force_potentials(atoms)), rel=1e-12)
    h = 1e-5
    shifted = atoms.copy()
    shifted.positions[1, 2] += h
    minus = atoms.copy()
    minus.positions[1, 2] -= h
    fd = -(electrostatics(shifted).energy - electrostatics(minus).energy) / (2 * h)
    assert forces[1, 2] == pytest.approx(fd, rel=1e-6)


def test_tuned_parameters_reach_accuracy(float64):
    atoms = rattled_rocksalt((2, 2, 2))
    graph, q = graph_of([atoms], 12.0), charges_of([atoms])
    reference = EwaldSolver(cutoff=12.0, accuracy=1e-11)(graph, q)["potentials"]
    for method, cls in [("ewald", EwaldSolver), ("pme", PMESolver), ("p3m", P3MSolver)]:
        params = tune_parameters(method, atoms, cutoff=8.0, accuracy=1e-4)
        assert params.pop("name") == method and params["cutoff"] == 8.0
        phi = cls(**params)(graph, q)["potentials"]
        # torch-pme's bound is on the RMS force (e²/Å²); potentials here are in V, relative check
        assert ((phi - reference).pow(2).mean() / reference.pow(2).mean()).sqrt() < 1e-4, (method, params)
