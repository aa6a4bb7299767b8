"""Mixture-of-experts readouts on the seven-metal default dataset: accuracy and throughput.

Compares, at matched *active* readout size (hidden width 32 per atom):

* dense readouts: one MLP shared by all elements, and the built-in per-element ``mlp``;
* MoE with element-wise routing (8 routed experts, top-2, 2 shared experts, nonlinear);
* the same without shared experts (top-4), with global (composition) routing, and with
  linear mixing of the expert weights (MoLE);
* the element-routed MoE after ``merge_moe`` (per-element dense weights, inference only).

Protocol. Every model is a ``Potential`` (radial descriptor, cutoff 5 Å, n_max 7, trained
pair coefficients) built with ``build_potential`` and trained with a plain torch loop (Adam,
cosine schedule, per-atom energy + 10 x force MSE, same seed and batches for all). To fit a
few minutes on two shared CPU cores, the geometry-only parts of the descriptor (the
Chebyshev basis of every edge, summed per neighbour element, and its radial derivative) are
computed once; each step applies the descriptor's own pair coefficients to them, the readout,
and the forces by the chain rule. This is checked against the Potential's autograd energies and forces before
training. Test errors (80/20 split) and throughputs are measured on the full ``Potential``
(energy + forces). Throughputs use one torch thread and count this thread's CPU time (wall
clock is meaningless on a machine shared by many processes; ``--wall-clock`` to override), the
fastest of interleaved rounds for each batch.

    python benchmarks/moe_benchmark.py [--epochs 120] [--seeds 3] [--out outputs/moe_benchmark]

With --seeds > 1 the errors are the mean ± standard deviation over training seeds.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch_geometric.data import Batch

from mlip_plugins.data.default_dataset import load_default_dataset
from mlip_plugins.data.statistics import energy_scale, fit_e0
from mlip_plugins.data.structures import LabelKeys, atoms_to_graph, extract_labels
from mlip_plugins.elements import ElementMap
from mlip_plugins.graph import build_atomic_graph
from mlip_plugins.models import build_potential
from mlip_plugins.models.composition import split_output
from mlip_plugins.moe.layer import MoEMLP, merge_moe
from mlip_plugins.nn import chebyshev_basis, sum_per_structure

ELEMENTS = ["Al", "Ni", "Cu", "Pd", "Ag", "Pt", "Au"]
CUTOFF = 5.0
DESCRIPTOR = {"name": "radial", "n_max": 7, "basis_size": 7}
MOE = {"name": "moe", "num_experts": 8, "top_k": 2, "num_shared": 2, "hidden": [8], "router": {"name": "element"}}

#: (label, readout config) — active hidden width 32 for every model
VARIANTS = [
    ("dense MLP (shared by all elements)", {"name": "moe", "num_experts": 0, "num_shared": 1, "hidden": [32]}),
    ("dense per-element MLP (mlp)", {"name": "mlp", "hidden": [32]}),
    ("MoE element, top-2 + 2 shared, nonlinear", MOE),
    ("MoE element, top-4, no shared, nonlinear", {**MOE, "top_k": 4, "num_shared": 0}),
    ("MoE global (composition), top-2 + 2 shared", {**MOE, "router": {"name": "global", "source": "composition"}}),
    ("MoE element, top-2 + 2 shared, linear (MoLE)", {**MOE, "experts": "linear", "hidden": [32]}),
]
MERGED_OF = "MoE element, top-2 + 2 shared, nonlinear"


@dataclass
class Precomputed:
    """Geometry-only inputs of one batch: graph, per-atom sums of the edge basis split by
    neighbour element [N, S, K+1], the radial derivative of each edge's basis [E, K+1], unit
    edge vectors [E, 3], and the labels."""

    graph: object
    basis_sums: torch.Tensor
    dbasis: torch.Tensor
    unit: torch.Tensor
    energy: torch.Tensor
    forces: torch.Tensor
    atoms_per_structure: torch.Tensor


def load_graphs(n_structures: int, seed: int) -> tuple[list, list]:
    atoms_list = load_default_dataset()
    graphs = [atoms_to_graph(a, CUTOFF, extract_labels(a, LabelKeys(), f"default[{i}]")) for i, a in enumerate(atoms_list[:n_structures])]
    order = np.random.default_rng(seed).permutation(len(graphs))
    n_test = len(graphs) // 5
    return [graphs[i] for i in order[n_test:]], [graphs[i] for i in order[:n_test]]


def batches(graphs: list, size: int) -> list[Batch]:
    return [Batch.from_data_list(graphs[i : i + size]) for i in range(0, len(graphs), size)]


def make_potential(readout: dict, seed: int, e0: np.ndarray, scale: float):
    torch.manual_seed(seed)
    potential = build_potential({"elements": ELEMENTS, "cutoff": CUTOFF, "energy": {"descriptor": DESCRIPTOR, "readout": readout}})
    with torch.no_grad():
        potential.e0.copy_(torch.as_tensor(e0, dtype=potential.e0.dtype))
        potential.energy_scale.fill_(scale)
    return potential


def precompute(potential, batch: Batch) -> Precomputed:
    """Cache the geometry-only part of the radial descriptor (basis values and derivatives)."""
    descriptor = potential.energy_model.descriptor
    num_species = potential.element_map.num_species
    graph = build_atomic_graph(batch, potential.element_map(batch.z))
    r = graph.edge_len.detach().requires_grad_(True)
    basis = chebyshev_basis(r, descriptor.cutoff, descriptor.basis_size)
    dbasis = torch.stack([torch.autograd.grad(basis[:, k].sum(), r, retain_graph=True)[0] for k in range(basis.shape[1])], dim=1)
    src, dst = graph.edge_index[0], graph.edge_index[1]
    slot = dst * num_species + graph.species[src]
    sums = torch.zeros(graph.num_atoms * num_species, basis.shape[1], dtype=basis.dtype).index_add(0, slot, basis.detach())
    graph.edge_vec, graph.edge_len, graph.pos = graph.edge_vec.detach(), graph.edge_len.detach(), graph.pos.detach()
    counts = torch.bincount(batch.batch, minlength=batch.num_graphs).to(basis.dtype)
    return Precomputed(graph, sums.view(graph.num_atoms, num_species, -1), dbasis, graph.edge_vec / graph.edge_len.unsqueeze(-1),
                       batch.energy, batch.forces, counts)


def fast_predict(potential, pre: Precomputed, create_graph: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Energies [B], forces [N, 3] and aux loss. The radial descriptor q_i = sum_j C[s_i, s_j] f(r_ij)
    is evaluated as sum_t C[s_i, t] (sum_{j: s_j = t} f(r_ij)) from cached basis sums, then the
    readout; forces by the chain rule through each edge."""
    graph = pre.graph
    coefficients = potential.energy_model.descriptor.pair_coefficients.coefficients[graph.species]  # [N, S, n, K+1]
    features = torch.einsum("itk,itnk->in", pre.basis_sums, coefficients)
    atomic, extras = split_output(potential.energy_model.readout(features, graph))
    atomic = atomic * potential.energy_scale
    energy = sum_per_structure(atomic + potential.e0[graph.species], graph.batch, graph.num_graphs)
    (d_features,) = torch.autograd.grad(atomic.sum(), features, create_graph=create_graph)
    d_basis = torch.einsum("in,itnk->itk", d_features, coefficients)  # dE/d(basis sums)
    src, dst = graph.edge_index[0], graph.edge_index[1]
    d_r = (d_basis[dst, graph.species[src]] * pre.dbasis).sum(-1, keepdim=True)  # dE/d r_ij along each edge
    d_edge = d_r * pre.unit  # dE/d r_ij (vector), r_ij = pos_j - pos_i
    d_pos = torch.zeros_like(graph.pos).index_add(0, src, d_edge).index_add(0, dst, -d_edge)
    return energy, -d_pos, extras.get("aux_loss")


