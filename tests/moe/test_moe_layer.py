"""Mixture-of-experts layer and routers: gate contract, batched experts against a per-expert
reference loop, merge of element-routed experts into dense per-element weights (1e-10 in
float64), load-balancing loss and the ``moe`` readout through the model builder."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import bulk
from omegaconf import OmegaConf
from torch_geometric.data import Batch

from mlip_plugins import registry
from mlip_plugins.data.structures import atoms_to_graph
from mlip_plugins.elements import ElementMap
from mlip_plugins.graph import build_atomic_graph
from mlip_plugins.models import build_potential
from mlip_plugins.moe.layer import MergedMoEReadout, MoEMLP, MoEReadout, merge_moe
from mlip_plugins.moe.routers import load_balancing_loss, select_top_k

ELEMENTS = ["Ni", "Cu", "Au"]
CONF = Path(__file__).resolve().parents[2] / "conf"


def random_alloy(seed: int, repeat=(2, 2, 1)):
    rng = np.random.default_rng(seed)
    atoms = bulk("Cu", "fcc", a=3.75, cubic=True).repeat(repeat)
    atoms.set_chemical_symbols(list(rng.choice(ELEMENTS, size=len(atoms))))
    atoms.positions += rng.normal(scale=0.1, size=atoms.positions.shape)
    return atoms


@functools.lru_cache(maxsize=None)
def _graphs(n: int, cutoff: float) -> tuple:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # exact positions; the model casts to its dtype
    try:
        return tuple(atoms_to_graph(random_alloy(seed), cutoff) for seed in range(n))
    finally:
        torch.set_default_dtype(previous)


def make_batch(n: int = 3, cutoff: float = 4.5) -> Batch:
    return Batch.from_data_list(list(_graphs(n, cutoff)))


def atomic_graph(batch: Batch):
    species = ElementMap(ELEMENTS)(batch.z)
    return build_atomic_graph(batch, species)


def moe_model(readout: dict, cutoff: float = 4.5):
    torch.manual_seed(0)
    spec = {"elements": ELEMENTS, "cutoff": cutoff, "energy": {"descriptor": {"name": "radial", "n_max": 5, "basis_size": 5}, "readout": {"name": "moe", **readout}}}
    return build_potential(spec)


def reference_moe(layer: MoEMLP, x: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
    """The MoE written naively: a Python loop over experts (what the layer must not do)."""

    def expert_mlp(bank, e, h):
        for k in range(bank.num_layers):
            h = h @ bank.weights[k][e] + bank.biases[k][e]
            if k < bank.num_layers - 1:
                h = layer.act(h)
        return h

    if layer.kind == "nonlinear":
        y = sum(expert_mlp(layer.shared, s, x) for s in range(layer.num_shared)) if layer.num_shared else 0.0
        for e in range(layer.num_experts):
            y = y + gates[:, e : e + 1] * expert_mlp(layer.routed, e, x)
        return y
    norm = layer.num_shared + 1
    h = x
    bank = layer.routed
    for k in range(bank.num_layers):  # mix the weights of each atom, then apply them
        weight = sum(layer.shared.weights[k][s] for s in range(layer.num_shared)) / norm if layer.num_shared else 0.0
        bias = sum(layer.shared.biases[k][s] for s in range(layer.num_shared)) / norm if layer.num_shared else 0.0
        w_atom = weight + torch.einsum("ne,eij->nij", gates / norm, bank.weights[k])
        b_atom = bias + gates @ bank.biases[k] / norm
        h = torch.einsum("ni,nij->nj", h, w_atom) + b_atom
        if k < bank.num_layers - 1:
            h = layer.act(h)
    return h


def test_routers_are_registered():
    assert {"element", "global", "feature"} <= set(registry.available("routers"))
    assert "moe" in registry.available("readouts")


@pytest.mark.parametrize("name, top_k", [("element", 2), ("global", 2), ("feature", None), ("feature", 3)])
def test_router_gate_contract(name, top_k):
    batch = make_batch()
    graph = atomic_graph(batch)
    features = torch.randn(graph.num_atoms, 6)
    router = registry.resolve("routers", name)(num_experts=5, num_species=3, in_dim=6, top_k=top_k)
    gates = router(features, graph)
    assert gates.shape == (graph.num_atoms, 5)
    assert bool((gates >= 0).all())
    torch.testing.assert_close(gates.sum(-1), torch.ones(graph.num_atoms))
    active = (gates > 0).sum(-1)
    assert bool((active == (top_k or 5)).all())
    if name == "element":  # same element -> same gates, and the table is what the atoms get
        torch.testing.assert_close(gates, router.element_gates()[graph.species])
    if name == "global":  # one gate vector per structure
        for b in range(graph.num_graphs):
            rows = gates[graph.batch == b]
            torch.testing.assert_close(rows, rows[:1].expand_as(rows))


@pytest.mark.parametrize("kind", ["nonlinear", "linear"])
@pytest.mark.parametrize("router, top_k", [("element", 2), ("global", 1), ("feature", None), ("feature", 2)])
def test_batched_experts_match_per_expert_loop(float64, kind, router, top_k):
    batch = make_batch()
    graph = atomic_graph(batch)
    torch.manual_seed(1)
    layer = MoEMLP(7, 3, num_species=3, num_experts=5, top_k=top_k, num_shared=2, hidden=[6, 4], experts=kind, router=router)
    x = torch.randn(graph.num_atoms, 7)
    for dispatch in ("dense", "grouped"):  # every expert on every atom / atoms grouped by expert
        layer.dispatch = dispatch
        out = layer(x, graph, return_details=True)
        expected = reference_moe(layer, x, out.gates)
        torch.testing.assert_close(out.output, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "readout",
    [
        {"experts": "nonlinear", "num_experts": 6, "top_k": 2, "num_shared": 2, "hidden": [8]},
        {"experts": "nonlinear", "num_experts": 6, "top_k": 1, "num_shared": 0, "hidden": [8, 5]},
        {"experts": "nonlinear", "num_experts": 4, "top_k": None, "num_shared": 1, "hidden": []},
        {"experts": "linear", "num_experts": 6, "top_k": 2, "num_shared": 2, "hidden": [8]},
        {"experts": "linear", "num_experts": 6, "top_k": 3, "num_shared": 0, "hidden": [8, 5]},
    ],
)
def test_merged_experts_agree_with_unmerged(float64, readout):
    potential = moe_model({**readout, "router": "element"})
    batch = make_batch()
    reference = potential(batch, compute_stress=True)
    assert merge_moe(potential) == 1
    assert isinstance(potential.energy_model.readout, MergedMoEReadout)
    merged = potential(batch, compute_stress=True)
    for key in ("energy", "forces", "stress"):
        assert float((merged[key] - reference[key]).detach().abs().max()) < 1e-10, key


def test_merged_nonlinear_is_a_dense_mlp_of_the_active_width(float64):
    potential = moe_model({"num_experts": 8, "top_k": 2, "num_shared": 2, "hidden": [8], "router": "element"})
    merged = potential.energy_model.readout.merge().mlp
    # one hidden layer: per element a dense [D, (shared + k) * hidden] and [(shared + k) * hidden, 1]
    assert merged.first_w.shape == (3, 6, 4 * 8)
    assert merged.last_w.shape == (3, 4 * 8, 1)
    assert len(merged.mid_w) == 0


@pytest.mark.parametrize("router", ["global", "feature"])
def test_merge_refused_for_structure_dependent_routers(router):
    potential = moe_model({"router": router})
    with pytest.raises(ValueError, match="element-wise"):
        potential.energy_model.readout.merge()
    assert merge_moe(potential) == 0


def test_aux_loss_reaches_the_potential_and_trains_the_router():
    potential = moe_model({"num_experts": 4, "top_k": 1, "num_shared": 1, "load_balance": 0.1, "router": "element"})
    out = potential(make_batch())
    assert out["aux_loss"].ndim == 0 and float(out["aux_loss"]) > 0
    out["aux_loss"].backward()
    router = potential.energy_model.readout.moe.router
    assert router.embedding.grad is not None and float(router.embedding.grad.abs().sum()) > 0
    assert "aux_loss" not in moe_model({"load_balance": 0.0})(make_batch())


def test_load_balancing_loss_is_one_at_perfect_balance_and_larger_otherwise():
    logits = torch.zeros(8, 4)
    balanced = select_top_k(logits + torch.eye(4).repeat(2, 1) * 5, top_k=1)
    assert float(load_balancing_loss(*balanced)) == pytest.approx(1.0, abs=0.05)
    collapsed = select_top_k(logits + torch.tensor([5.0, 0, 0, 0]), top_k=1)
    assert float(load_balancing_loss(*collapsed)) > 3.0
    soft = select_top_k(torch.zeros(8, 4), top_k=None)
    assert float(load_balancing_loss(*soft)) == pytest.approx(1.0)


def test_dense_baseline_without_router():
    potential = moe_model({"num_experts": 0, "num_shared": 1, "hidden": [8]})
    layer = potential.energy_model.readout.moe
    assert layer.router is None
    assert layer.active_parameter_count() == 6 * 8 + 8 + 8 + 1
    assert potential(make_batch())["energy"].shape == (3,)


def test_active_parameter_count():
    layer = MoEMLP(10, 1, num_species=3, num_experts=8, top_k=2, num_shared=2, hidden=[16], router={"name": "element", "embedding_dim": 4})
    per_expert = 10 * 16 + 16 + 16 + 1
    assert layer.active_parameter_count() == 4 * per_expert + 3 * 4 + 4 * 8
    linear = MoEMLP(10, 1, num_species=3, num_experts=8, top_k=2, num_shared=2, hidden=[16], experts="linear", router={"name": "element", "embedding_dim": 4})
    assert linear.active_parameter_count() == per_expert + 3 * 4 + 4 * 8


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="experts kind"):
        MoEMLP(4, 1, num_species=2, experts="quadratic")
    with pytest.raises(ValueError, match="top_k"):
        MoEMLP(4, 1, num_species=2, top_k=0)
    with pytest.raises(TypeError, match="unexpected"):
        MoEReadout(4, 2, numexperts=3)
    with pytest.raises(ValueError, match="unknown source"):
        registry.resolve("routers", "global")(num_experts=3, num_species=2, in_dim=4, source="charge")


def test_hydra_configs_build_the_moe_model():
    readout = OmegaConf.to_container(OmegaConf.load(CONF / "model" / "readout" / "moe.yaml"))
    model = OmegaConf.to_container(OmegaConf.load(CONF / "model" / "moe.yaml"))
    model.pop("defaults")
    descriptor = OmegaConf.to_container(OmegaConf.load(CONF / "model" / "descriptor" / "radial.yaml"))
    model["energy"].update(descriptor=descriptor, readout=readout)
    model["elements"] = ["Cu", "Au"]  # the preset says 'auto' (mlip-train takes the data's elements)
    potential = build_potential(model)
    assert isinstance(potential.energy_model.readout, MoEReadout)
    callbacks = OmegaConf.to_container(OmegaConf.load(CONF / "callbacks" / "moe_analysis.yaml"))
    spec = dict(callbacks["moe_analysis"])
    callback = registry.resolve("callbacks", spec.pop("name"))(**spec)
    assert callback.dirname == "moe_analysis"
