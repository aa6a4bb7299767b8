"""NEP inference speed: our NEP (PyTorch) against calorine's CPUNEP (GPUMD's C++ NEP_CPU).

Peer: ``calorine.calculators.CPUNEP``, which computes energy, forces and virial in every call.
Ours: ``MLIPCalculator`` on the same nep.txt, end to end (vesin neighbour list, energy, forces):
the default path (the chain rule written out, :mod:`mlip_plugins.nep.analytic`) in float64 with
and without the stress (the like-for-like figure is "+ stress"), the autograd path
(``analytic=False``) in float64 and float32. Figure: atoms per second, best of ``--rounds``
interleaved rounds of ``--repeats`` calls each (the peers alternate, so a busy machine slows
them alike). Structures: rattled three-element fcc supercells of growing size;
the model: a NEP4 with random parameters written by calorine (``--model`` to use your own).
The two codes are also checked to agree (largest force difference in the table).

    python benchmarks/nep_inference.py [--sizes 256 864 2048] [--threads 1] [--device cpu|cuda]
    python benchmarks/nep_inference.py --pbte --sizes 250 1000     # GPUMD's PbTe nep.txt on its own frames

``--training-gradient``: also time the parameter gradient of a force + energy loss on each
structure, by autograd through the forces (``create_graph``, what training does) and by
differentiating the written-out chain rule (:mod:`mlip_plugins.nep.analytic`) once more, and
print how far the two gradients differ.

``--pbte``: GPUMD's PbTe example instead (its nep.txt: cutoff 8/4, n_max 6/6, basis 6/6, l_max
4 2 0, 30 neurons; the first frame of its train.xyz, 250 atoms, repeated along a and b for more).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from ase.build import bulk
from ase.calculators.calculator import all_changes

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "nep"))
PBTE = Path(os.environ.get("MLIP_DATASETS", Path(__file__).resolve().parents[1].parent / "shared" / "datasets")) / "gpumd_pbte"


def random_model_file(path: Path, types=("Cu", "Ag", "Au")) -> Path:
    """A NEP4 with random parameters and common hyperparameters, written by calorine."""
    from test_nep_parity import random_calorine_model

    random_calorine_model(types=types, n_max=(4, 4), basis=(8, 8), l_max=(4, 2, 0), neuron=30, cutoff=(5.0, 4.0)).write(str(path))
    return path


def structure(n_atoms: int, symbols, seed: int = 0):
    repeats = max(1, round((n_atoms / 4) ** (1 / 3)))
    atoms = bulk("Cu", "fcc", a=3.8, cubic=True).repeat((repeats, repeats, repeats))
    rng = np.random.default_rng(seed)
    atoms.set_chemical_symbols(list(rng.choice(list(symbols), len(atoms))))
    atoms.rattle(0.05, seed=seed)
    return atoms


def pbte_structure(n_atoms: int):
    """GPUMD's first PbTe training frame (250 atoms), repeated (k, k, 1)-fold to about ``n_atoms``."""
    from ase.io import read

    frame = read(PBTE / "train.xyz", index=0, format="gpumd-xyz")
    k = max(1, round((n_atoms / len(frame)) ** 0.5))
    atoms = frame.repeat((k, k, 1))
    atoms.rattle(0.01, seed=0)
    return atoms


def time_calls(calc, atoms, repeats: int, properties=("energy", "forces")) -> float:
    """Seconds per call (positions nudged so nothing is cached)."""
    atoms = atoms.copy()
    atoms.calc = calc
    calc.calculate(atoms, list(properties), all_changes)
    start = time.perf_counter()
    for k in range(repeats):
        atoms.positions[0, 0] += 1e-6 * (-1) ** k
        calc.calculate(atoms, list(properties), all_changes)
    return (time.perf_counter() - start) / repeats