def train(potential, data: list[Precomputed], epochs: int, lr: float, force_weight: float, seed: int) -> float:
    params = [p for p in potential.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    total = epochs * len(data)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(step, total) / total)))
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    for _ in range(epochs):
        for index in rng.permutation(len(data)):
            pre = data[index]
            energy, forces, aux = fast_predict(potential, pre)
            loss = (((energy - pre.energy) / pre.atoms_per_structure) ** 2).mean() + force_weight * ((forces - pre.forces) ** 2).mean()
            if aux is not None:
                loss = loss + aux
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return time.perf_counter() - start


def test_errors(potential, test: list[Batch]) -> tuple[float, float]:
    """Energy MAE (meV/atom) and force-component MAE (meV/Å) of the full Potential."""
    e_err, f_err, n_struct, n_comp = 0.0, 0.0, 0, 0
    for batch in test:
        out = potential(batch)
        counts = torch.bincount(batch.batch, minlength=batch.num_graphs)
        e_err += float(((out["energy"].detach() - batch.energy) / counts).abs().sum())
        f_err += float((out["forces"].detach() - batch.forces).abs().sum())
        n_struct += batch.num_graphs
        n_comp += batch.forces.numel()
    return 1000 * e_err / n_struct, 1000 * f_err / n_comp


