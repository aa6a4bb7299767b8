"""Routing analysis of MoE models: per-element gate statistics and a PCA of element->expert gates.

For every routed ``MoEMLP`` in a model the mean gate vector of each element is collected:
exactly from the router's table for element-wise routers, otherwise averaged over the atoms
of a set of structures. The element x expert matrix is written as JSON and CSV, and its
principal components are plotted with each element labelled by symbol and coloured by its
group of the periodic table (the MoE paper reports that expert usage follows periodic-table
trends). Used by the ``moe_analysis`` callback and the ``mlip-moe`` command.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from ase.data import chemical_symbols
from torch import nn

from mlip_plugins.moe.layer import MoEMLP, moe_layers
from mlip_plugins.plotting import save_figure
from mlip_plugins.atomic_files import atomic_write_text

# period boundaries (last atomic number of each period)
_PERIOD_ENDS = (2, 10, 18, 36, 54, 86, 118)


def period(z: int) -> int:
    """Row of the periodic table (1..7)."""
    for row, end in enumerate(_PERIOD_ENDS, start=1):
        if z <= end:
            return row
    raise ValueError(f"atomic number {z} out of range")


def periodic_group(z: int) -> int | None:
    """IUPAC group (1..18) of element ``z``; ``None`` for the f block (La..Yb, Ac..No).

    Lu and Lr are in group 3 below Sc and Y (IUPAC's 2021 recommendation; HEA25's 25
    transition metals include Lu as the period-6 member of group 3)."""
    if z == 1:
        return 1
    if z == 2:
        return 18
    row = period(z)
    start = _PERIOD_ENDS[row - 2] + 1  # first element of the row
    offset = z - start
    if row <= 3:  # s and p block only
        return offset + 1 if offset < 2 else offset + 11
    if row <= 5:
        return offset + 1
    if offset < 2:
        return offset + 1
    if offset < 16:  # La..Yb / Ac..No
        return None
    return offset - 14 + 1


def group_label(z: int) -> str:
    """'group 11', 'lanthanides' or 'actinides'."""
    group = periodic_group(z)
    if group is not None:
        return f"group {group}"
    return "lanthanides" if period(z) == 6 else "actinides"


@dataclass
class LayerRouting:
    """Per-element routing of one MoE layer."""

    name: str
    router: str
    num_experts: int
    num_shared: int
    top_k: int | None
    experts: str
    source: str  # "router table" (exact) or "data"
    atomic_numbers: list[int]
    mean_gates: np.ndarray  # [S, E]
    selection: np.ndarray  # [S, E] fraction of the element's atoms for which expert e is active
    atom_counts: np.ndarray  # [S]
    extra: dict = field(default_factory=dict)

    def present(self) -> np.ndarray:
        """Mask of the elements that have a gate vector (all for router tables)."""
        return np.ones(len(self.atomic_numbers), bool) if self.source == "router table" else self.atom_counts > 0


def _model_atomic_numbers(model: nn.Module, num_species: int) -> list[int]:
    numbers = getattr(model, "atomic_numbers", None)
    if numbers is not None and len(numbers) == num_species:
        return [int(z) for z in numbers]
    return list(range(1, num_species + 1))


def _batches(graphs: Sequence, batch_size: int):
    from torch_geometric.data import Batch

    for start in range(0, len(graphs), batch_size):
        yield Batch.from_data_list(list(graphs[start : start + batch_size]))


@torch.no_grad()
def collect_routing(model: nn.Module, graphs: Sequence | None = None, batch_size: int = 16) -> list[LayerRouting]:
    """Routing statistics of every routed MoE layer of ``model`` (a ``Potential``).

    Element-wise routers are read from their gate table; other routers need ``graphs``
    (PyG ``Data`` following the data contract) and are averaged over the atoms of each element.
    """
    layers = moe_layers(model)
    if not layers:
        return []
    sums: dict[str, torch.Tensor] = {}
    active: dict[str, torch.Tensor] = {}
    counts: dict[str, torch.Tensor] = {}
    hooks = []

    def make_hook(name: str):
        def hook(module: MoEMLP, args, kwargs, output):
            x = args[0]
            graph = args[1] if len(args) > 1 else kwargs["graph"]
            gates = output.gates if hasattr(output, "gates") else module._route(x, graph).gates
            num_species = len(atomic_numbers)
            species = graph.species
            g = gates.detach().to(torch.float64).cpu()
            sp = species.cpu()
            sums[name] = sums.get(name, torch.zeros(num_species, g.shape[1], dtype=torch.float64)).index_add(0, sp, g)
            active[name] = active.get(name, torch.zeros(num_species, g.shape[1], dtype=torch.float64)).index_add(0, sp, (g > 0).double())
            counts[name] = counts.get(name, torch.zeros(num_species, dtype=torch.float64)).index_add(0, sp, torch.ones(len(sp), dtype=torch.float64))

        return hook

    element_map = getattr(model, "element_map", None)
    num_species = element_map.num_species if element_map is not None else None
    first_router = layers[0][1].router
    if num_species is None:
        num_species = int(getattr(first_router, "num_species", 0)) or 1
    atomic_numbers = _model_atomic_numbers(model, num_species)
    if graphs:
        for name, layer in layers:
            hooks.append(layer.register_forward_hook(make_hook(name), with_kwargs=True))
        was_training = model.training
        model.eval()
        try:
            parameter = next(model.parameters())
            for batch in _batches(graphs, batch_size):
                model(batch.to(parameter.device), compute_forces=False)
        finally:
            for handle in hooks:
                handle.remove()
            model.train(was_training)

    results = []
    for name, layer in layers:
        router = layer.router
        count = counts.get(name, torch.zeros(num_species, dtype=torch.float64))
        if getattr(router, "element_wise", False):
            table = router.element_gates().detach().to(torch.float64).cpu()
            mean_gates, selection, source = table, (table > 0).double(), "router table"
        elif name in sums:
            safe = count.clamp(min=1.0).unsqueeze(-1)
            mean_gates, selection, source = sums[name] / safe, active[name] / safe, "data"
        else:
            continue  # data-dependent router and no structures given
        load = (mean_gates * count.unsqueeze(-1)).sum(0)
        results.append(
            LayerRouting(
                name=name,
                router=type(router).__name__,
                num_experts=layer.num_experts,
                num_shared=layer.num_shared,
                top_k=layer.top_k,
                experts=layer.kind,
                source=source,
                atomic_numbers=atomic_numbers,
                mean_gates=mean_gates.numpy(),
                selection=selection.numpy(),
                atom_counts=count.numpy(),
                extra={"expert_load": (load / load.sum().clamp(min=1e-30)).tolist() if float(count.sum()) > 0 else None},
            )
        )
    return results


def gate_pca(vectors: np.ndarray, components: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Project rows of ``vectors`` [S, E] onto their first principal components.

    Returns (coordinates [S, components], explained variance ratio [components]); missing
    components (fewer rows or columns than asked) are zero.
    """
    centred = vectors - vectors.mean(0, keepdims=True)
    coords = np.zeros((vectors.shape[0], components))
    ratio = np.zeros(components)
    if vectors.shape[0] < 2:
        return coords, ratio
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    k = min(components, s.shape[0])
    coords[:, :k] = u[:, :k] * s[:k]
    total = float((s**2).sum())
    if total > 0:
        ratio[:k] = s[:k] ** 2 / total
    return coords, ratio


