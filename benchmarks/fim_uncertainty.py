"""Fisher information of the default model on the default dataset, and how well the linearised
FIM uncertainty ranks held-out errors.

Trains the ``conf/model/default.yaml`` model (radial descriptor + per-element MLP) on the
embedded EMT dataset with the compact trainer of ``mlip_plugins.design.training``, then

1. computes the exact FIM report on a probe set and the matrix-free (Lanczos) top-k
   eigenvalues, and compares the two (agreement and time);
2. fits ``FisherUncertainty`` on training structures and measures, on held-out structures,
   the Spearman correlation between the predicted std and the actual absolute error
   (energy per atom; per-atom force-error norm). Peers: a random std (no information) and,
   for forces, the predicted force magnitude (a common heuristic: errors grow with |F|).

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--probe-size", type=int, default=16)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--fit-structures", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from mlip_plugins.cli.design import load_graphs, split
    from mlip_plugins.design.properties import validation_errors
    from mlip_plugins.design.training import TrainSettings, train_potential
    from mlip_plugins.fim import analyse
    from mlip_plugins.models import build_potential
    from mlip_plugins.uncertainty import FisherUncertainty

    config = default_model_config()
    graphs = load_graphs("default", float(config["cutoff"]))
    train, held_out = split(graphs, 0.2, 0, None)
    torch.manual_seed(0)
    potential = build_potential(config)
    t0 = time.perf_counter()
    train_potential(potential, train, TrainSettings(epochs=args.epochs, lr=args.lr))
    train_s = time.perf_counter() - t0
    errors = validation_errors(potential, held_out)
    print(f"default model: {potential.parameter_counts()['total']} parameters, trained {args.epochs} epochs in {train_s:.0f} s; "
          f"held-out RMSE E {1000 * errors['energy_rmse']:.1f} meV/atom, F {1000 * errors['forces_rmse']:.0f} meV/Å")

    probe = train[: args.probe_size]
    t0 = time.perf_counter()
    exact = analyse(potential, probe, method="exact")
    exact_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    free = analyse(potential, probe, method="lanczos", top_k=args.top_k)
    free_s = time.perf_counter() - t0
    print()
    print(exact.format_table())
    k = min(args.top_k, len(free.eigenvalues))
    rel = np.abs(np.array(free.eigenvalues[:k]) - np.array(exact.eigenvalues[:k])) / np.array(exact.eigenvalues[:k])
    print(f"\n{'figure':<42} {'Lanczos (matrix-free)':>22} {'exact (peer)':>14} {'ratio':>8}")
    print(f"{'lambda_max':<42} {free.metrics['lambda_max']:>22.6g} {exact.metrics['lambda_max']:>14.6g} "
          f"{free.metrics['lambda_max'] / exact.metrics['lambda_max']:>8.6f}")
    print(f"{f'lambda_{k}':<42} {free.eigenvalues[k - 1]:>22.6g} {exact.eigenvalues[k - 1]:>14.6g} "
          f"{free.eigenvalues[k - 1] / exact.eigenvalues[k - 1]:>8.6f}")
    print(f"{f'max relative error of top {k}':<42} {rel.max():>22.2e} {'0':>14} {'':>8}")
    print(f"{'wall time (s)':<42} {free_s:>22.1f} {exact_s:>14.1f} {free_s / exact_s:>8.2f}")

    t0 = time.perf_counter()
    unc = FisherUncertainty.fit(potential, train, max_structures=args.fit_structures)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    data = unc.errors_and_std(potential, held_out)
    assess_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    # force-magnitude heuristic: |F_pred| per atom
    from torch_geometric.data import Batch

    magnitudes = []
    for graph in held_out:
        with torch.enable_grad():
            out = potential(Batch.from_data_list([graph]))
        magnitudes.append(out["forces"].detach().norm(dim=1).numpy())
    magnitude = np.concatenate(magnitudes)
    rho = {
        "energy": spearmanr(data["energy_std"], data["energy_error"]).statistic,
        "forces": spearmanr(data["forces_std"], data["forces_error"]).statistic,
        "energy_random": spearmanr(rng.random(len(data["energy_error"])), data["energy_error"]).statistic,
        "forces_random": spearmanr(rng.random(len(data["forces_error"])), data["forces_error"]).statistic,
        "forces_magnitude": spearmanr(magnitude, data["forces_error"]).statistic,
    }
    within = {k: float(np.mean(data[f"{k}_error"] <= data[f"{k}_std"] * unc.scale[k])) for k in ("energy", "forces")}
    print(f"\nuncertainty: fitted on {unc.info['n_structures']} structures ({unc.info['n_observations']} observations, "
          f"{unc.info['rank_kept']} directions kept) in {fit_s:.0f} s; assessed on {len(held_out)} held-out structures in {assess_s:.0f} s")
    print(f"{'Spearman rho (std vs |error|)':<42} {'FIM std':>10} {'peer':>26} {'peer rho':>9}")
    print(f"{'energy per atom':<42} {rho['energy']:>10.3f} {'random std':>26} {rho['energy_random']:>9.3f}")
    print(f"{'per-atom force error norm':<42} {rho['forces']:>10.3f} {'random std':>26} {rho['forces_random']:>9.3f}")
    print(f"{'per-atom force error norm':<42} {rho['forces']:>10.3f} {'|F_pred| heuristic':>26} {rho['forces_magnitude']:>9.3f}")
    print(f"fraction of errors within 1 predicted std (uncalibrated): energy {within['energy']:.2f}, forces {within['forces']:.2f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"errors": errors, "fisher": exact.metrics, "lanczos": free.metrics, "spearman": rho, "within_1std": within,
                       "train_seconds": train_s, "exact_seconds": exact_s, "lanczos_seconds": free_s}, handle, indent=1, default=str)


if __name__ == "__main__":
    main()