def training_gradients(model: Path, atoms, repeats: int, rounds: int) -> dict:
    """Seconds per parameter gradient of sum (F - 0)^2 / 3N + 1e-6 E^2 on ``atoms``: autograd
    through the forces with ``create_graph`` (the training path) against the written-out chain
    rule differentiated once more; and the largest difference of the two gradients."""
    from mlip_plugins.calculator import MLIPCalculator
    from mlip_plugins.nep import analytic

    calc = MLIPCalculator.from_file(model, analytic=False)
    potential = calc.potential.train()
    params = [p for p in potential.parameters() if p.requires_grad]
    batch = calc._graph(atoms)
    chain_rule = analytic.AnalyticNEP(potential)
    pairs = chain_rule.pairs(atoms)

    def by_autograd():
        out = potential(batch, compute_forces=True, create_graph=True)
        return torch.autograd.grad((out["forces"] ** 2).mean() + 1e-6 * out["energy"].sum() ** 2, params)

    def by_chain_rule():
        atomic, grad = chain_rule.energy_and_pair_gradient(pairs)
        forces = analytic.pair_forces(pairs, grad)
        return torch.autograd.grad((forces**2).mean() + 1e-6 * atomic.sum() ** 2, params)

    difference = max(float((a - b).abs().max()) for a, b in zip(by_autograd(), by_chain_rule()))
    best = {"autograd": float("inf"), "chain rule": float("inf")}
    for _ in range(rounds):
        for name, step in (("autograd", by_autograd), ("chain rule", by_chain_rule)):
            start = time.perf_counter()
            for _ in range(repeats):
                step()
            best[name] = min(best[name], (time.perf_counter() - start) / repeats)
    return {"seconds": best, "max_gradient_difference": difference}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 864, 2048])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (calorine's NEP_CPU runs on one)")
    parser.add_argument("--model", default=None, help="a nep.txt (default: a random 3-element NEP4)")
    parser.add_argument("--device", default="cpu", help="device of our model (cuda for a GPU figure; the peer stays on the CPU)")
    parser.add_argument("--pbte", action="store_true", help="GPUMD's PbTe nep.txt and frames (gpumd_pbte)")
    parser.add_argument("--training-gradient", action="store_true", help="also time a force-loss parameter gradient both ways")
    parser.add_argument("--out", default="outputs/nep_inference")
    args = parser.parse_args()
    if args.pbte:
        if not (PBTE / "nep.txt").exists():
            raise SystemExit(f"nep_inference: {PBTE} not found (set MLIP_DATASETS)")
        args.model = args.model or str(PBTE / "nep.txt")
    torch.set_num_threads(args.threads)
    from calorine.calculators import CPUNEP

    from mlip_plugins.calculator import MLIPCalculator
    from mlip_plugins.nep.nep_txt import read_nep

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = Path(args.model) if args.model else random_model_file(out_dir / "nep.txt")
    symbols = read_nep(model).types
    load = lambda **kw: MLIPCalculator.from_file(model, device=args.device, **kw)  # noqa: E731
    # name: (calculator, properties asked)
    calcs = {
        "calorine CPUNEP (C++)": (CPUNEP(str(model)), ("energy", "forces")),
        "ours f64": (load(dtype=torch.float64), ("energy", "forces")),
        "ours f64 + stress": (load(dtype=torch.float64), ("energy", "forces", "stress")),
        "ours f64 autograd": (load(dtype=torch.float64, analytic=False), ("energy", "forces")),
        "ours f32 autograd": (load(dtype=torch.float32, analytic=False), ("energy", "forces")),
    }
    rows = []
    for n in args.sizes:
        atoms = pbte_structure(n) if args.pbte else structure(n, symbols)
        best = {name: float("inf") for name in calcs}
        for _ in range(args.rounds):
            for name, (calc, properties) in calcs.items():
                best[name] = min(best[name], time_calls(calc, atoms, args.repeats, properties))
        ref, mine = atoms.copy(), atoms.copy()
        ref.calc, mine.calc = CPUNEP(str(model)), calcs["ours f64"][0]
        df = float(np.abs(ref.get_forces() - mine.get_forces()).max())
        de = abs(ref.get_potential_energy() - mine.get_potential_energy()) / len(atoms)
        rows.append({"atoms": len(atoms), "seconds": best, "atoms_per_s": {k: len(atoms) / v for k, v in best.items()},
                     "max_force_diff": df, "energy_diff_per_atom": de})
    peer = "calorine CPUNEP (C++)"
    ours = [name for name in calcs if name != peer]
    header = f"{'atoms':>6} | {'calorine atoms/s':>16} | " + " | ".join(f"{name:>18} | {'ratio':>5}" for name in ours) + f" | {'max|dF|':>8}"
    load = os.getloadavg()[0]
    lines = [f"NEP ({'GPUMD PbTe' if args.pbte else model.name}), {args.threads} thread(s), device {args.device}; atoms/s of "
             f"energy + forces (+ stress where named); ratio = ours / calorine (>1: we are faster); load average {load:.1f}",
             header, "-" * len(header)]
    for row in rows:
        a = row["atoms_per_s"]
        lines.append(f"{row['atoms']:>6} | {a[peer]:>16.0f} | " + " | ".join(f"{a[name]:>18.0f} | {a[name] / a[peer]:>5.2f}" for name in ours)
                     + f" | {row['max_force_diff']:>8.1e}")
    training = []
    if args.training_gradient:
        lines.append("")
        lines.append("parameter gradient of a force + energy loss (ms): autograd with create_graph | chain rule differentiated | ratio | max |difference|")
        for n in args.sizes:
            atoms = pbte_structure(n) if args.pbte else structure(n, symbols)
            result = training_gradients(model, atoms, args.repeats, args.rounds)
            seconds = result["seconds"]
            lines.append(f"{len(atoms):>6} atoms | {1e3 * seconds['autograd']:>8.1f} | {1e3 * seconds['chain rule']:>8.1f} | "
                         f"{seconds['autograd'] / seconds['chain rule']:>5.2f} | {result['max_gradient_difference']:.1e}")
            training.append({"atoms": len(atoms), **result})
    table = "\n".join(lines)
    print(table)
    (out_dir / "table.md").write_text(table + "\n")
    (out_dir / "results.json").write_text(json.dumps({"args": vars(args), "rows": rows, "training_gradient": training}, indent=2))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        for name in calcs:
            ax.plot([r["atoms"] for r in rows], [r["atoms_per_s"][name] for r in rows], "o-", label=name)
        ax.set_xscale("log")
        ax.set_xlabel("atoms")
        ax.set_ylabel("atoms / s (energy + forces)")
        ax.set_title(f"NEP inference, {args.threads} CPU thread(s)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out_dir / "nep_inference.png", dpi=120)
        print(f"wrote {out_dir / 'table.md'}, {out_dir / 'results.json'}, {out_dir / 'nep_inference.png'}")
    except ImportError:
        pass


if __name__ == "__main__":
    main()
