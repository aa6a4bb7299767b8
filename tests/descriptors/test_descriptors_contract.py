"""Physics contract of every built-in descriptor, in float64.

For each descriptor configuration: finite-difference forces and strain derivative, rotation /
translation / permutation invariance, a smooth cutoff (value and slope continuous as a
neighbour leaves), edges beyond the descriptor's cutoff ignored, and float64 end to end.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from torch_geometric.data import Batch

from mlip_plugins.data.structures import atoms_to_graph
from mlip_plugins.elements import ElementMap
from mlip_plugins.graph import build_atomic_graph
from mlip_plugins.models.builder import instantiate_plugin

ELEMENTS = ["Cu", "Au"]

CONFIGS = {
    "radial": {"name": "radial", "n_max": 3, "basis_size": 4},
    "angular": {"name": "angular", "n_max": 2, "basis_size": 4, "l_max": 4},
    "angular_legendre_l0_shared": {
        "name": "angular", "n_max": 1, "basis_size": 3, "l_min": 0, "l_max": 3,
        "normalization": "legendre", "per_pair": False, "cutoff": 3.6,
    },
    "eam": {"name": "eam", "n_densities": 2, "basis_size": 4, "embeddings": ["sqrt", "linear", "square", "rho_log_rho"]},
    "message_passing_angular": {
        "name": "message_passing", "base": {"name": "angular", "n_max": 1, "l_max": 2, "basis_size": 3, "cutoff": 3.6},
        "layers": 2, "width": 6, "basis_size": 4,
    },
    "message_passing_eam_tanh": {"name": "message_passing", "base": {"name": "eam"}, "layers": 1, "activation": "tanh"},
}
CUTOFF = 4.2


# float64 for every test here (conftest's fixture; conftest already runs on one thread)
pytestmark = pytest.mark.usefixtures("float64")


def make_descriptor(config: dict) -> torch.nn.Module:
    torch.manual_seed(0)
    descriptor = instantiate_plugin("descriptors", config, "test", num_species=len(ELEMENTS), cutoff=CUTOFF)
    return descriptor.double()


def periodic_structure() -> Atoms:
    atoms = bulk("Cu", "fcc", a=3.7).repeat((2, 2, 1))  # triclinic primitive cell, 4 atoms
    atoms.symbols[[1, 2]] = "Au"
    atoms.rattle(0.1, seed=3)
    return atoms


def cluster() -> Atoms:
    rng = np.random.default_rng(5)
    positions = rng.uniform(0.0, 4.0, size=(7, 3))
    atoms = Atoms("Cu4Au3", positions=positions)
    return atoms


def features_of(descriptor, atoms: Atoms, cutoff: float | None = None) -> torch.Tensor:
    data = Batch.from_data_list([atoms_to_graph(atoms, cutoff or descriptor.cutoff)])
    species = ElementMap(ELEMENTS)(data.z)
    return descriptor(build_atomic_graph(data, species))


def random_rotation(seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


STRUCTURES = {"periodic": periodic_structure, "cluster": cluster}


@pytest.mark.parametrize("structure", list(STRUCTURES))
@pytest.mark.parametrize("key", list(CONFIGS))
def test_forces_and_strain_derivative_match_finite_differences(key, structure):
    descriptor = make_descriptor(CONFIGS[key])
    atoms = STRUCTURES[structure]()
    data = Batch.from_data_list([atoms_to_graph(atoms, descriptor.cutoff)])
    species = ElementMap(ELEMENTS)(data.z)
    weights = torch.randn(descriptor.dim, generator=torch.Generator().manual_seed(1))

    def energy(pos, strain):
        features = descriptor(build_atomic_graph(data, species, strain=strain, pos=pos))
        assert features.dtype == torch.float64 and features.shape == (len(atoms), descriptor.dim)
        return torch.tanh(features @ weights).sum()

    pos = data.pos.clone().requires_grad_(True)
    strain = torch.zeros(1, 3, 3, requires_grad=True)
    grad_pos, grad_strain = torch.autograd.grad(energy(pos, strain), [pos, strain])
    h = 1e-5
    with torch.no_grad():
        for atom in range(min(len(atoms), 4)):
            for axis in range(3):
                step = torch.zeros_like(data.pos)
                step[atom, axis] = h
                fd = (energy(data.pos + step, strain) - energy(data.pos - step, strain)) / (2 * h)
                assert abs(fd - grad_pos[atom, axis]) < 1e-7 * (1 + abs(fd))
        direction = torch.tensor([[[0.3, 0.1, -0.2], [0.1, -0.4, 0.05], [-0.2, 0.05, 0.2]]])
        fd = (energy(data.pos, h * direction) - energy(data.pos, -h * direction)) / (2 * h)
        assert abs(fd - (grad_strain * direction).sum()) < 1e-7 * (1 + abs(fd))


@pytest.mark.parametrize("key", list(CONFIGS))
def test_rotation_translation_permutation_invariance(key):
    descriptor = make_descriptor(CONFIGS[key])
    with torch.no_grad():
        for make in STRUCTURES.values():
            atoms = make()
            reference = features_of(descriptor, atoms)
            assert torch.isfinite(reference).all() and reference.abs().max() > 0
            rotated = atoms.copy()
            rotation = random_rotation(7)
            rotated.positions = atoms.positions @ rotation.T
            rotated.cell = atoms.cell.array @ rotation.T
            torch.testing.assert_close(features_of(descriptor, rotated), reference, rtol=1e-10, atol=1e-10)
            moved = atoms.copy()
            moved.positions += np.array([0.7, -1.3, 2.1])
            torch.testing.assert_close(features_of(descriptor, moved), reference, rtol=1e-10, atol=1e-10)
            order = np.random.default_rng(2).permutation(len(atoms))
            permuted = atoms[order]
            torch.testing.assert_close(features_of(descriptor, permuted), reference[order], rtol=1e-10, atol=1e-10)


def _leaving_neighbour(cutoff: float, distance: float) -> Atoms:
    """Atom 2 at ``distance`` from atom 0; atom 1 at 2.4 Å on the other side (so 2 only ever sees 0)."""
    positions = [[0.0, 0.0, 0.0], [-2.4, 0.3, 0.0], [distance, 0.0, 0.0]]
    return Atoms("CuAuAu", positions=positions)


@pytest.mark.parametrize("key", list(CONFIGS))
def test_smooth_cutoff_and_edges_beyond_cutoff_ignored(key):
    descriptor = make_descriptor(CONFIGS[key])
    rc = descriptor.cutoff
    list_cutoff = rc + 0.6  # the neighbour list holds edges beyond the descriptor's cutoff

    def total(distance: float) -> tuple[float, float]:
        atoms = _leaving_neighbour(rc, distance)
        data = Batch.from_data_list([atoms_to_graph(atoms, list_cutoff)])
        species = ElementMap(ELEMENTS)(data.z)
        pos = data.pos.clone().requires_grad_(True)
        value = descriptor(build_atomic_graph(data, species, pos=pos)).sum()
        (grad,) = torch.autograd.grad(value, pos)
        return float(value.detach()), float(grad[2, 0])

    outside, slope_outside = total(rc + 1e-3)
    far, _ = total(rc + 0.5)
    assert abs(outside - far) < 1e-12 and abs(slope_outside) < 1e-12
    near_1, slope_1 = total(rc - 1e-2)
    near_2, slope_2 = total(rc - 1e-3)
    assert abs(near_1 - outside) > 0  # the neighbour does contribute inside the cutoff
    # value approaches its outside value quadratically, the slope linearly
    assert abs(near_2 - outside) <= 0.02 * abs(near_1 - outside) + 1e-14
    assert abs(slope_2) <= 0.15 * abs(slope_1) + 1e-12


@pytest.mark.parametrize("key", list(CONFIGS))
def test_float32_module_converts_to_float64(key):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        descriptor = instantiate_plugin("descriptors", CONFIGS[key], "test", num_species=2, cutoff=CUTOFF)
        atoms = periodic_structure()
        out32 = features_of(descriptor, atoms)
        assert out32.dtype == torch.float32
    finally:
        torch.set_default_dtype(previous)
    out64 = features_of(descriptor.double(), atoms)
    assert out64.dtype == torch.float64
    torch.testing.assert_close(out64.float(), out32, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("key", ["angular", "eam", "message_passing_angular"])
def test_torch_compile_fullgraph_matches_eager(key):
    descriptor = make_descriptor(CONFIGS[key])
    data = Batch.from_data_list([atoms_to_graph(periodic_structure(), descriptor.cutoff)])
    species = ElementMap(ELEMENTS)(data.z)

    def features(pos):
        return descriptor(build_atomic_graph(data, species, pos=pos))

    pos = data.pos.clone().requires_grad_(True)
    compiled = torch.compile(features, backend="aot_eager", fullgraph=True)
    eager_out, compiled_out = features(pos), compiled(pos)
    torch.testing.assert_close(compiled_out, eager_out)
    torch.testing.assert_close(torch.autograd.grad(compiled_out.sum(), pos)[0], torch.autograd.grad(eager_out.sum(), pos)[0])