#: the timer: CPU time of this thread (robust on a shared machine; torch runs single-threaded
#: here) unless --wall-clock is given
_TIMER = [time.thread_time]


def _elapsed(fn) -> float:
    start = _TIMER[0]()
    fn()
    return _TIMER[0]() - start


def time_full(potential, data: list[Batch]) -> list[float]:
    """Seconds per batch of energy + forces with the full Potential."""
    return [_elapsed(lambda: potential(batch)) for batch in data]


@torch.no_grad()
def readout_inputs(potential, data: list[Precomputed]) -> list[tuple[torch.Tensor, object]]:
    out = []
    for pre in data:
        graph = pre.graph
        coefficients = potential.energy_model.descriptor.pair_coefficients.coefficients[graph.species]
        out.append((torch.einsum("itk,itnk->in", pre.basis_sums, coefficients), graph))
    return out


@torch.no_grad()
def time_readout(potential, inputs: list[tuple[torch.Tensor, object]]) -> list[float]:
    """Seconds per batch of the readout alone (energies from given features)."""
    readout = potential.energy_model.readout
    return [_elapsed(lambda: readout(features, graph)) for features, graph in inputs]


def summarise(readout, potential, errors: list, train_seconds: float) -> dict:
    """Sizes and test errors (mean and standard deviation over seeds) of one variant."""
    active, router, total = readout_sizes(potential)
    errors = np.asarray(errors)
    return {"readout": readout, "active_params": active, "router_params": router, "total_params": total,
            "energy_mae_mev_atom": float(errors[:, 0].mean()), "energy_mae_std": float(errors[:, 0].std()),
            "force_mae_mev_A": float(errors[:, 1].mean()), "force_mae_std": float(errors[:, 1].std()),
            "train_seconds": train_seconds, "errors_per_seed": errors.tolist()}


def readout_sizes(potential) -> tuple[int, int, int]:
    """(active expert parameters per atom, router parameters, total readout parameters)."""
    readout = potential.energy_model.readout
    total = sum(p.numel() for p in readout.parameters())
    layer = getattr(readout, "moe", None)
    if isinstance(layer, MoEMLP):
        router = sum(p.numel() for p in layer.router.parameters()) if layer.router is not None else 0
        return layer.active_parameter_count() - router, router, total
    # per-element weights (the mlp readout, a merged MoE): one element's weights are active
    return total // potential.element_map.num_species, 0, total


