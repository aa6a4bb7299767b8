"""Composable models: sums and products of terms, nested, from configs and presets.

A composite's energy must equal the sum / product of its terms' energies computed separately
(each term rebuilt as its own Potential with the same weights); presets in conf/model compose
with Hydra and report parameters per term; the < 100-parameter preset trains on the default
dataset (loss decreases under a few plain-torch Adam steps).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from torch_geometric.data import Batch

from mlip_plugins.data.structures import atoms_to_graph
from mlip_plugins.models.builder import build_potential
from mlip_plugins.models.composition import Product, Sum, Term

ELEMENTS = ["Cu", "Au"]
CUTOFF = 4.5
RADIAL = {"name": "two_body", "descriptor": {"name": "radial", "n_max": 3, "basis_size": 4}, "readout": {"name": "mlp", "hidden": [4]}}
ANGULAR = {
    "name": "three_body",
    "descriptor": {"name": "angular", "cutoff": 4.0, "n_max": 1, "basis_size": 3, "l_max": 3},
    "readout": {"name": "linear", "bias": True},
}
EAM = {"name": "embedding", "descriptor": {"name": "eam", "n_densities": 2, "basis_size": 3}, "readout": {"name": "mlp", "hidden": [3]}}
PRESETS = ["composable", "radial", "angular", "eam", "mp", "radial_angular_sum", "radial_angular_product", "nested", "small_linear"]


def _batch() -> Batch:
    crystal = bulk("Cu", "fcc", a=3.7).repeat((2, 2, 1))
    crystal.symbols[[0, 3]] = "Au"
    crystal.rattle(0.1, seed=0)
    cluster = Atoms("Cu3Au2", positions=np.random.default_rng(1).uniform(0, 3.5, size=(5, 3)))
    return Batch.from_data_list([atoms_to_graph(crystal, CUTOFF), atoms_to_graph(cluster, CUTOFF)])


def _potential(energy: dict):
    torch.manual_seed(0)
    return build_potential({"elements": ELEMENTS, "cutoff": CUTOFF, "energy": energy})


def _alone(term_spec: dict, module: torch.nn.Module, batch: Batch) -> dict:
    """Evaluate one term as its own Potential, with the weights it has inside the composite."""
    potential = _potential(term_spec)
    potential.energy_model.load_state_dict(module.state_dict())
    return potential(batch, compute_stress=True)


def test_sum_equals_terms_computed_separately(float64):
    batch = _batch()
    composite = _potential({"sum": [RADIAL, ANGULAR, EAM]})
    assert isinstance(composite.energy_model, Sum)
    out = composite(batch, compute_stress=True)
    parts = [_alone(spec, term, batch) for spec, term in zip([RADIAL, ANGULAR, EAM], composite.energy_model.terms)]
    for key in ("energy", "atomic_energies", "forces", "stress"):
        torch.testing.assert_close(out[key], sum(part[key] for part in parts), rtol=1e-12, atol=1e-12)
    assert all(part["energy"].abs().min() > 1e-6 for part in parts)  # every term contributes


def test_product_equals_terms_computed_separately(float64):
    batch = _batch()
    composite = _potential({"product": [RADIAL, ANGULAR]})
    assert isinstance(composite.energy_model, Product)
    out = composite(batch)
    a, b = (_alone(spec, term, batch) for spec, term in zip([RADIAL, ANGULAR], composite.energy_model.terms))
    torch.testing.assert_close(out["atomic_energies"], a["atomic_energies"] * b["atomic_energies"], rtol=1e-12, atol=1e-12)
    # product rule: F = -(dA B + A dB), per atom energies A_i, B_i
    expected = a["atomic_energies"] * b["atomic_energies"]
    torch.testing.assert_close(out["energy"], torch.zeros(2, dtype=expected.dtype).index_add(0, batch.batch, expected))


def test_nested_sum_times_term_and_parameter_counts(float64):
    batch = _batch()
    spec = {"product": [{"sum": [RADIAL, ANGULAR]}, EAM]}
    composite = _potential(spec)
    inner, outer = composite.energy_model.terms
    assert isinstance(inner, Sum) and isinstance(outer, Term)
    out = composite(batch)
    a, b = (_alone(s, t, batch) for s, t in zip([RADIAL, ANGULAR], inner.terms))
    c = _alone(EAM, outer, batch)
    expected = (a["atomic_energies"] + b["atomic_energies"]) * c["atomic_energies"]
    torch.testing.assert_close(out["atomic_energies"], expected, rtol=1e-12, atol=1e-12)
    counts = composite.parameter_counts()
    assert set(counts) == {"two_body", "three_body", "embedding", "total"}
    assert counts["two_body"] + counts["three_body"] + counts["embedding"] == counts["total"]
    for name, term in (("two_body", inner.terms[0]), ("three_body", inner.terms[1]), ("embedding", outer)):
        assert counts[name] == sum(p.numel() for p in term.parameters())


def test_forces_of_a_product_match_finite_differences(float64):
    batch = _batch()
    composite = _potential({"product": [{"sum": [RADIAL, ANGULAR]}, EAM]})
    forces = composite(batch)["forces"]
    h = 1e-5
    for atom, axis in [(0, 0), (2, 1), (5, 2)]:
        shifted = []
        for sign in (1, -1):
            moved = copy.copy(batch)
            moved.pos = batch.pos.clone()
            moved.pos[atom, axis] += sign * h
            shifted.append(composite(moved, compute_forces=False)["energy"].sum())
        fd = -(shifted[0] - shifted[1]) / (2 * h)
        assert abs(fd - forces[atom, axis]) < 1e-7 * (1 + abs(fd))


#: the seven metals of the embedded demo set (presets say ``elements: auto``; mlip-train fills them in from the data)
DEMO_ELEMENTS = "model.elements=[Al,Ni,Cu,Pd,Ag,Pt,Au]"


def _compose(preset: str, overrides: list[str] | None = None):
    hydra = pytest.importorskip("hydra")
    with hydra.initialize_config_module(config_module="mlip_plugins.conf", version_base=None):
        return hydra.compose("train", overrides=[f"model={preset}", DEMO_ELEMENTS, *(overrides or [])]).model


def _readme_parameter_counts() -> dict[str, int]:
    """The README's preset table: ``| `preset` | energy | parameters (7 elements) |``."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^\| `(\w+)` \| [^|]+ \| (\d+) \|$", text, re.M)}


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_compose_build_and_report_counts(preset):
    model_cfg = _compose(preset)
    potential = build_potential(model_cfg)
    counts = potential.parameter_counts()
    assert counts["total"] == sum(v for k, v in counts.items() if k != "total") > 0
    assert counts["total"] == _readme_parameter_counts()[preset], "README's preset table (7 elements) is out of date"
    crystal = bulk("Cu", "fcc", a=3.6).repeat((2, 1, 1))
    crystal.symbols[1] = "Au"
    out = potential(Batch.from_data_list([atoms_to_graph(crystal, potential.cutoff)]))
    assert torch.isfinite(out["energy"]).all() and torch.isfinite(out["forces"]).all()


