"""Fisher information of the default model on the default dataset, and how well the linearised
FIM uncertainty ranks held-out errors.

Trains the ``conf/model/composable.yaml`` model (radial descriptor + per-element MLP) on the
embedded EMT dataset with the compact trainer of ``mlip_plugins.design.training``, then

1. computes the exact FIM report on a probe set and the matrix-free (Lanczos) top-k
   eigenvalues, and compares the two (agreement and time);
2. fits ``FisherUncertainty`` on training structures and measures, on held-out structures,
   the Spearman correlation between the predicted std and the actual absolute error
   (energy per atom; per-atom force-error norm) for several ridges (prior precisions).
   Peers: a random std (no information) and, for forces, the predicted force magnitude (a
   common heuristic: errors grow with |F|).

Prints tables (figure, FIM value, peer, ratio) measured in one run.

    python benchmarks/fim_uncertainty.py --epochs 25 --probe-size 16
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from scipy.stats import spearmanr


def default_model_config() -> dict:
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    with initialize_config_module("mlip_plugins.conf", version_base=None):
        cfg = compose("train")
    return OmegaConf.to_container(cfg.model, resolve=True)


def fisher_tables(potential, probe, top_k: int):
    """Exact report and matrix-free top-k eigenvalues on the probe set, printed as tables."""
    from mlip_plugins.fim import analyse

    t0 = time.perf_counter()
    exact = analyse(potential, probe, method="exact")
    exact_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    free = analyse(potential, probe, method="lanczos", top_k=top_k)
    free_s = time.perf_counter() - t0
    print()
    print(exact.format_table())
    k = min(top_k, len(free.eigenvalues))
    rel = np.abs(np.array(free.eigenvalues[:k]) - np.array(exact.eigenvalues[:k])) / np.array(exact.eigenvalues[:k])
    print(f"\n{'figure':<42} {'Lanczos (matrix-free)':>22} {'exact (peer)':>14} {'ratio':>8}")
    print(f"{'lambda_max':<42} {free.metrics['lambda_max']:>22.6g} {exact.metrics['lambda_max']:>14.6g} "
          f"{free.metrics['lambda_max'] / exact.metrics['lambda_max']:>8.6f}")
    print(f"{f'lambda_{k}':<42} {free.eigenvalues[k - 1]:>22.6g} {exact.eigenvalues[k - 1]:>14.6g} "
          f"{free.eigenvalues[k - 1] / exact.eigenvalues[k - 1]:>8.6f}")
    print(f"{f'max relative error of top {k}':<42} {rel.max():>22.2e} {'0':>14} {'':>8}")
    print(f"{'wall time (s)':<42} {free_s:>22.1f} {exact_s:>14.1f} {free_s / exact_s:>8.2f}")
    return {"exact": exact.metrics, "lanczos": free.metrics, "exact_seconds": exact_s, "lanczos_seconds": free_s,
            "top_k_max_relative_error": float(rel.max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--probe-size", type=int, default=16)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--fit-structures", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ridges", type=float, nargs="+", default=[1e-8, 1e-6, 1e-4, 1e-2])
    parser.add_argument("--skip-fim", action="store_true", help="only the uncertainty part")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from mlip_plugins.cli.design import load_graphs, split
    from mlip_plugins.design.properties import validation_errors
    from mlip_plugins.design.training import TrainSettings, train_potential
    from mlip_plugins.models import build_potential
    from mlip_plugins.uncertainty import FisherUncertainty

    config = default_model_config()
    graphs = load_graphs("default", float(config["cutoff"]))
    config["elements"] = sorted({int(z) for g in graphs for z in g.z.tolist()})  # the preset says 'auto'
    train, held_out = split(graphs, 0.2, 0, None)
    torch.manual_seed(0)
    potential = build_potential(config)
    t0 = time.perf_counter()
    train_potential(potential, train, TrainSettings(epochs=args.epochs, lr=args.lr))
    train_s = time.perf_counter() - t0
    errors = validation_errors(potential, held_out)
    print(f"default model: {potential.parameter_counts()['total']} parameters, trained {args.epochs} epochs in {train_s:.0f} s; "
          f"held-out RMSE E {1000 * errors['energy_rmse']:.1f} meV/atom, F {1000 * errors['forces_rmse']:.0f} meV/Å")

    fisher = None if args.skip_fim else fisher_tables(potential, train[: args.probe_size], args.top_k)

    t0 = time.perf_counter()
    unc = FisherUncertainty.fit(potential, train, ridge=min(args.ridges), keep=0.0, max_structures=args.fit_structures)
    fit_s = time.perf_counter() - t0
    # held-out gradients once (float64), then the std for every ridge
    from torch_geometric.data import Batch

    from mlip_plugins.fim.fisher import FisherWeights, compute_jacobian, float64_copy

    t0 = time.perf_counter()
    model = float64_copy(potential)
    jac = compute_jacobian(model, held_out, FisherWeights(energy=1.0, forces=1.0, stress=0.0, labelled_only=False))
    energy_err, force_err, magnitude = [], [], []
    for graph in held_out:
        with torch.enable_grad():
            out = model(Batch.from_data_list([graph]))
        energy_err.append(abs(float(out["energy"][0].detach()) - float(graph.energy[0])) / graph.num_nodes)
        force_err.append((out["forces"].detach() - graph.forces.double()).norm(dim=1).numpy())
        magnitude.append(out["forces"].detach().norm(dim=1).numpy())
    assess_s = time.perf_counter() - t0
    energy_err, force_err, magnitude = np.array(energy_err), np.concatenate(force_err), np.concatenate(magnitude)
    rng = np.random.default_rng(0)
    print(f"\nuncertainty: fitted on {unc.info['n_structures']} structures ({unc.info['n_observations']} observations, "
          f"{unc.info['rank_kept']} directions) in {fit_s:.0f} s; held-out gradients of {len(held_out)} structures in {assess_s:.0f} s")
    print(f"{'Spearman rho (std vs |error|), held out':<44} {'ridge':>8} {'energy/atom':>12} {'force/atom':>11} "
          f"{'E within 1 std':>15} {'F within 1 std':>15}")
    rho = {}
    for ridge in args.ridges:
        variant = unc.with_ridge(ridge)
        var = variant.variance_of_rows(jac.matrix)
        e_std = var[jac.kinds == 0].sqrt().numpy()
        f_std = var[jac.kinds == 1].view(-1, 3).sum(1).sqrt().numpy()
        rho[ridge] = (spearmanr(e_std, energy_err).statistic, spearmanr(f_std, force_err).statistic)
        print(f"{'FIM std':<44} {ridge:>8.0e} {rho[ridge][0]:>12.3f} {rho[ridge][1]:>11.3f} "
              f"{np.mean(energy_err <= e_std):>15.2f} {np.mean(force_err <= f_std):>15.2f}")
    peers = {"random std": (spearmanr(rng.random(energy_err.size), energy_err).statistic,
                            spearmanr(rng.random(force_err.size), force_err).statistic),
             "|F_pred| heuristic (forces only)": (float("nan"), spearmanr(magnitude, force_err).statistic)}
    for name, (e_rho, f_rho) in peers.items():
        print(f"{'peer: ' + name:<44} {'':>8} {e_rho:>12.3f} {f_rho:>11.3f}")
    best = max(args.ridges, key=lambda r: rho[r][1])
    print(f"ratio force rho, FIM (ridge {best:.0e}) / |F_pred| heuristic: {rho[best][1] / peers['|F_pred| heuristic (forces only)'][1]:.2f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"errors": errors, "fisher": fisher, "spearman": {str(k): v for k, v in rho.items()}, "peers": peers,
                       "train_seconds": train_s, "fit_seconds": fit_s}, handle, indent=1, default=str)


if __name__ == "__main__":
    main()
