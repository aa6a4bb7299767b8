"""The shared building blocks of mlip_plugins.nn, and seeding of parameter initialisation."""

from __future__ import annotations

import math

import pytest
import torch

from mlip_plugins.models.builder import build_potential
from mlip_plugins.nn import (
    MLP,
    PerElementLinear,
    chebyshev_basis,
    cosine_cutoff,
    cosine_switch,
    mean_per_structure,
    sum_per_atom,
    sum_per_structure,
)

MODEL = {
    "elements": ["Cu", "Au"], "cutoff": 4.0,
    "energy": {"sum": [
        {"name": "pair", "descriptor": {"name": "radial", "n_max": 3, "basis_size": 4}, "readout": {"name": "linear"}},
        {"name": "triplet", "descriptor": {"name": "angular", "n_max": 2, "l_max": 2, "basis_size": 3}, "readout": {"name": "mlp", "hidden": [4]}},
        {"name": "embedding", "descriptor": {"name": "eam", "basis_size": 3}, "readout": {"name": "linear"}},
    ]},
}


def _coefficients(seed: int) -> list[torch.Tensor]:
    torch.manual_seed(seed)
    potential = build_potential(MODEL)
    return [p.detach().clone() for name, p in potential.named_parameters() if "coefficients" in name]


def test_the_seed_decides_the_descriptor_initialisation():
    """PairCoefficients draw from torch's global RNG (seeded by L.seed_everything), not a fixed generator."""
    first, again, other = _coefficients(0), _coefficients(0), _coefficients(1)
    assert len(first) == 3  # radial, angular and EAM pair coefficients
    for a, b, c in zip(first, again, other):
        assert torch.equal(a, b)  # same seed, same initialisation
        assert not torch.allclose(a, c)  # another seed, another one
        assert float(a.abs().max()) <= 0.5  # still U(-0.5, 0.5)


def test_chebyshev_basis_one_radius_or_per_edge_radii():
    """One implementation for the radial descriptors (one r_c) and NEP (per-edge r_c): same values."""
    r = torch.linspace(0.1, 6.0, 60, dtype=torch.float64, requires_grad=True)
    scalar = chebyshev_basis(r, 4.0, 5)
    per_edge = chebyshev_basis(r, torch.full_like(r, 4.0), 5)
    assert torch.equal(scalar, per_edge)
    inside = r.detach() < 4.0
    x = 2.0 * (r.detach()[inside] / 4.0 - 1.0) ** 2 - 1.0
    fc = cosine_cutoff(r.detach()[inside], 4.0)
    for k in range(6):  # T_k(x) = cos(k arccos x)
        expected = 0.5 * (torch.cos(k * torch.arccos(x.clamp(-1, 1))) + 1.0) * fc
        torch.testing.assert_close(scalar.detach()[inside, k], expected)
    assert torch.all(scalar.detach()[~inside] == 0)
    # far beyond the cutoff nothing overflows: the gradient is zero, not nan
    far = torch.tensor([4.0, 1e6], dtype=torch.float32, requires_grad=True)
    (grad,) = torch.autograd.grad(chebyshev_basis(far, 4.0, 12).sum(), far)
    assert torch.equal(grad, torch.zeros(2))
    assert float(cosine_cutoff(torch.tensor([0.0, 2.0, 4.0]), 4.0)[1]) == pytest.approx(0.5 * (1 + math.cos(math.pi / 2)))


def test_segment_sums_match_loops():
    values = torch.randn(7, 3, dtype=torch.float64)
    batch = torch.tensor([0, 0, 1, 1, 1, 3, 3])  # structure 2 is empty
    sums = sum_per_structure(values, batch, 4)
    means = mean_per_structure(values, batch, 4)
    for b in range(4):
        members = values[batch == b]
        torch.testing.assert_close(sums[b], members.sum(0))
        torch.testing.assert_close(means[b], members.mean(0) if len(members) else torch.zeros(3, dtype=torch.float64))
    torch.testing.assert_close(sum_per_structure(values[:, 0], batch, 4), sums[:, 0])
    center = torch.tensor([2, 0, 2, 1])
    torch.testing.assert_close(sum_per_atom(values[:4], center, 3), torch.stack([values[1], values[3], values[0] + values[2]]))


def test_mlp_shared_and_per_element():
    x = torch.randn(5, 3)
    shared = MLP([3, 4, 2], "tanh")
    assert isinstance(shared.layers[0], torch.nn.Linear)
    torch.testing.assert_close(shared(x), shared.layers[1](torch.tanh(shared.layers[0](x))))
    per_element = MLP([3, 4, 1], "silu", num_species=2)
    species = torch.tensor([0, 1, 1, 0, 1])
    out = per_element(x, species)
    for i in range(5):
        s = int(species[i])
        layer0, layer1 = per_element.layers
        hidden = torch.nn.functional.silu(x[i] @ layer0.weight[s] + layer0.bias[s])
        torch.testing.assert_close(out[i], hidden @ layer1.weight[s] + layer1.bias[s])
    assert isinstance(per_element.layers[0], PerElementLinear)
    with pytest.raises(ValueError, match="widths"):
        MLP([3])


def test_cosine_switch_is_a_c1_step():
    r = torch.tensor([0.5, 1.0, 1.5, 2.0, 3.0], dtype=torch.float64, requires_grad=True)
    s = cosine_switch(r, 1.0, 1.0)
    torch.testing.assert_close(s.detach(), torch.tensor([1.0, 1.0, 0.5, 0.0, 0.0], dtype=torch.float64))
    (slope,) = torch.autograd.grad(s.sum(), r)
    assert slope[1] == 0 and slope[3].abs() < 1e-15 and float(slope[2]) == pytest.approx(-math.pi / 2)
    # the per-edge form (NEP's ZBL: start and width per pair) gives the same numbers
    torch.testing.assert_close(cosine_switch(r, torch.ones(5, dtype=torch.float64), torch.ones(5, dtype=torch.float64)), s)
