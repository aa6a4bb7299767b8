"""NEP inference speed: our NEP (PyTorch, autograd forces) against calorine's CPUNEP (GPUMD's C++ NEP_CPU).

Peer: ``calorine.calculators.CPUNEP``. Ours: ``MLIPCalculator`` on the same nep.txt, in float64
(the calculator's default) and float32, end to end (neighbour list with vesin, graph, energy and
forces), plus the model alone on a prebuilt graph. Figure: atoms per second for energy + forces,
best of ``--rounds`` interleaved rounds of ``--repeats`` calls each (the peers alternate, so a busy
machine slows them alike). Structures: rattled three-element fcc supercells of growing size;
the model: a NEP4 with random parameters written by calorine (``--model`` to use your own).
The two codes are also checked to agree (largest force difference in the table).

    python benchmarks/nep_inference.py [--sizes 256 864 2048] [--threads 1] [--device cpu|cuda]
    python benchmarks/nep_inference.py --pbte --sizes 250 1000     # GPUMD's PbTe nep.txt on its own frames

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


def time_calls(calc, atoms, repeats: int) -> float:
    """Seconds per energy + forces call (positions nudged so nothing is cached)."""
    atoms = atoms.copy()
    atoms.calc = calc
    calc.calculate(atoms, ["energy", "forces"], all_changes)
    start = time.perf_counter()
    for k in range(repeats):
        atoms.positions[0, 0] += 1e-6 * (-1) ** k
        calc.calculate(atoms, ["energy", "forces"], all_changes)
    return (time.perf_counter() - start) / repeats


def time_model_only(calc, atoms, repeats: int) -> float:
    batch = calc._graph(atoms)
    potential = calc.potential
    potential(batch)
    start = time.perf_counter()
    for _ in range(repeats):
        out = potential(batch)
        out["forces"].sum().item()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 864, 2048])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (calorine's NEP_CPU runs on one)")
    parser.add_argument("--model", default=None, help="a nep.txt (default: a random 3-element NEP4)")
    parser.add_argument("--device", default="cpu", help="device of our model (cuda for a GPU figure; the peer stays on the CPU)")
    parser.add_argument("--pbte", action="store_true", help="GPUMD's PbTe nep.txt and frames (gpumd_pbte)")
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
    peers = {
        "calorine CPUNEP (C++)": lambda: CPUNEP(str(model)),
        "ours float64": lambda: MLIPCalculator.from_file(model, device=args.device, dtype=torch.float64),
        "ours float32": lambda: MLIPCalculator.from_file(model, device=args.device, dtype=torch.float32),
    }
    calcs = {name: make() for name, make in peers.items()}
    rows = []
    for n in args.sizes:
        atoms = pbte_structure(n) if args.pbte else structure(n, symbols)
        best = {name: float("inf") for name in calcs}
        best["ours float64, model only"] = float("inf")
        for _ in range(args.rounds):
            for name, calc in calcs.items():
                best[name] = min(best[name], time_calls(calc, atoms, args.repeats))
            best["ours float64, model only"] = min(best["ours float64, model only"], time_model_only(calcs["ours float64"], atoms, args.repeats))
        ref, mine = atoms.copy(), atoms.copy()
        ref.calc, mine.calc = CPUNEP(str(model)), calcs["ours float64"]
        df = float(np.abs(ref.get_forces() - mine.get_forces()).max())
        de = abs(ref.get_potential_energy() - mine.get_potential_energy()) / len(atoms)
        rows.append({"atoms": len(atoms), "seconds": best, "atoms_per_s": {k: len(atoms) / v for k, v in best.items()},
                     "max_force_diff": df, "energy_diff_per_atom": de})
    peer = "calorine CPUNEP (C++)"
    header = f"{'atoms':>6} | {'peer: calorine atoms/s':>22} | {'ours f64 atoms/s':>16} | {'ratio':>6} | {'ours f32 atoms/s':>16} | {'ratio':>6} | {'f64 model-only':>14} | {'ratio':>6} | {'max|dF|':>8}"
    load = os.getloadavg()[0]
    lines = [f"NEP energy + forces ({'GPUMD PbTe' if args.pbte else model.name}), {args.threads} thread(s), device {args.device}; "
             f"ratio = ours / peer (>1: we are faster); load average {load:.1f}", header, "-" * len(header)]
    for row in rows:
        a = row["atoms_per_s"]
        lines.append(
            f"{row['atoms']:>6} | {a[peer]:>22.0f} | {a['ours float64']:>16.0f} | {a['ours float64'] / a[peer]:>6.2f} | "
            f"{a['ours float32']:>16.0f} | {a['ours float32'] / a[peer]:>6.2f} | {a['ours float64, model only']:>14.0f} | "
            f"{a['ours float64, model only'] / a[peer]:>6.2f} | {row['max_force_diff']:>8.1e}"
        )
    table = "\n".join(lines)
    print(table)
    (out_dir / "table.md").write_text(table + "\n")
    (out_dir / "results.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        for name in list(calcs) + ["ours float64, model only"]:
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
