"""Every registered plugin passes the conformance kit; and the kit catches the bugs it claims to.

The first test is parametrized over the registry at collection time (one test per plugin and
check), so a plugin added by any later change, or installed from another package, is checked
with no edit here. The other tests feed the kit deliberately broken descriptors and check that
each check fails with a message naming the problem: a check that cannot fail checks nothing.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mlip_plugins.testing import check_descriptor, conformance_params, plugin_case, run_conformance
from mlip_plugins.testing.checks import CheckSkipped, run_check


@pytest.mark.parametrize(("group", "plugin", "check"), conformance_params())
def test_registered_plugin_conforms(group, plugin, check):
    run_conformance(group, plugin, check)


# ---------------------------------------------------------------------- broken descriptors
class GoodDescriptor(nn.Module):
    """sum_j w_k exp(-r_ij / l_k) f_c(r_ij): correct in every respect (the control)."""

    def __init__(self, num_species: int, cutoff: float = 4.0, dim: int = 3):
        super().__init__()
        self.cutoff, self.dim = float(cutoff), int(dim)
        self.lengths = nn.Parameter(torch.linspace(0.5, 1.5, self.dim))
        self.mix = nn.Parameter(torch.randn(num_species, self.dim))

    def cutoff_function(self, r):
        return 0.5 * (torch.cos(torch.pi * r / self.cutoff) + 1.0)

    def edge_features(self, graph):
        r = graph.edge_len.unsqueeze(-1)
        return torch.exp(-r / self.lengths) * self.cutoff_function(r) * self.mix[graph.species[graph.edge_index[0]]]

    def forward(self, graph):
        edge = self.edge_features(graph)
        return edge.new_zeros(graph.num_atoms, self.dim).index_add(0, graph.edge_index[1], edge)


class HardCutoff(GoodDescriptor):
    def cutoff_function(self, r):
        return torch.ones_like(r)


class LinearCutoff(GoodDescriptor):
    """Continuous energy, but forces jump at the cutoff (the slope of 1 - r/rc is not zero there)."""

    def cutoff_function(self, r):
        return 1.0 - r / self.cutoff


class AbsolutePositions(GoodDescriptor):
    def forward(self, graph):
        return super().forward(graph) * (1.0 + 0.1 * torch.sin(graph.pos[:, :1]))


class DetachedDistances(GoodDescriptor):
    def edge_features(self, graph):
        r = graph.edge_len.detach().unsqueeze(-1)
        return torch.exp(-r / self.lengths) * self.cutoff_function(r) * self.mix[graph.species[graph.edge_index[0]]]


class Float32Inside(GoodDescriptor):
    def forward(self, graph):
        return super().forward(graph).float().to(graph.pos.dtype)


class BatchNormalised(GoodDescriptor):
    def forward(self, graph):
        features = super().forward(graph)
        return features / features.abs().mean()  # mixes structures of a batch


class CountsCalls(GoodDescriptor):
    def __init__(self, num_species: int, cutoff: float = 4.0, dim: int = 3):
        super().__init__(num_species, cutoff, dim)
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, graph):
        self.calls += 1
        return super().forward(graph)


class UnsavedWeights(GoodDescriptor):
    def __init__(self, num_species: int, cutoff: float = 4.0, dim: int = 3):
        super().__init__(num_species, cutoff, dim)
        self.hidden_scale = torch.rand(dim) + 0.5  # a plain attribute: not in the state_dict

    def forward(self, graph):
        return super().forward(graph) * self.hidden_scale.to(graph.pos.dtype)


class WrongShape(GoodDescriptor):
    def forward(self, graph):
        return super().forward(graph)[:, :-1]


def test_a_correct_descriptor_passes_every_check():
    report = check_descriptor(GoodDescriptor)
    assert set(report) >= {"contract", "float64", "float32", "forces", "stress", "rotation", "translation",
                           "permutation", "batch", "cutoff", "state_dict", "pure"}
    assert set(report.values()) == {"passed"}


@pytest.mark.parametrize(
    ("cls", "check", "message"),
    [
        (HardCutoff, "cutoff", "energy jumps"),
        (LinearCutoff, "cutoff", "forces jump"),
        (AbsolutePositions, "translation", "under translation"),
        (DetachedDistances, "forces", "vs finite differences"),
        (DetachedDistances, "stress", "vs finite strain differences"),
        (Float32Inside, "forces", "vs finite differences"),
        (BatchNormalised, "batch", "in a batch vs alone"),
        (CountsCalls, "pure", "changed 'energy_model.descriptor.calls'"),
        (UnsavedWeights, "state_dict", "after a state_dict round trip"),
        (WrongShape, "contract", "!= [N, dim]"),
    ],
    ids=lambda value: value.__name__ if isinstance(value, type) else str(value),
)
def test_the_kit_catches_a_broken_descriptor(cls, check, message):
    with pytest.raises(AssertionError, match=message.replace("[", r"\[").replace("(", r"\(")):
        run_check(plugin_case("descriptors", cls), check)


def test_plugins_declare_config_skips_and_tolerances():
    class Declared(LinearCutoff):
        conformance_config = {"dim": 2}
        conformance_skip = {"cutoff": "a documented linear cutoff", "periodic": "molecules only"}
        conformance_elements = ("H", "O")
        conformance_rtol = 1e-6

    case = plugin_case("descriptors", Declared)
    assert (case.config, case.elements, case.rtol) == ({"dim": 2}, ("H", "O"), 1e-6)
    assert all(not atoms.pbc.any() for atoms in case.structures())
    with pytest.raises(CheckSkipped, match="a documented linear cutoff"):
        run_check(case, "cutoff")
    with pytest.raises(CheckSkipped, match="molecules only"):
        run_check(case, "stress")
    run_check(case, "forces")
    assert case.instantiate(num_species=2).dim == 2
    # compile is only offered to plugins that claim it
    assert "compile" not in [p.values[2] for p in conformance_params(plugins={"descriptors": [Declared]})]


def test_a_plugin_that_cannot_be_built_fails_with_a_hint():
    class NeedsArgument(GoodDescriptor):
        def __init__(self, num_species: int, required_thing: int, cutoff: float = 4.0):
            super().__init__(num_species, cutoff)

    with pytest.raises(AssertionError, match="building a test model failed.*required_thing.*conformance_config"):
        run_check(plugin_case("descriptors", NeedsArgument), "forces")
    run_check(plugin_case("descriptors", NeedsArgument, config={"required_thing": 1}), "forces")
