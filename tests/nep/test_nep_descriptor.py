"""Physics of the NEP descriptor and model in float64 (independent of calorine).

Finite-difference forces and stress, rotation/translation/permutation invariance, a smooth
cutoff, the moment form of the 3-body term against the explicit triplet sum, the 4-body term
against the Wigner-3j contraction, the descriptor scaler and NEP's L1/L2 regulariser.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from torch_geometric.data import Batch

from mlip_plugins.data.structures import atoms_to_graph
from mlip_plugins.nep.descriptor import NEPDescriptor
from mlip_plugins.graph import build_atomic_graph
from mlip_plugins.models.builder import build_potential
from mlip_plugins.nep.model import NEPModel, fit_descriptor_scaler, nep_regularization
from mlip_plugins.nn import chebyshev_basis
from mlip_plugins.testing.finite_differences import numerical_forces, numerical_stress_tensor

ELEMENTS = ["Cu", "Au"]


# float64 default dtype (conftest's fixture; conftest also pins one intra-op thread)
pytestmark = pytest.mark.usefixtures("float64")


def nep_potential(**overrides):
    spec = {"name": "nep", "cutoff_angular": 3.6, "n_max": [3, 2], "basis_size": [4, 3], "l_max": [4, 2, 1],
            "neuron": 5, "zbl": {"inner": 1.0, "outer": 2.2}}
    spec.update(overrides)
    return build_potential({"elements": ELEMENTS, "cutoff": 4.2, "energy": {"model": spec}}).double()


def structure(seed: int = 3) -> Atoms:
    atoms = bulk("Cu", "fcc", a=3.7).repeat((2, 2, 1))  # triclinic primitive cell
    atoms.symbols[[1, 2]] = "Au"
    atoms.rattle(0.12, seed=seed)
    atoms.positions[3] = atoms.positions[0] + [1.2, 0.5, 0.4]  # within the ZBL range
    return atoms


def batch_of(atoms: Atoms, cutoff: float = 4.2):
    return Batch.from_data_list([atoms_to_graph(atoms, cutoff)])


def energy(potential, atoms: Atoms) -> float:
    return float(potential(batch_of(atoms), compute_forces=False)["energy"][0].detach())


@pytest.mark.parametrize("overrides", [{}, {"typewise_cutoffs": [[4.2, 3.4], [3.8, 3.0]], "zbl": {"outer": 2.4, "typewise_factor": 0.7}}, {"version": 3, "l_max": 6, "zbl": None}])
def test_forces_and_stress_match_finite_differences(overrides):
    potential = nep_potential(**overrides)
    atoms = structure()
    out = potential(batch_of(atoms), compute_forces=True, compute_stress=True)
    of = lambda structure: energy(potential, structure)  # noqa: E731
    np.testing.assert_allclose(out["forces"].detach().numpy(), numerical_forces(of, atoms, 1e-5), atol=1e-6)
    np.testing.assert_allclose(out["stress"][0].detach().numpy(), numerical_stress_tensor(of, atoms, 1e-5), atol=1e-7)


def descriptor_of(descriptor: NEPDescriptor, atoms: Atoms, cutoff: float = 4.2) -> torch.Tensor:
    batch = batch_of(atoms, cutoff)
    species = torch.tensor([ELEMENTS.index(s) for s in atoms.get_chemical_symbols()])
    return descriptor(build_atomic_graph(batch, species))


def test_descriptor_invariances():
    descriptor = NEPDescriptor(2, cutoff=[4.2, 3.6], n_max=[3, 2], basis_size=[4, 3], l_max=[6, 2, 1])
    atoms = structure()
    q = descriptor_of(descriptor, atoms)
    assert q.shape == (len(atoms), descriptor.dim) == (4, 4 + 3 * 8)
    rotation = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(1)))[0].numpy()
    rotated = atoms.copy()
    rotated.set_cell(atoms.cell.array @ rotation.T, scale_atoms=False)
    rotated.positions = atoms.positions @ rotation.T
    torch.testing.assert_close(descriptor_of(descriptor, rotated), q)
    shifted = atoms.copy()
    shifted.positions += [0.3, -1.1, 2.0]
    torch.testing.assert_close(descriptor_of(descriptor, shifted), q)
    order = [2, 0, 3, 1]
    torch.testing.assert_close(descriptor_of(descriptor, atoms[order]), q[order])


def test_energy_is_smooth_at_both_cutoffs():
    """A neighbour crossing the radial or the angular cutoff changes energy and slope continuously."""
    potential = nep_potential(zbl=None)

    def dimer(r):
        return Atoms("CuAu", positions=[[0, 0, 0], [r, 0, 0]], cell=np.eye(3) * 20, pbc=False)

    h = 1e-4
    for rc in (4.2, 3.6):
        e = [energy(potential, dimer(rc + k * h)) for k in (-1, 0, 1)]
        assert abs((e[2] - e[1]) - (e[1] - e[0])) < 1e-7  # value and slope continuous (no kink)
    isolated = energy(potential, dimer(4.2 + h))
    assert abs(energy(potential, dimer(4.2)) - isolated) < 1e-12


def test_three_body_moments_equal_the_explicit_triplet_sum():
    """q_nl = (2l+1)/(4 pi) sum_jk g_n(r_ij) g_n(r_ik) P_l(cos theta_ijk), j = k included."""
    rng = np.random.default_rng(0)
    positions = np.vstack([[0, 0, 0], rng.normal(scale=1.6, size=(6, 3))])
    atoms = Atoms(["Cu"] * 4 + ["Au"] * 3, positions=positions, cell=np.eye(3) * 30, pbc=False)
    descriptor = NEPDescriptor(2, cutoff=[4.0, 3.5], n_max=[2, 2], basis_size=[3, 3], l_max=8)
    q = descriptor_of(descriptor, atoms, cutoff=4.0)[0]
    species = [ELEMENTS.index(s) for s in atoms.get_chemical_symbols()]
    vectors = torch.tensor(positions[1:] - positions[0])
    r = vectors.norm(dim=1)
    inside = r < 3.5
    basis = chebyshev_basis(r, torch.full_like(r, 3.5), 3)
    g = torch.stack([basis @ descriptor.c_angular[0, species[j + 1]].T for j in range(6)])[:, :]  # [6, n, n]
    g = torch.stack([g[j, j] for j in range(6)]) * inside.unsqueeze(-1)  # [6, n_max+1]
    unit = vectors / r.unsqueeze(-1)
    cosine = unit @ unit.T
    from scipy.special import eval_legendre

    offset = descriptor.radial_dim
    for l in range(1, 9):
        p_l = torch.as_tensor(eval_legendre(l, cosine.numpy()))
        for n in range(3):
            expected = (2 * l + 1) / (4 * math.pi) * (g[:, n] @ p_l @ g[:, n])
            assert abs(float(q[offset + (l - 1) * 3 + n].detach()) - float(expected)) < 1e-10


def test_four_body_term_is_the_wigner_3j_contraction():
    """q_n222 = sum (2 2 2; m1 m2 m3) A_2m1 A_2m2 A_2m3 with complex moments A_2m = sum_j g Y_2m."""
    from scipy import special
    from sympy.physics.wigner import wigner_3j

    rng = np.random.default_rng(1)
    positions = np.vstack([[0, 0, 0], rng.normal(scale=1.4, size=(5, 3))])
    atoms = Atoms(["Cu"] * 6, positions=positions, cell=np.eye(3) * 30, pbc=False)
    descriptor = NEPDescriptor(2, cutoff=[5.0, 5.0], n_max=[0, 0], basis_size=[2, 2], l_max=[2, 2, 0])
    q222 = float(descriptor_of(descriptor, atoms, cutoff=5.0)[0, -1])
    vectors = positions[1:]
    r = np.linalg.norm(vectors, axis=1)
    basis = chebyshev_basis(torch.as_tensor(r), torch.full((5,), 5.0), 2)
    g = (basis @ descriptor.c_angular[0, 0, 0].detach()).numpy()
    theta = np.arccos(vectors[:, 2] / r)
    phi = np.arctan2(vectors[:, 1], vectors[:, 0])
    sph = getattr(special, "sph_harm_y", None)
    moments = {m: np.sum(g * (sph(2, m, theta, phi) if sph else special.sph_harm(m, 2, phi, theta))) for m in range(-2, 3)}
    expected = sum(
        float(wigner_3j(2, 2, 2, m1, m2, -m1 - m2)) * moments[m1] * moments[m2] * moments[-m1 - m2]
        for m1 in range(-2, 3) for m2 in range(-2, 3) if abs(m1 + m2) <= 2
    )
    assert abs(expected.imag) < 1e-12
    assert abs(q222 - expected.real) < 1e-10


def test_scaler_fit_regulariser_and_contract():
    potential = nep_potential()
    model = potential.energy_model
    assert isinstance(model, NEPModel) and model.cutoff == pytest.approx(4.2)
    assert not bool(model.scaler_fitted)
    graphs = [atoms_to_graph(structure(seed), 4.2) for seed in range(3)]
    assert fit_descriptor_scaler(potential, graphs) == 1
    assert fit_descriptor_scaler(potential, graphs) == 0  # already fitted: kept (resume-safe)
    batch = Batch.from_data_list(graphs)
    species = potential.element_map(batch.z)
    q = model.descriptor(build_atomic_graph(batch, species)) * model.q_scaler
    spans = q.max(0).values - q.min(0).values
    torch.testing.assert_close(spans, torch.ones_like(spans))
    assert int(model.max_neighbors.min()) > 0
    # NEP's L1/L2 regulariser over all trainable parameters
    z = torch.cat([p.reshape(-1) for p in model.parameters()])
    expected = 0.1 * z.abs().mean() + 0.2 * z.pow(2).mean().sqrt()
    torch.testing.assert_close(nep_regularization(model, 0.1, 0.2), expected)
    model.lambda_1, model.lambda_2 = 0.1, 0.2
    torch.testing.assert_close(model.regularization_loss(), expected)
    assert nep_potential().energy_model.regularization_loss() is None