def periodic_correlation(gates: np.ndarray, atomic_numbers: Sequence[int], permutations: int = 200,
                         seed: int = 0) -> dict[str, float]:
    """Does expert usage follow the periodic table? One number and its shuffled baseline.

    The Spearman rank correlation between the pairwise Euclidean distances of the elements'
    gate vectors (rows of ``gates`` [S, E], e.g. ``LayerRouting.mean_gates``) and their
    distances in (group, period) space. The baseline is the same correlation with the elements'
    (group, period) labels permuted (``permutations`` times, seeded); ``p`` is the fraction of
    permutations that reach the observed value. Needs elements that all have a group (no f block).
    """
    from scipy.spatial.distance import pdist
    from scipy.stats import spearmanr

    groups = [periodic_group(int(z)) for z in atomic_numbers]
    if None in groups or len(groups) < 3:
        raise ValueError("periodic_correlation: needs three or more elements outside the f block")
    coordinates = np.array([[g, period(int(z))] for g, z in zip(groups, atomic_numbers)], dtype=float)
    usage = pdist(np.asarray(gates, dtype=float))
    observed = float(spearmanr(usage, pdist(coordinates)).statistic)
    rng = np.random.default_rng(seed)
    shuffled = np.array([spearmanr(usage, pdist(coordinates[rng.permutation(len(coordinates))])).statistic
                         for _ in range(permutations)])
    return {"spearman": observed, "shuffled_mean": float(shuffled.mean()), "shuffled_std": float(shuffled.std()),
            "p": float((shuffled >= observed).mean()), "permutations": int(permutations)}


