"""The hand-written chain rule of :mod:`mlip_plugins.nep.analytic` against autograd, finite
differences and calorine's CPUNEP.

The autograd path (``MLIPCalculator(..., analytic=False)``: positions -> graph -> descriptor ->
network, ``torch.autograd.grad``) is the reference: both must agree to rounding (1e-10) on
energies, per-atom energies, forces and stress, for every feature the analytic path covers
(ZBL of each kind, typewise cutoffs, every higher-body channel, NEP3, E0 and an energy scale,
periodic, cluster, mixed boundaries and cells smaller than the cutoff).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule

from mlip_plugins.calculator import MLIPCalculator
from mlip_plugins.descriptors.harmonics import real_spherical_harmonics
from mlip_plugins.nep import analytic
from mlip_plugins.nn import chebyshev_basis
from mlip_plugins.testing.finite_differences import numerical_force, numerical_stress

TOL = 1e-10


def nep_potential(symbols, seed=0, **model):
    """A NEP built from a config, with random (not fitted) scaler, E0 and energy scale."""
    from mlip_plugins.models.builder import build_potential

    config = {"cutoff_angular": 3.6, "n_max": [3, 3], "basis_size": [4, 5], "l_max": [4, 2, 1], "neuron": 6, "seed": seed}
    config.update(model)
    potential = build_potential({"elements": list(symbols), "cutoff": 4.6, "energy": {"model": {"name": "nep", **config}}}).double()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        nep = potential.energy_model
        nep.q_scaler.copy_(0.3 + torch.rand(nep.q_scaler.shape, generator=generator, dtype=torch.float64))
        potential.e0.copy_(torch.randn(potential.e0.shape, generator=generator, dtype=torch.float64))
        potential.energy_scale.fill_(0.8)
    return potential


def structures(symbols) -> list[Atoms]:
    rng = np.random.default_rng(3)
    crystal = bulk("Cu", "fcc", a=3.6).repeat((2, 3, 2))
    crystal.set_cell(crystal.cell.array @ (np.eye(3) + [[0.02, 0.03, 0.0], [0.0, -0.01, 0.02], [0.01, 0.0, 0.03]]), scale_atoms=True)
    crystal.positions += rng.normal(scale=0.12, size=crystal.positions.shape)
    crystal.positions[1] = crystal.positions[0] + [1.0, 0.3, 0.2]  # a close pair (ZBL)
    tiny = Atoms("X2", positions=[[0, 0, 0], [1.2, 1.1, 0.9]], cell=[[2.4, 0.1, 0], [0.2, 2.5, 0], [0.1, 0.2, 2.3]], pbc=True)
    cluster = molecule("CH3CH2OH")
    cluster.positions *= 1.3
    slab = crystal.copy()
    slab.pbc = [True, True, False]
    out = []
    for atoms in (crystal, tiny, cluster, slab):
        atoms = atoms.copy()
        atoms.set_chemical_symbols(list(rng.choice(list(symbols), size=len(atoms))))
        out.append(atoms)
    return out


def assert_same_as_autograd(potential, symbols) -> None:
    fast, reference = MLIPCalculator(potential), MLIPCalculator(potential, analytic=False)
    assert fast._analytic is not None and reference._analytic is None
    for atoms in structures(symbols):
        properties = ["energy", "energies", "forces"] + (["stress"] if atoms.pbc.all() else [])
        fast.calculate(atoms, properties)
        reference.calculate(atoms, properties)
        for key in properties:
            np.testing.assert_allclose(fast.results[key], reference.results[key], rtol=0, atol=TOL, err_msg=f"{key} of {atoms}")


MODELS = {
    "nep4_q222_q1111": dict(),
    "universal_zbl": dict(zbl={"inner": 0.6, "outer": 1.4}),
    "typewise_zbl_typewise_cutoffs": dict(zbl={"outer": 1.6, "typewise_factor": 0.6}, typewise_cutoffs=[[4.6, 3.6], [4.0, 3.1], [4.3, 3.4]]),
    "flexible_zbl": dict(zbl={"flexible": [[0.5, 1.3, 0.2, 3.2, 0.5, 0.9, 0.28, 0.4, 0.02, 0.2]] * 6}),
    "every_cubic_channel": dict(l_max=[4, 1, 0, 1, 1, 1, 1]),
    "q1122_convention": dict(l_max=[2, 1, 1, 1, 1], l_max_convention="gpumd-2026-05"),
    "radial_only": dict(l_max=0),
    "nep3": dict(version=3, l_max=[6, 0, 0]),
}


@pytest.mark.parametrize("case", sorted(MODELS))
def test_analytic_forces_equal_autograd(case, float64):
    symbols = ("Cu", "Ag", "Au")
    assert_same_as_autograd(nep_potential(symbols, **MODELS[case]), symbols)


@pytest.mark.parametrize("case", ["nep4_q222_q1111", "universal_zbl", "nep3"])
def test_one_element_analytic_forces_equal_autograd(case, float64):
    """One element takes the path without per-element blocks (no gather or scatter)."""
    assert_same_as_autograd(nep_potential(("Cu",), **MODELS[case]), ("Cu",))


def test_analytic_forces_and_stress_match_finite_differences(float64):
    """Central differences of the analytic path's own energy (positions and a strain)."""
    symbols = ("Cu", "Ag", "Au")
    calc = MLIPCalculator(nep_potential(symbols, zbl={"inner": 0.6, "outer": 1.4}))
    atoms = structures(symbols)[0]
    atoms.calc = calc
    forces, stress = atoms.get_forces(), atoms.get_stress(voigt=False)
    for atom, axis in [(0, 0), (1, 2), (7, 1)]:
        assert abs(numerical_force(calc.get_potential_energy, atoms, atom, axis, 1e-5) - forces[atom, axis]) < 1e-6
    for a, b in [(0, 0), (0, 1), (2, 1)]:
        derivative = numerical_stress(calc.get_potential_energy, atoms, a, b, 1e-5)
        assert abs(derivative - 0.5 * (stress[a, b] + stress[b, a])) < 1e-6


