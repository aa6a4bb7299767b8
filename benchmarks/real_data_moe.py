"""HEA25 (25 transition metals): mixture of experts with element routing against a dense
readout of the same active size, 5-fold cross-validation, and whether the learned expert
usage follows the periodic table.

A special case of ``benchmarks/real_data.py`` (``--cases hea25_moe``). Models: the ``moe``
preset (``conf/model/moe.yaml``: the radial descriptor of ``conf/model/descriptor/radial.yaml``
and the readout of ``conf/model/readout/moe.yaml``: 8 routed experts, top-2, 2 shared, element
router) and a dense readout: one MLP shared by all elements (``moe`` with no routed expert and
one shared expert) whose hidden width is chosen so that its per-atom *active* parameter count
(``MoEMLP.active_parameter_count``: the experts an atom passes through, plus the router)
matches the MoE's. Both train with the compact trainer of ``mlip-design``
(:func:`mlip_plugins.design.training.train_potential`: Adam, energy and force terms divided by
the training fold's label variances as ``experiment=dft``, cosine annealed over the wall
budget), the same seed, batches and budget per fold: ``budget.minutes / 8`` minutes per fold
and model (1 minute at the suite's default of 8).

Folds: the 100 structures permuted with seed 0 and cut into 5 parts; each part is the test
set once. Errors are the mean ± standard deviation over the folds of the test MAE (energy per
atom, force components).

Routing and the periodic table: for the MoE of every fold the per-element gate vectors are read
exactly from the router's table (:func:`mlip_plugins.moe.analysis.collect_routing`); the
pairwise Euclidean distances between elements in that expert-usage space are rank-correlated
(Spearman) with their distances in (group, period) space. The shuffled-element baseline is the
same correlation with the elements' (group, period) labels permuted (mean over ``PERMUTATIONS``
permutations); ``p`` is the fraction of permutations that reach the observed value. The PCA
plot of fold 0 (colour: group, marker: period) and the routing tables of every fold are
written to ``<out>/hea25_moe/``.

The published HEA25 results (Lopanitsyna et al. 2023; CACE, Cheng 2024) are for the full
HEA25 dataset and its own splits; this file is a 100-structure subset, and its PROVENANCE.md
does not transcribe their numbers, so no ratio is given.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
FOLDER, FILE = "hea25_subset_metatrain", "hea_samples_bulk.xyz"
FOLDS = 5
PERMUTATIONS = 200
#: wall seconds per fold and model at the suite's default budget of 8 minutes
SECONDS_AT_DEFAULT = 60.0


def _preset(relative: str) -> dict:
    """A YAML file of ``conf/model`` (its ``# @package`` header is a comment to YAML)."""
    return yaml.safe_load((REPO / "conf" / "model" / relative).read_text())


def active_readout_parameters(potential) -> int:
    """Per-atom active parameters of every MoE layer (routed or not) of ``potential``."""
    from mlip_plugins.moe.layer import MoEMLP

    return sum(m.active_parameter_count() for m in potential.modules() if isinstance(m, MoEMLP))


def model_configs(elements: list[str], cutoff: float) -> dict[str, dict]:
    """The MoE preset and the dense readout with the nearest matching active parameter count."""
    from mlip_plugins.models import build_potential

    descriptor = _preset("descriptor/radial.yaml")
    moe = _preset("readout/moe.yaml")

    def config(readout: dict) -> dict:
        return {"elements": elements, "cutoff": cutoff, "energy": {"descriptor": copy.deepcopy(descriptor), "readout": readout}}

    def active(readout: dict) -> int:
        return active_readout_parameters(build_potential(config(readout)))

    target = active(moe)
    dense = {"name": "moe", "num_experts": 0, "num_shared": 1, "activation": moe.get("activation", "silu")}
    per_unit = active({**dense, "hidden": [2]}) - active({**dense, "hidden": [1]})  # linear in the width
    width = max(1, round((target - active({**dense, "hidden": [1]})) / per_unit) + 1)
    return {"MoE (element routing, top-2 of 8 + 2 shared)": config(moe),
            f"dense (one shared MLP, hidden {width})": config({**dense, "hidden": [width]})}


def folds(n: int, k: int = FOLDS, seed: int = 0) -> list[np.ndarray]:
    """``k`` disjoint test index sets covering ``range(n)`` (a seeded permutation cut in parts)."""
    return np.array_split(np.random.default_rng(seed).permutation(n), k)


def periodic_coordinates(numbers: list[int]) -> np.ndarray:
    """(group, period) of each element (the d-block metals of HEA25 all have a group)."""
    from mlip_plugins.moe.analysis import period, periodic_group

    return np.array([[periodic_group(z), period(z)] for z in numbers], dtype=float)


def routing_correlation(gates: np.ndarray, coordinates: np.ndarray, permutations: int = PERMUTATIONS,
                        seed: int = 0) -> dict[str, float]:
    """Spearman correlation of pairwise element distances in expert-usage space (rows of
    ``gates``) and in (group, period) space, against the same with the elements' labels permuted."""
    from scipy.spatial.distance import pdist
    from scipy.stats import spearmanr

    usage = pdist(gates)
    observed = float(spearmanr(usage, pdist(coordinates)).statistic)
    rng = np.random.default_rng(seed)
    shuffled = np.array([spearmanr(usage, pdist(coordinates[rng.permutation(len(coordinates))])).statistic
                         for _ in range(permutations)])
    return {"spearman": observed, "shuffled_mean": float(shuffled.mean()), "shuffled_std": float(shuffled.std()),
            "p": float((shuffled >= observed).mean())}


def _mean_std(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values))


