"""Angular descriptor and spherical harmonics: moments (addition theorem) against a direct triplet loop.

The descriptor computes q_nl(i) = sum_m A_nlm(i)^2 from per-atom moments; the reference here
loops over every pair of neighbours (j, k) of each atom, j = k included, and sums
g_n(r_ij) g_n(r_ik) P_l(cos theta_jik) with numpy's Legendre series -- agreement to 1e-10.
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
from mlip_plugins.descriptors.angular import AngularDescriptor
from mlip_plugins.descriptors.harmonics import (
    harmonic_slices,
    legendre_polynomials,
    num_harmonics,
    real_spherical_harmonics,
    sum_squares_per_degree,
)
from mlip_plugins.elements import ElementMap
from mlip_plugins.graph import build_atomic_graph
from mlip_plugins.nn import chebyshev_basis

ELEMENTS = ["Cu", "Au"]


# float64 for every test here (conftest's fixture; conftest already runs on one thread)
pytestmark = pytest.mark.usefixtures("float64")


def _structures() -> list[Atoms]:
    cluster = Atoms("Cu3Au3", positions=np.random.default_rng(0).uniform(0, 3.5, size=(6, 3)))
    crystal = bulk("Cu", "fcc", a=3.6).repeat((2, 1, 1))
    crystal.symbols[1] = "Au"
    crystal.rattle(0.1, seed=1)
    return [cluster, crystal]


def _graph(atoms: Atoms, cutoff: float):
    data = Batch.from_data_list([atoms_to_graph(atoms, cutoff)])
    return build_atomic_graph(data, ElementMap(ELEMENTS)(data.z))


def _triplet_reference(descriptor: AngularDescriptor, graph) -> np.ndarray:
    """q[i, l, n] by an explicit double loop over the neighbours of each atom."""
    coefficients = descriptor.radial.coefficients.coefficients.detach().numpy()
    basis = chebyshev_basis(graph.edge_len, descriptor.cutoff, descriptor.radial.basis_size).detach().numpy()
    vectors = graph.edge_vec.detach().numpy()
    src, dst = graph.edge_index.numpy()
    species = graph.species.numpy()
    degrees = list(range(descriptor.l_min, descriptor.l_max + 1))
    q = np.zeros((graph.num_atoms, len(degrees), descriptor.n_max + 1))
    for i in range(graph.num_atoms):
        edges = np.flatnonzero(dst == i)
        g = np.zeros((len(edges), descriptor.n_max + 1))
        for row, e in enumerate(edges):
            table = coefficients[species[i], species[src[e]]] if descriptor.radial.per_pair else coefficients[0, 0]
            g[row] = table @ basis[e]
        for a, ea in enumerate(edges):
            for b, eb in enumerate(edges):
                va, vb = vectors[ea], vectors[eb]
                cosine = float(va @ vb / (np.linalg.norm(va) * np.linalg.norm(vb)))
                for col, l in enumerate(degrees):
                    p_l = np.polynomial.legendre.legval(cosine, [0.0] * l + [1.0])
                    factor = (2 * l + 1) / (4 * math.pi) if descriptor.normalization == "nep" else 1.0
                    q[i, col] += factor * p_l * g[a] * g[b]
    return q


@pytest.mark.parametrize(
    "options",
    [
        {"n_max": 2, "basis_size": 5, "l_max": 4},
        {"n_max": 1, "basis_size": 3, "l_min": 0, "l_max": 6, "normalization": "legendre", "per_pair": False},
        {"n_max": 0, "basis_size": 2, "l_min": 2, "l_max": 8},
    ],
)
def test_moments_equal_triplet_loop(options):
    torch.manual_seed(0)
    descriptor = AngularDescriptor(num_species=2, cutoff=3.9, **options)
    with torch.no_grad():
        descriptor.radial.coefficients.coefficients.normal_()
        for atoms in _structures():
            graph = _graph(atoms, descriptor.cutoff)
            assert graph.edge_index.shape[1] > 2 * graph.num_atoms  # several neighbours per atom
            features = descriptor(graph).numpy()
            reference = _triplet_reference(descriptor, graph).reshape(graph.num_atoms, -1)
            assert features.shape == (graph.num_atoms, descriptor.dim)
            np.testing.assert_allclose(features, reference, rtol=0, atol=1e-10 * max(1.0, np.abs(reference).max()))


def test_feature_layout_is_l_major_like_nep():
    descriptor = AngularDescriptor(num_species=2, cutoff=3.9, n_max=2, l_max=3)
    graph = _graph(_structures()[1], descriptor.cutoff)
    with torch.no_grad():
        moments = descriptor.moments(graph)  # [N, n, H] for l = 1..3
        features = descriptor(graph)
    for l in (1, 2, 3):
        for n in range(3):
            block = moments[:, n, l * l - 1 : (l + 1) * (l + 1) - 1]
            torch.testing.assert_close(features[:, (l - 1) * 3 + n], (block**2).sum(-1))


def _sphere_quadrature(degree: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss-Legendre in cos(theta) times uniform phi: exact for polynomials up to ``degree``."""
    nodes, weights = np.polynomial.legendre.leggauss(degree // 2 + 1)
    n_phi = degree + 1
    phi = np.arange(n_phi) * 2 * math.pi / n_phi
    z, p = np.meshgrid(nodes, phi, indexing="ij")
    s = np.sqrt(1 - z**2)
    unit = np.stack([s * np.cos(p), s * np.sin(p), z], -1).reshape(-1, 3)
    w = (weights[:, None] * np.full(n_phi, 2 * math.pi / n_phi)).reshape(-1)
    return torch.tensor(unit), torch.tensor(w)


def test_real_harmonics_are_orthonormal():
    l_max = 8
    unit, weights = _sphere_quadrature(2 * l_max)
    y = real_spherical_harmonics(unit, l_max)
    assert y.shape == (len(unit), num_harmonics(l_max))
    gram = (y * weights[:, None]).T @ y
    torch.testing.assert_close(gram, torch.eye(num_harmonics(l_max)), rtol=0, atol=1e-12)


def test_addition_theorem_and_legendre():
    l_max = 8
    gen = torch.Generator().manual_seed(3)
    a = torch.nn.functional.normalize(torch.randn(50, 3, generator=gen), dim=-1)
    b = torch.nn.functional.normalize(torch.randn(50, 3, generator=gen), dim=-1)
    ya, yb = real_spherical_harmonics(a, l_max), real_spherical_harmonics(b, l_max)
    cosine = (a * b).sum(-1)
    legendre = legendre_polynomials(cosine, l_max)
    for l, columns in enumerate(harmonic_slices(l_max)):
        expected = (2 * l + 1) / (4 * math.pi) * legendre[:, l]
        torch.testing.assert_close((ya[:, columns] * yb[:, columns]).sum(-1), expected, rtol=0, atol=1e-13)
        reference = np.polynomial.legendre.legval(cosine.numpy(), [0.0] * l + [1.0])
        np.testing.assert_allclose(legendre[:, l].numpy(), reference, atol=1e-13)
    # sum_m Y_lm(a)^2 = (2l+1)/(4 pi) for every direction (Unsold's theorem)
    norms = sum_squares_per_degree(ya, l_max)
    torch.testing.assert_close(norms, torch.tensor([(2 * l + 1) / (4 * math.pi) for l in range(l_max + 1)]).expand_as(norms))


def test_real_harmonics_match_scipy_convention():
    """Y_l0 = Y_l^0, Y_lm = sqrt(2) (-1)^m Re Y_l^m, Y_l,-m = sqrt(2) (-1)^m Im Y_l^m (scipy has the Condon-Shortley phase)."""
    special = pytest.importorskip("scipy.special")
    if not hasattr(special, "sph_harm_y"):
        pytest.skip("scipy without sph_harm_y")
    gen = torch.Generator().manual_seed(4)
    unit = torch.nn.functional.normalize(torch.randn(20, 3, generator=gen), dim=-1)
    theta = torch.arccos(unit[:, 2]).numpy()
    phi = torch.atan2(unit[:, 1], unit[:, 0]).numpy()
    l_max = 5
    ours = real_spherical_harmonics(unit, l_max).numpy()
    for l in range(l_max + 1):
        for m in range(0, l + 1):
            complex_y = special.sph_harm_y(l, m, theta, phi)
            if m == 0:
                np.testing.assert_allclose(ours[:, l * l + l], complex_y.real, atol=1e-12)
            else:
                sign = (-1) ** m * math.sqrt(2)
                np.testing.assert_allclose(ours[:, l * l + l + m], sign * complex_y.real, atol=1e-12)
                np.testing.assert_allclose(ours[:, l * l + l - m], sign * complex_y.imag, atol=1e-12)


def test_bad_options_are_reported():
    with pytest.raises(ValueError, match="l_min"):
        AngularDescriptor(num_species=1, l_min=3, l_max=2)
    with pytest.raises(ValueError, match="normalization"):
        AngularDescriptor(num_species=1, normalization="unit")
    with pytest.raises(ValueError, match="l_max"):
        real_spherical_harmonics(torch.zeros(1, 3), -1)
