"""Time to accuracy: gradient training (GNEP: Adam) against SNES (GPUMD's optimiser), same NEP, same data.

Peer: SNES as GPUMD runs it (population, rank-based utilities, per-element ranking, one
generation per mini-batch), through the trainer's own ``SNESModule.training_step``. Ours:
Adam with warm-up + cosine decay, gradient clipping and GNEP's loss weights, through
``PotentialModule.training_step`` (forces by autograd, parameter gradients by double
backpropagation). Both start from the same NEP (same initial parameters, descriptor scaler and
per-element E0) and see the same training structures.

Figure: validation force RMSE against training wall time (evaluation time excluded) for
both; the wall time at which Adam first reaches the SNES run's final force RMSE, and the ratio
of SNES's wall time to that. Data: the embedded multi-element EMT set (seven metals), or any
extxyz given with ``--data`` (GPUMD train.xyz files too: ``--format gpumd-xyz``).

    python benchmarks/gnep_vs_snes.py [--snes-seconds 900] [--gnep-seconds 300] [--data train.xyz]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch_geometric.data import Batch

NEP = {"name": "nep", "cutoff_angular": 4.0, "n_max": [4, 4], "basis_size": [6, 6], "l_max": [4, 2, 0], "neuron": 16}


class _NoOpOptimizer:
    def step(self) -> None:
        pass


def load_graphs(args) -> tuple[list, list]:
    from mlip_plugins.data.structures import LabelKeys, atoms_to_graph, extract_labels

    if args.data:
        from mlip_plugins.data.reading import read_structures

        items = [(s.atoms, s.labels) for s in read_structures(args.data, file_format=args.format)]
    else:
        from mlip_plugins.data.default_dataset import load_default_dataset

        items = [(a, extract_labels(a, LabelKeys(), f"default:{k}")) for k, a in enumerate(load_default_dataset(args.structures))]
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(items))
    n_val = max(1, int(round(args.val_fraction * len(items))))
    graphs = [atoms_to_graph(items[k][0], args.cutoff, items[k][1]) for k in order]
    return graphs[n_val:], graphs[:n_val]


def force_rmse(potential, graphs, batch_size: int = 32) -> tuple[float, float]:
    """(force RMSE eV/Å, energy RMSE eV/atom) over ``graphs``."""
    sq_f, n_f, sq_e, n_e = 0.0, 0, 0.0, 0
    for start in range(0, len(graphs), batch_size):
        batch = Batch.from_data_list(graphs[start : start + batch_size])
        out = potential(batch)
        df = (out["forces"].detach() - batch.forces)[batch.has_forces[batch.batch]]
        natoms = torch.bincount(batch.batch, minlength=batch.num_graphs)
        de = ((out["energy"].detach() - batch.energy) / natoms)[batch.has_energy]
        sq_f, n_f = sq_f + float((df**2).sum()), n_f + df.numel()
        sq_e, n_e = sq_e + float((de**2).sum()), n_e + de.numel()
    return math.sqrt(sq_f / max(n_f, 1)), math.sqrt(sq_e / max(n_e, 1))


class Clock:
    """Training wall time with evaluation excluded; evaluates at log-spaced times."""

    def __init__(self, potential, val_graphs, first: float = 0.5, factor: float = 1.25):
        self.potential, self.val, self.next, self.factor = potential, val_graphs, first, factor
        self.elapsed, self.curve, self._start = 0.0, [], None

    def start(self) -> None:
        self._start = time.perf_counter()

    def stop(self, step: int, force: bool = False) -> None:
        self.elapsed += time.perf_counter() - self._start
        if force or self.elapsed >= self.next:
            f, e = force_rmse(self.potential, self.val)
            self.curve.append({"seconds": self.elapsed, "step": step, "force_rmse": f, "energy_rmse": e})
            while self.next <= self.elapsed:
                self.next *= self.factor


def batches(graphs, batch_size: int, rng):
    while True:
        order = rng.permutation(len(graphs))
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield Batch.from_data_list([graphs[k] for k in order[start : start + batch_size]])


def run_snes(module, train, val, args, target=None) -> list[dict]:
    module.log = lambda *a, **k: None
    module.optimizers = lambda: _NoOpOptimizer()
    clock = Clock(module.model, val)
    clock.curve.append({"seconds": 0.0, "step": 0, **dict(zip(("force_rmse", "energy_rmse"), force_rmse(module.model, val)))})
    stream = batches(train, args.snes_batch, np.random.default_rng(args.seed + 1))
    generation = 0
    while clock.elapsed < args.snes_seconds and generation < args.max_generations:
        batch = next(stream)
        clock.start()
        module.training_step(batch, generation)
        generation += 1
        clock.stop(generation)
    clock.stop(generation, force=True)
    return clock.curve


def run_gnep(module, train, val, args, target: float) -> list[dict]:
    module.log = lambda *a, **k: None
    model = module.model
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    steps_per_epoch = max(1, len(train) // args.gnep_batch)
    warmup = steps_per_epoch  # GNEP: one epoch of linear warm-up, then cosine decay
    total = max(warmup + 1, int(args.gnep_epochs * steps_per_epoch))
    floor = args.stop_lr / args.lr

    def factor(step: int) -> float:
        if step < warmup:
            return floor + (1 - floor) * (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    clock = Clock(model, val)
    clock.curve.append({"seconds": 0.0, "step": 0, **dict(zip(("force_rmse", "energy_rmse"), force_rmse(model, val)))})
    stream = batches(train, args.gnep_batch, np.random.default_rng(args.seed + 2))
    step = 0
    while clock.elapsed < args.gnep_seconds and step < total:
        batch = next(stream)
        clock.start()
        optimizer.zero_grad(set_to_none=True)
        loss = module.training_step(batch, step)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        optimizer.step()
        scheduler.step()
        step += 1
        clock.stop(step)
        if args.stop_at_target and clock.curve[-1]["force_rmse"] <= target:
            break
    clock.stop(step, force=True)
    return clock.curve


def first_time_below(curve: list[dict], target: float) -> float | None:
    for point in curve:
        if point["force_rmse"] <= target:
            return point["seconds"]
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=None, help="extxyz (default: the embedded EMT set)")
    parser.add_argument("--format", default=None, help="ASE format of --data (gpumd-xyz for GPUMD train.xyz)")
    parser.add_argument("--structures", type=int, default=240)
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--cutoff", type=float, default=5.0)
    parser.add_argument("--neuron", type=int, default=NEP["neuron"])
    parser.add_argument("--snes-seconds", type=float, default=900.0, help="SNES wall-time budget (training only)")
    parser.add_argument("--max-generations", type=int, default=10**9)
    parser.add_argument("--population", type=int, default=50)
    parser.add_argument("--sigma0", type=float, default=0.1)
    parser.add_argument("--snes-batch", type=int, default=16)
    parser.add_argument("--gnep-seconds", type=float, default=300.0, help="Adam wall-time budget (training only)")
    parser.add_argument("--gnep-batch", type=int, default=4)
    parser.add_argument("--gnep-epochs", type=float, default=60)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--stop-lr", type=float, default=1e-5)
    parser.add_argument("--clip", type=float, default=10.0)
    parser.add_argument("--stop-at-target", action="store_true", help="stop Adam once it reaches the SNES final force RMSE")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="outputs/gnep_vs_snes")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_default_dtype(torch.float32)
    torch.manual_seed(args.seed)

    from lightning_modules.module import PotentialModule
    from lightning_modules.snes import SNESModule
    from mlip_plugins.data.statistics import fit_e0
    from mlip_plugins.nep.model import fit_descriptor_scaler

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    train, val = load_graphs(args)
    elements = sorted({int(z) for g in train + val for z in g.z.tolist()})
    model_cfg = {"elements": elements, "cutoff": args.cutoff, "energy": {"model": dict(NEP, neuron=args.neuron, seed=args.seed)}}
    loss = {"energy": 1.0, "forces": 2.0, "stress": 0.0}  # GNEP's lambda_e, lambda_f (no virials: not all structures have them)
    gnep = PotentialModule(model_cfg, loss=loss)
    with torch.no_grad():
        gnep.model.e0.copy_(torch.as_tensor(fit_e0(train, elements), dtype=gnep.model.e0.dtype))
    fit_descriptor_scaler(gnep.model, train)
    initial = copy.deepcopy(gnep.model.state_dict())
    snes = SNESModule(model_cfg, loss=loss, optimizer={"name": "snes", "population": args.population, "sigma0": args.sigma0})
    snes.model.load_state_dict(initial)
    with torch.no_grad():
        snes.snes_mu.copy_(torch.cat([p.detach().reshape(-1) for p in snes._params]))
    n_params = sum(p.numel() for p in gnep.model.parameters())
    n_atoms = sum(g.num_nodes for g in train)
    print(f"data: {len(train)} training / {len(val)} validation structures ({n_atoms} training atoms), elements {elements}; "
          f"NEP with {n_params} parameters; {args.threads} thread(s)")

    t0 = time.perf_counter()
    snes_curve = run_snes(snes, train, val, args)
    target = snes_curve[-1]["force_rmse"]
    print(f"SNES: {snes_curve[-1]['step']} generations in {snes_curve[-1]['seconds']:.0f} s -> force RMSE {target:.4f} eV/Å")
    gnep_curve = run_gnep(gnep, train, val, args, target)
    print(f"Adam: {gnep_curve[-1]['step']} steps in {gnep_curve[-1]['seconds']:.0f} s -> force RMSE {gnep_curve[-1]['force_rmse']:.4f} eV/Å")
    reached = first_time_below(gnep_curve, target)
    snes_time = snes_curve[-1]["seconds"]
    ratio = snes_time / reached if reached else None
    rows = [
        ("SNES (peer): final force RMSE", f"{target:.4f} eV/Å", f"after {snes_time:.0f} s, {snes_curve[-1]['step']} generations"),
        ("Adam (ours): time to reach it", f"{reached:.2f} s" if reached else "not reached", f"step {next((p['step'] for p in gnep_curve if p['force_rmse'] <= target), '-')}"),
        ("ratio SNES time / Adam time", f"{ratio:.0f}x" if ratio else "-", "goal >= 100x"),
        ("Adam: final force RMSE", f"{gnep_curve[-1]['force_rmse']:.4f} eV/Å", f"after {gnep_curve[-1]['seconds']:.0f} s"),
        ("energy RMSE (SNES / Adam)", f"{snes_curve[-1]['energy_rmse'] * 1000:.1f} / {gnep_curve[-1]['energy_rmse'] * 1000:.1f} meV/atom", ""),
    ]
    width = max(len(r[0]) for r in rows)
    table = "\n".join(f"{a:<{width}} | {b:>22} | {c}" for a, b, c in rows)
    print(table)
    (out_dir / "table.md").write_text(table + "\n")
    (out_dir / "results.json").write_text(json.dumps({
        "args": vars(args), "parameters": n_params, "train_structures": len(train), "val_structures": len(val),
        "snes": snes_curve, "gnep": gnep_curve, "target_force_rmse": target, "gnep_seconds_to_target": reached,
        "ratio": ratio, "total_seconds": time.perf_counter() - t0,
    }, indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curve in (("SNES (GPUMD's optimiser)", snes_curve), ("Adam (GNEP)", gnep_curve)):
        ax.plot([max(p["seconds"], 1e-2) for p in curve], [p["force_rmse"] for p in curve], "o-", ms=3, label=name)
    ax.axhline(target, color="grey", ls=":", lw=1)
    if reached:
        ax.axvline(reached, color="grey", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training wall time (s)")
    ax.set_ylabel("validation force RMSE (eV/Å)")
    ax.set_title(f"NEP ({n_params} parameters), {len(train)} structures" + (f": {ratio:.0f}x" if ratio else ""))
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "gnep_vs_snes.png", dpi=120)
    print(f"wrote {out_dir / 'table.md'}, {out_dir / 'results.json'}, {out_dir / 'gnep_vs_snes.png'}")


if __name__ == "__main__":
    main()