def run(budget) -> dict:
    """The case for ``benchmarks/real_data.py`` (``budget``: its ``Budget``)."""
    import torch

    from mlip_plugins.data.reference_datasets import dataset_path
    from mlip_plugins.data.statistics import elements_in
    from mlip_plugins.design.properties import validation_errors
    from mlip_plugins.design.training import TrainSettings, train_potential
    from mlip_plugins.models import build_potential
    from ase.data import chemical_symbols

    from mlip_plugins.cli.design import load_graphs
    from mlip_plugins.moe.analysis import collect_routing, write_moe_analysis

    path = dataset_path(FOLDER, FILE)
    out = Path(budget.out) / "hea25_moe"
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(budget.threads)
    seconds = SECONDS_AT_DEFAULT * budget.minutes / 8.0
    cutoff = float(_preset("moe.yaml")["cutoff"])
    graphs = load_graphs(str(path), cutoff)
    numbers = elements_in(graphs)
    configs = model_configs([chemical_symbols[z] for z in numbers], cutoff)
    results: dict[str, list[dict]] = {name: [] for name in configs}
    correlations = []
    started = time.perf_counter()
    for k, test_index in enumerate(folds(len(graphs))):
        test_set = set(test_index.tolist())
        train = [g for i, g in enumerate(graphs) if i not in test_set]
        test = [graphs[i] for i in sorted(test_set)]
        for name, config in configs.items():
            torch.manual_seed(k)
            potential = build_potential(config)
            counts = potential.parameter_counts()
            active = active_readout_parameters(potential)
            history = train_potential(potential, train, TrainSettings(epochs=100000, lr=0.01, batch_size=8, energy=1.0, forces=1.0,
                                                                      normalize="variance", max_seconds=seconds, seed=k))
            errors = validation_errors(potential, test)
            record = {"fold": k, "parameters": int(counts["total"]), "active": int(active),
                      "epochs": history["epochs_run"], "seconds": history["seconds"], **errors}
            if name.startswith("MoE"):
                routing = collect_routing(potential)[0]
                correlation = routing_correlation(routing.mean_gates, periodic_coordinates(routing.atomic_numbers), seed=k)
                correlations.append(correlation)
                record["routing"] = correlation
                write_moe_analysis(potential, out / f"fold{k}", plot=(k == 0))
            results[name].append(record)
            print(f"[hea25_moe] fold {k} {name}: {history['epochs_run']} epochs, E MAE {1000 * errors['energy_mae']:.1f} meV/atom, "
                  f"F MAE {errors['forces_mae']:.3f} eV/Å", flush=True)
    (out / "folds.json").write_text(json.dumps(results, indent=1))
    return {"case": "hea25_moe", "wall_s": time.perf_counter() - started, "folds": results, "routing": correlations,
            "markdown": markdown(results, correlations, seconds, len(graphs), out, budget)}


def markdown(results: dict[str, list[dict]], correlations: list[dict], seconds: float, n: int, out: Path, budget) -> str:
    """The case's section of the table."""
    lines = ["### hea25_moe", "",
             f"HEA25 subset ({n} structures, 25 elements), {FOLDS}-fold cross-validation, {seconds:.0f} s of training per fold "
             f"and model ({budget.threads} thread); test MAE mean ± std over the folds.", "",
             "| model | parameters | readout active / atom | epochs | E MAE (meV/atom) | F MAE (eV/Å) | E RMSE (meV/atom) | F RMSE (eV/Å) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, rows in results.items():
        e, f = _mean_std([1000 * r["energy_mae"] for r in rows]), _mean_std([r["forces_mae"] for r in rows])
        er, fr = _mean_std([1000 * r["energy_rmse"] for r in rows]), _mean_std([r["forces_rmse"] for r in rows])
        epochs = _mean_std([r["epochs"] for r in rows])[0]
        lines.append(f"| {name} | {rows[0]['parameters']} | {rows[0]['active']} | {epochs:.0f} | {e[0]:.1f} ± {e[1]:.1f} | "
                     f"{f[0]:.3f} ± {f[1]:.3f} | {er[0]:.1f} ± {er[1]:.1f} | {fr[0]:.3f} ± {fr[1]:.3f} |")
    lines.append("| Lopanitsyna 2023; CACE 2024 | – | – | – | full HEA25 set and splits; not transcribed in PROVENANCE.md (no ratio) | | | |")
    if correlations:
        rho = _mean_std([c["spearman"] for c in correlations])
        shuffled = _mean_std([c["shuffled_mean"] for c in correlations])
        p = _mean_std([c["p"] for c in correlations])
        lines += ["", f"Expert usage vs the periodic table: Spearman ρ between pairwise element distances in expert-usage space "
                      f"(router gate table) and in (group, period) space = **{rho[0]:.3f} ± {rho[1]:.3f}** over the folds; "
                      f"shuffled-element baseline {shuffled[0]:.3f} ± {shuffled[1]:.3f} ({PERMUTATIONS} permutations per fold; "
                      f"permutation p = {p[0]:.3f} on average). PCA plot (fold 0; colour: group, marker: period): "
                      f"`{out / 'fold0'}/moe_pca_*.png`."]
    lines += ["", f"`python benchmarks/real_data.py --cases hea25_moe --budget-minutes {budget.minutes:g} --threads {budget.threads}`"]
    return "\n".join(lines)