def routing_summary(layer: LayerRouting) -> dict:
    """JSON-ready per-element statistics of one layer, with PCA coordinates."""
    present = layer.present()
    coords, ratio = gate_pca(layer.mean_gates[present])
    coord_of = dict(zip(np.flatnonzero(present).tolist(), coords.tolist()))
    elements = []
    for k, z in enumerate(layer.atomic_numbers):
        gates = layer.mean_gates[k]
        p = gates[gates > 0]
        elements.append(
            {
                "symbol": chemical_symbols[z],
                "Z": z,
                "group": periodic_group(z),
                "period": period(z),
                "n_atoms": int(layer.atom_counts[k]),
                "mean_gate": gates.tolist(),
                "selection_frequency": layer.selection[k].tolist(),
                "top_experts": np.argsort(-gates)[: max(1, layer.top_k or layer.num_experts)].tolist(),
                "gate_entropy": float(-(p * np.log(p)).sum()) if p.size else 0.0,
                "pca": coord_of.get(k),
            }
        )
    return {
        "layer": layer.name,
        "router": layer.router,
        "source": layer.source,
        "num_experts": layer.num_experts,
        "num_shared": layer.num_shared,
        "top_k": layer.top_k,
        "experts": layer.experts,
        "pca_explained_variance_ratio": ratio.tolist(),
        "expert_load": layer.extra.get("expert_load"),
        "elements": elements,
    }


def plot_gate_pca(layer: LayerRouting, path: str | Path) -> Path:
    """Two panels: PCA of the element gate vectors (labelled by symbol, coloured by periodic-table
    group, marker by period) and the element x expert gate matrix."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    present = layer.present()
    numbers = [z for z, p in zip(layer.atomic_numbers, present) if p]
    vectors = layer.mean_gates[present]
    coords, ratio = gate_pca(vectors)
    labels = [group_label(z) for z in numbers]
    unique = sorted(set(labels), key=lambda s: (len(s), s))
    cmap = plt.get_cmap("tab10" if len(unique) <= 10 else "tab20")
    markers = "os^Dv*P"
    fig, (ax, ax_heat) = plt.subplots(1, 2, figsize=(11, 4.5), gridspec_kw={"width_ratios": [1.1, 1]})
    for label_index, label in enumerate(unique):
        for z, xy, lab in zip(numbers, coords, labels):
            if lab != label:
                continue
            ax.scatter(xy[0], xy[1], color=cmap(label_index % cmap.N), marker=markers[period(z) - 1], s=70, edgecolor="k")
        ax.scatter([], [], color=cmap(label_index % cmap.N), label=label, s=70, edgecolor="k")
    for z, xy in zip(numbers, coords):
        ax.annotate(chemical_symbols[z], xy, textcoords="offset points", xytext=(5, 5), fontsize=10)
    ax.set_xlabel(f"PC1 ({100 * ratio[0]:.0f}% of variance)")
    ax.set_ylabel(f"PC2 ({100 * ratio[1]:.0f}% of variance)")
    ax.set_title(f"element -> expert gates ({layer.router}, {layer.source})")
    ax.legend(title="periodic-table group (marker: period)", fontsize=8, title_fontsize=8)
    image = ax_heat.imshow(vectors, aspect="auto", cmap="viridis", vmin=0.0)
    ax_heat.set_yticks(range(len(numbers)), [chemical_symbols[z] for z in numbers])
    ax_heat.set_xlabel("routed expert")
    ax_heat.set_title("mean gate per element")
    fig.colorbar(image, ax=ax_heat)
    fig.suptitle(layer.name)
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "layer"


def write_moe_analysis(
    model: nn.Module,
    out_dir: str | Path,
    graphs: Sequence | None = None,
    batch_size: int = 16,
    plot: bool = True,
) -> dict:
    """Write ``moe_routing.json``, ``moe_routing.csv`` and ``moe_pca_<layer>.png`` into ``out_dir``.

    Returns the summary (as written to JSON) with the written paths under ``"files"``.
    Files are written to temporary names and renamed, so a failure leaves no partial output.
    """
    layers = collect_routing(model, graphs, batch_size)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {"layers": [routing_summary(layer) for layer in layers], "files": []}
    if not layers:
        return summary
    csv_path = out_dir / "moe_routing.csv"
    handle = io.StringIO(newline="")
    writer = csv.writer(handle)
    writer.writerow(["layer", "symbol", "Z", "group", "period", "n_atoms", "expert", "mean_gate", "selection_frequency", "pc1", "pc2"])
    for layer_summary in summary["layers"]:
        for element in layer_summary["elements"]:
            pc = element["pca"] or [None, None]
            for expert, (gate, freq) in enumerate(zip(element["mean_gate"], element["selection_frequency"])):
                writer.writerow(
                    [layer_summary["layer"], element["symbol"], element["Z"], element["group"], element["period"],
                     element["n_atoms"], expert, f"{gate:.6g}", f"{freq:.6g}", pc[0], pc[1]]
                )
    atomic_write_text(handle.getvalue(), csv_path)
    files = [str(csv_path)]
    if plot:
        for layer in layers:
            files.append(str(plot_gate_pca(layer, out_dir / f"moe_pca_{_slug(layer.name)}.png")))
    summary["files"] = files + [str(out_dir / "moe_routing.json")]
    json_path = out_dir / "moe_routing.json"
    atomic_write_text(json.dumps(summary, indent=2), json_path)
    return summary
