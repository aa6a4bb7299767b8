"""The example plugins pass mlip-plugins' conformance kit, and their configs ship with the package."""

from __future__ import annotations

from importlib import resources

import pytest
import torch

from mlip_plugin_example.epoch_timer import EpochTimer
from mlip_plugin_example.gaussian import GaussianDescriptor
from mlip_plugins.testing import check_callback, conformance_params, run_conformance


@pytest.mark.parametrize(
    ("group", "plugin", "check"),
    conformance_params(plugins={"descriptors": [GaussianDescriptor], "callbacks": [EpochTimer]}),
)
def test_conformance(group, plugin, check):
    run_conformance(group, plugin, check)


def test_shared_weights_option_conforms():
    from mlip_plugins.testing import check_descriptor

    report = check_descriptor(GaussianDescriptor, {"per_pair": False, "width": 0.4}, checks=["contract", "forces", "cutoff"])
    assert set(report.values()) == {"passed"}


def test_features_of_a_dimer_match_the_formula():
    from mlip_plugins.testing import plugin_case
    from ase import Atoms

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        case = plugin_case("descriptors", GaussianDescriptor, config={"num_gaussians": 3, "r_min": 1.0, "width": 0.5})
        descriptor = case.instantiate(torch.float64, num_species=2, cutoff=4.0)
        with torch.no_grad():
            descriptor.weights.fill_(1.0)
        r = 2.2
        features = descriptor(case.graph(Atoms("CuAu", positions=[[0, 0, 0], [r, 0, 0]])))
        centres = torch.tensor([1.0, 2.5, 4.0])
        expected = torch.exp(-0.5 * ((r - centres) / 0.5) ** 2) * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * r / 4.0)))
        torch.testing.assert_close(features, expected.expand(2, 3), rtol=1e-12, atol=1e-14)
    finally:
        torch.set_default_dtype(previous)


def test_callback_contract_and_configs_are_shipped():
    check_callback(EpochTimer)
    root = resources.files("mlip_plugin_example.conf")
    assert root.joinpath("model/descriptor/gaussian.yaml").read_text().startswith("# @package model.energy.descriptor")
    assert "epoch_timer:" in root.joinpath("callbacks/epoch_timer.yaml").read_text()