def readout_scaling(num_atoms: int, in_dim: int, width: int, rounds: int, seed: int = 0) -> str:
    """Readout-only throughput at a realistic width (synthetic features, 7 elements): a dense
    MLP shared by all elements and the per-element ``mlp`` of hidden ``width`` against an
    element-routed MoE of the same active width (top-2 + 2 shared experts of width/4), unmerged
    and merged."""
    from types import SimpleNamespace

    from mlip_plugins.moe.layer import MoEReadout
    from mlip_plugins.models.readout import MLPReadout

    torch.manual_seed(seed)
    species = torch.randint(0, len(ELEMENTS), (num_atoms,))
    graph = SimpleNamespace(species=species, batch=torch.zeros(num_atoms, dtype=torch.long), num_graphs=1)
    features = torch.randn(num_atoms, in_dim)
    moe = MoEReadout(in_dim, len(ELEMENTS), num_experts=8, top_k=2, num_shared=2, hidden=[width // 4])
    readouts = {
        f"dense MLP [{width}] (shared)": MoEReadout(in_dim, len(ELEMENTS), num_experts=0, num_shared=1, hidden=[width]),
        f"per-element mlp [{width}]": MLPReadout(in_dim, len(ELEMENTS), hidden=[width]),
        f"MoE element 8 x [{width // 4}], top-2 + 2 shared": moe,
        "  the same, merged": moe.merge(),
    }
    best = {k: math.inf for k in readouts}
    with torch.no_grad():
        for _ in range(rounds):  # interleaved; fastest single call of each readout
            for label, readout in readouts.items():
                best[label] = min(best[label], _elapsed(lambda: readout(features, graph)))
    ref = next(iter(best.values()))
    lines = [f"| readout ({num_atoms} atoms, {in_dim} features) | atoms/s | speed vs dense |", "|---|---|---|"]
    lines += [f"| {label} | {num_atoms / t:.3g} | {ref / t:.2f} |" for label, t in best.items()]
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=120)
    parser.add_argument("--seeds", type=int, default=1, help="training seeds per variant (errors averaged)")
    parser.add_argument("--structures", type=int, default=240)
    parser.add_argument("--lr", type=float, default=2e-2)
    parser.add_argument("--force-weight", type=float, default=10.0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (fastest kept per batch)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (>1 implies --wall-clock)")
    parser.add_argument("--wall-clock", action="store_true", help="time with wall-clock instead of this thread's CPU time")
    parser.add_argument("--scaling-atoms", type=int, default=4096, help="atoms of the synthetic wide-readout timing")
    parser.add_argument("--out", default="outputs/moe_benchmark")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.wall_clock or args.threads > 1:
        _TIMER[0] = time.perf_counter
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    train_graphs, test_graphs = load_graphs(args.structures, seed=0)
    elements_z = ElementMap(ELEMENTS).atomic_numbers
    e0 = fit_e0(train_graphs, elements_z)
    scale = energy_scale(train_graphs, elements_z, e0)
    train_batches, test_batches = batches(train_graphs, args.batch_size), batches(test_graphs, 16)
    template = make_potential(VARIANTS[0][1], 0, e0, scale)
    train_data = [precompute(template, b) for b in train_batches]
    all_atoms = sum(g.num_nodes for g in train_graphs + test_graphs)
    timing_batches = train_batches + test_batches
    timing_data = train_data + [precompute(template, b) for b in test_batches]
    # the cached-basis energies and chain-rule forces of the training loop are the Potential's
    fast_energy, fast_forces, _ = fast_predict(template, train_data[0], create_graph=False)
    reference = template(train_batches[0])
    assert torch.allclose(fast_energy, reference["energy"].detach(), rtol=1e-5, atol=1e-4), "cached-basis energies differ"
    ref_forces = reference["forces"].detach()
    assert torch.allclose(fast_forces, ref_forces, rtol=1e-4, atol=1e-5 * float(ref_forces.abs().max())), "chain-rule forces differ"
    print(f"data: {len(train_graphs)} train / {len(test_graphs)} test structures, {all_atoms} atoms; setup {time.perf_counter() - t0:.1f} s")

    results: dict[str, dict] = {}
    models: dict[str, torch.nn.Module] = {}
    merged_label = MERGED_OF.replace("nonlinear", "nonlinear, merged")
    merged_errors: list = []
    for label, readout in VARIANTS:
        errors, seconds = [], 0.0
        for seed in range(args.seeds):
            potential = make_potential(readout, seed, e0, scale)
            seconds += train(potential, train_data, args.epochs, args.lr, args.force_weight, seed)
            errors.append(test_errors(potential, test_batches))
            if label == MERGED_OF:  # the same trained weights, merged per element
                merged = copy.deepcopy(potential)
                assert merge_moe(merged) == 1
                merged_errors.append(test_errors(merged, test_batches))
                if seed == 0:
                    models[merged_label] = merged
            if seed == 0:
                models[label] = potential
        results[label] = summarise(readout, models[label], errors, seconds / args.seeds)
        print(f"  trained {label}: E {results[label]['energy_mae_mev_atom']:.2f} meV/atom, "
              f"F {results[label]['force_mae_mev_A']:.1f} meV/Å ({seconds / args.seeds:.0f} s)")
    results[merged_label] = summarise("merge_moe of " + MERGED_OF, models[merged_label], merged_errors, 0.0)
    results = {label: results[label] for label in [*(v[0] for v in VARIANTS), merged_label]}

    # per batch, the fastest of interleaved rounds (the machine is shared), summed over batches
    inputs = {label: readout_inputs(potential, timing_data) for label, potential in models.items()}
    best_full = {k: [math.inf] * len(timing_batches) for k in models}
    best_readout = {k: [math.inf] * len(timing_batches) for k in models}
    for _ in range(args.rounds):
        for label, potential in models.items():
            best_full[label] = np.minimum(best_full[label], time_full(potential, timing_batches))
            best_readout[label] = np.minimum(best_readout[label], time_readout(potential, inputs[label]))
    baseline = VARIANTS[0][0]
    for label in models:
        results[label]["atoms_per_s_full"] = all_atoms / float(np.sum(best_full[label]))
        results[label]["atoms_per_s_readout"] = all_atoms / float(np.sum(best_readout[label]))

    per_element = VARIANTS[1][0]

    def spread(r: dict, key: str) -> str:
        return f" ± {r[key + '_mae_std']:.1f}" if args.seeds > 1 else ""

    pm = " ± std" if args.seeds > 1 else ""
    header = (f"| model | active expert / router / total readout params | E MAE (meV/atom){pm} | F MAE (meV/Å){pm} | ratio E, F vs dense | "
              "atoms/s E+F (full model) | atoms/s readout only | readout speed vs dense, vs per-element mlp |")
    lines = [header, "|" + "---|" * 8]
    ref, ref_pe = results[baseline], results[per_element]
    for label, r in results.items():
        lines.append(
            f"| {label} | {r['active_params']} / {r['router_params']} / {r['total_params']} | {r['energy_mae_mev_atom']:.1f}{spread(r, 'energy')} | "
            f"{r['force_mae_mev_A']:.1f}{spread(r, 'force')} | {r['energy_mae_mev_atom'] / ref['energy_mae_mev_atom']:.2f}, "
            f"{r['force_mae_mev_A'] / ref['force_mae_mev_A']:.2f} | {r['atoms_per_s_full']:.0f} | {r['atoms_per_s_readout']:.0f} | "
            f"{r['atoms_per_s_readout'] / ref['atoms_per_s_readout']:.2f}, {r['atoms_per_s_readout'] / ref_pe['atoms_per_s_readout']:.2f} |"
        )
    table = "\n".join(lines)
    print()
    print(table)
    scaling = readout_scaling(args.scaling_atoms, 64, 128, rounds=max(4 * args.rounds, 20))
    print()
    print(scaling)
    table = table + "\n\n" + scaling

    from mlip_plugins.moe.analysis import write_moe_analysis

    analysis = {}
    for label, sub in ((MERGED_OF, "element"), ("MoE global (composition), top-2 + 2 shared", "global")):
        summary = write_moe_analysis(models[label], out_dir / f"routing_{sub}", train_graphs)
        analysis[sub] = summary["files"]
    (out_dir / "table.md").write_text(table + "\n")
    (out_dir / "results.json").write_text(json.dumps({"args": vars(args), "results": results, "analysis": analysis}, indent=2))
    print(f"\nwrote {out_dir / 'table.md'}, {out_dir / 'results.json'} and PCA plots {analysis}; total {time.perf_counter() - t0:.0f} s")
    return results


if __name__ == "__main__":
    main()