def test_command_line_composition_of_a_new_model():
    """What the README shows: swap a term's descriptor and nest a new term from overrides."""
    model_cfg = _compose(
        "radial_angular_sum",
        ["model.energy.sum.1.descriptor.l_max=2", "model.energy.sum.0.readout=null"],
    )
    assert model_cfg.energy.sum[1].descriptor.l_max == 2
    counts = build_potential(model_cfg).parameter_counts()
    assert set(counts) == {"two_body", "three_body", "total"}
    tree = (
        "+model.energy={product: [{sum: [{name: pair, descriptor: {name: radial, n_max: 3}, readout: {name: linear}}, "
        "{name: triplet, descriptor: {name: angular, l_max: 2}, readout: {name: linear}}]}, "
        "{name: refined, descriptor: {name: message_passing, base: {name: eam}, layers: 1}, readout: {name: mlp}}]}"
    )
    model_cfg = _compose("radial_angular_sum", ["~model.energy", tree])
    potential = build_potential(model_cfg)
    assert isinstance(potential.energy_model, Product) and isinstance(potential.energy_model.terms[0], Sum)
    assert set(potential.parameter_counts()) == {"pair", "triplet", "refined", "total"}


def test_small_preset_trains_on_the_default_dataset():
    """The paper's size class: <= 100 parameters; the loss falls under plain-torch Adam steps."""
    from mlip_plugins.data.default_dataset import generate_default_dataset
    from mlip_plugins.data.statistics import fit_e0
    from mlip_plugins.data.structures import LabelKeys, extract_labels

    model_cfg = _compose("small_linear")
    torch.manual_seed(0)
    potential = build_potential(model_cfg)
    counts = potential.parameter_counts()
    assert counts["total"] <= 100, counts
    # the first structures of the default dataset (the generator is sequential, so these are
    # exactly its first 10 frames: bulk, alloys, vacancies, surfaces, MD) without building all 240
    structures = generate_default_dataset(n_structures=10, seed=0)
    graphs = [atoms_to_graph(a, potential.cutoff, extract_labels(a, LabelKeys(), f"default[{k}]")) for k, a in enumerate(structures)]
    e0 = fit_e0(graphs, potential.atomic_numbers)
    potential.e0.copy_(torch.as_tensor(e0, dtype=potential.e0.dtype))
    batch = Batch.from_data_list(graphs)
    atoms_per_structure = torch.bincount(batch.batch).to(potential.e0.dtype)
    optimizer = torch.optim.Adam(potential.parameters(), lr=0.02)

    def loss_value() -> torch.Tensor:
        out = potential(batch, create_graph=True)
        energy = (((out["energy"] - batch.energy) / atoms_per_structure) ** 2).mean()
        forces = ((out["forces"] - batch.forces) ** 2).mean()
        return energy + forces

    losses = []
    for _ in range(25):
        optimizer.zero_grad()
        loss = loss_value()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.5 * losses[0], losses


def test_swapping_a_composite_terms_descriptor_names_the_option_and_how_to_replace_the_node():
    """Hydra merges ``...descriptor.name=eam`` (and ``...descriptor={name: eam}``) into the preset's node, so
    the radial options stay; the error names them, the plugin, and the ``~``/``+`` pair, which works."""
    from mlip_plugins.models.builder import ConfigError

    for swap in ("model.energy.sum.0.descriptor.name=eam", "model.energy.sum.0.descriptor={name: eam}"):
        with pytest.raises(ConfigError) as info:
            build_potential(_compose("radial_angular_sum", [swap]))
        message = str(info.value)
        assert "plugin 'eam'" in message and "'n_max'" in message and "basis_size" in message
        assert "'~model.energy.sum.0.descriptor' '+model.energy.sum.0.descriptor={name: eam}'" in message
    replaced = _compose("radial_angular_sum", ["~model.energy.sum.0.descriptor", "+model.energy.sum.0.descriptor={name: eam}"])
    assert dict(replaced.energy.sum[0].descriptor) == {"name": "eam"}
    assert build_potential(replaced).parameter_counts()["two_body"] > 0