def test_harmonics_gradient_is_the_derivative_of_the_harmonics(float64):
    vectors = torch.randn(40, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64).requires_grad_(True)
    lengths = vectors.norm(dim=-1, keepdim=True)
    reference = real_spherical_harmonics(vectors / lengths, 5)[:, 1:]
    values, polynomial_gradient = analytic.harmonics_with_gradient((vectors / lengths).detach(), 5)
    torch.testing.assert_close(values, reference.detach(), rtol=0, atol=1e-14)
    unit = (vectors / lengths).detach()
    for m in range(reference.shape[1]):
        (expected,) = torch.autograd.grad(reference[:, m].sum(), vectors, retain_graph=True)
        g = polynomial_gradient[:, :, m]
        projected = (g - (g * unit).sum(-1, keepdim=True) * unit) / lengths.detach()
        torch.testing.assert_close(projected, expected, rtol=0, atol=1e-12)


def test_basis_and_slope_equal_the_chebyshev_basis_and_its_derivative(float64):
    r = torch.linspace(0.3, 5.5, 50, dtype=torch.float64).requires_grad_(True)
    cutoff = torch.full_like(r, 5.0).detach()
    reference = chebyshev_basis(r, cutoff, 6)
    basis, slope = analytic.chebyshev_basis_and_slope(r.detach(), cutoff, 6)
    torch.testing.assert_close(basis, reference.detach().T, rtol=0, atol=1e-14)
    for k in range(7):
        (expected,) = torch.autograd.grad(reference[:, k].sum(), r, retain_graph=True)
        torch.testing.assert_close(slope[k], expected, rtol=0, atol=1e-12)


def test_charge_and_tensor_neps_keep_the_autograd_path(float64):
    symbols = ("Cu", "Ag")
    assert analytic.supports(nep_potential(symbols))
    assert not analytic.supports(nep_potential(symbols, charge_mode=1))
    assert not analytic.supports(nep_potential(symbols, model_type=1, l_max=[4, 0, 0]))
    assert MLIPCalculator(nep_potential(symbols, charge_mode=1))._analytic is None


def test_single_atom_and_no_neighbours(float64):
    symbols = ("Cu", "Ag")
    potential = nep_potential(symbols)
    for atoms in (Atoms("Cu", positions=[[0, 0, 0]]), Atoms("CuAg", positions=[[0, 0, 0], [0, 0, 9.0]])):
        fast, reference = MLIPCalculator(potential), MLIPCalculator(potential, analytic=False)
        fast.calculate(atoms, ["energy", "forces"])
        reference.calculate(atoms, ["energy", "forces"])
        assert abs(fast.results["energy"] - reference.results["energy"]) < TOL
        np.testing.assert_allclose(fast.results["forces"], 0.0, atol=TOL)


def test_gpumd_pbte_nep_matches_calorine():
    """GPUMD's own PbTe nep.txt on its first training frame: calorine's CPUNEP to 1e-8."""
    from pathlib import Path
    import os

    pytest.importorskip("calorine")
    from ase.io import read
    from calorine.calculators import CPUNEP

    folder = Path(os.environ.get("MLIP_DATASETS", Path(__file__).resolve().parents[3] / "shared" / "datasets")) / "gpumd_pbte"
    if not (folder / "nep.txt").exists():
        pytest.skip(f"{folder} not found (set MLIP_DATASETS)")
    atoms = read(folder / "train.xyz", index=0, format="gpumd-xyz")
    atoms.rattle(0.02, seed=1)
    ours, ref = atoms.copy(), atoms.copy()
    ours.calc, ref.calc = MLIPCalculator.from_file(folder / "nep.txt"), CPUNEP(str(folder / "nep.txt"))
    assert ours.calc._analytic is not None
    assert abs(ours.get_potential_energy() - ref.get_potential_energy()) / len(atoms) < 1e-8
    np.testing.assert_allclose(ours.get_forces(), ref.get_forces(), rtol=0, atol=1e-8)
    np.testing.assert_allclose(ours.get_stress(), ref.get_stress(), rtol=0, atol=1e-9)


@pytest.mark.parametrize("symbols", [("Cu", "Ag", "Au"), ("Cu",)])
def test_chain_rule_differentiates_in_the_parameters_as_autograd(symbols, float64):
    """The written-out path is made of differentiable operations: the parameter gradient of a
    force + energy loss through it equals the training path's (autograd with create_graph)."""
    potential = nep_potential(symbols).train()
    atoms = structures(symbols)[0]
    params = [p for p in potential.parameters() if p.requires_grad]
    batch = MLIPCalculator(potential, analytic=False)._graph(atoms)
    out = potential(batch, compute_forces=True, create_graph=True)
    expected = torch.autograd.grad((out["forces"] ** 2).mean() + out["energy"].sum() ** 2, params)
    chain_rule = analytic.AnalyticNEP(potential)
    pairs = chain_rule.pairs(atoms)
    atomic, grad = chain_rule.energy_and_pair_gradient(pairs)
    forces = analytic.pair_forces(pairs, grad)
    got = torch.autograd.grad((forces**2).mean() + atomic.sum() ** 2, params)
    for a, b in zip(expected, got):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-11)


def test_reused_geometry_gives_the_same_energies_forces_and_parameter_gradients(float64, monkeypatch):
    """Inside ``reuse_geometry`` a batch's pairs and bases are computed once and reused while its
    positions stay the same, also after the parameters change (the refinement's loop); the
    results and the parameter gradients are bit-identical to computing them each time, and
    positions moved in place are seen (the cache is keyed by the tensor's version)."""
    from torch_geometric.data import Batch

    symbols = ("Cu", "Ag", "Au")
    potential = nep_potential(symbols).train()
    params = [p for p in potential.parameters() if p.requires_grad]
    calculator = MLIPCalculator(potential, analytic=False)
    batch = Batch.from_data_list([calculator._graph(atoms) for atoms in structures(symbols)])
    built = []
    original = analytic._geometry_of
    monkeypatch.setattr(analytic, "_geometry_of", lambda *args: built.append(1) or original(*args))

    def evaluate() -> list[torch.Tensor]:
        out = potential(batch, compute_forces=True, compute_stress=True, create_graph=True)
        loss = (out["forces"] ** 2).mean() + out["energy"].sum() ** 2 + out["stress"].sum() ** 2
        return [out["energy"].detach(), out["forces"].detach(), *torch.autograd.grad(loss, params)]

    def assert_identical(a: list, b: list) -> None:
        assert len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))

    plain = evaluate()
    with analytic.reuse_geometry():
        assert_identical(evaluate(), plain)
        assert_identical(evaluate(), plain)
        assert len(built) == 2  # once outside, once for the cache
        with torch.no_grad():
            params[0].mul_(1.1)
        changed = evaluate()
        start = batch.pos.clone()
        with torch.no_grad():
            batch.pos.add_(0.01)
        moved = evaluate()
        assert len(built) == 3
        assert analytic._GEOMETRY_CACHE.get().atoms == batch.num_nodes  # the moved batch replaced its entry
    assert_identical(moved, evaluate())
    with torch.no_grad():
        batch.pos.copy_(start)
    assert_identical(changed, evaluate())
    assert not torch.equal(changed[0], plain[0]) and not torch.equal(moved[0], changed[0])
