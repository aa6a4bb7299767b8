"""Long-range solvers on CPU: time vs N, plugin overhead vs torch-pme, batch vs Python loop.

1. Scaling: energy + forces (forward + backward through positions) of rattled rock-salt NaCl
   supercells (charges +-1, a = 5.64 Å) from 1k to >100k atoms for ewald, pme and p3m at
   accuracy 1e-3. Mesh methods use a fixed real-space cutoff (8 Å); Ewald uses a cutoff growing
   as N^(1/6) (its O(N^1.5) balance) and stops when its k-space matrices would exceed the
   memory budget. Neighbour lists are built once, outside the timing. Log-log plot and
   least-squares slopes.
2. Overhead: the plugin (graph from a PyG batch with the full neighbour list -> solver ->
   energy -> forces) against calling torch-pme's calculator directly on the same structure,
   the same full neighbour list and the same parameters (and k-vectors for Ewald).
3. Batching: B small structures in one batch (one vmapped Ewald call; P3M loops inside)
   against a Python loop over the structures.

    python benchmarks/long_range_scaling.py [--max-atoms 110592] [--out outputs/long_range_scaling]
"""

from __future__ import annotations

import argparse
import gc
import math
import time
from pathlib import Path

import numpy as np
import torch
import torchpme
from torch_geometric.data import Batch

from mlip_plugins.data.structures import atoms_to_graph
from mlip_plugins.graph import build_atomic_graph
from mlip_plugins.long_range import EwaldSolver, P3MSolver, PMESolver
from mlip_plugins.long_range.ewald import ewald_kvectors
from mlip_plugins.long_range.reference_crystals import CRYSTALS
from mlip_plugins.long_range.tuning import default_cutoff

SOLVERS = {"ewald": EwaldSolver, "pme": PMESolver, "p3m": P3MSolver}
ACCURACY = 1e-3
MESH_CUTOFF = 8.0
EWALD_MAX_MATRIX = 6e7  # k-vectors x atoms entries of Ewald's cos/sin matrices


def rocksalt(n: int, seed: int = 0, strain: float = 0.0):
    atoms = CRYSTALS["NaCl_cubic"].atoms(5.64 / 2, (n, n, n))
    rng = np.random.default_rng(seed)
    if strain:
        eps = rng.uniform(-strain, strain, (3, 3))
        atoms.set_cell(atoms.cell.array @ (np.eye(3) + 0.5 * (eps + eps.T)), scale_atoms=True)
    atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
    return atoms


def cutoff_for(method: str, atoms) -> float:
    return default_cutoff("ewald", len(atoms), atoms.get_volume()) if method == "ewald" else MESH_CUTOFF


def timed(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


class PluginCase:
    """Energy + forces through the plugin from a PyG batch (graph construction included)."""

    def __init__(self, solver, data, charges):
        self.solver, self.data, self.charges = solver.to(data.pos.dtype), data, charges
        self.species = torch.zeros(data.num_nodes, dtype=torch.long)

    def __call__(self):
        pos = self.data.pos.detach().requires_grad_(True)
        graph = build_atomic_graph(self.data, self.species, pos=pos)
        energy = self.solver(graph, self.charges)["energy"].sum()
        return torch.autograd.grad(energy, pos)[0]


class TorchPMECase:
    """Energy + forces calling torch-pme directly with the same neighbour list and parameters."""

    def __init__(self, solver, data, charges):
        self.data, self.charges = data, charges.view(-1, 1)
        self.pairs = torch.stack([data.edge_index[1], data.edge_index[0]], 1)
        self.offsets = data.shifts.to(data.pos.dtype) @ data.cell.view(3, 3)
        potential = torchpme.CoulombPotential(smearing=solver.smearing, prefactor=solver.prefactor)
        if isinstance(solver, EwaldSolver):
            self.calculator = torchpme.EwaldCalculator(potential, lr_wavelength=solver.lr_wavelength, full_neighbor_list=True)
        else:
            cls = torchpme.P3MCalculator if isinstance(solver, P3MSolver) else torchpme.PMECalculator
            self.calculator = cls(potential, mesh_spacing=solver.mesh_spacing, interpolation_nodes=solver.interpolation_nodes, full_neighbor_list=True)
        self.calculator.to(data.pos.dtype)
        self.is_ewald = isinstance(solver, EwaldSolver)
        self.solver = solver
        self.cutoff = solver.cutoff

    def __call__(self):
        pos = self.data.pos.detach().requires_grad_(True)
        cell = self.data.cell.view(3, 3)
        vec = pos[self.pairs[:, 1]] - pos[self.pairs[:, 0]] + self.offsets
        dist = vec.norm(dim=1)
        extra = {"kvectors": ewald_kvectors(cell, self.solver.lr_wavelength)} if self.is_ewald else {}
        potentials = self.calculator(self.charges, cell, pos, self.pairs, dist, **extra)
        energy = (self.charges * potentials).sum()
        return torch.autograd.grad(energy, pos)[0]


def graph_data(atoms, cutoff: float):
    return Batch.from_data_list([atoms_to_graph(atoms, cutoff)])


def scaling(max_atoms: int, repeats: int) -> dict:
    sizes = [n for n in (5, 7, 9, 12, 16, 20, 24, 30) if 8 * n**3 <= max_atoms]
    results = {m: [] for m in SOLVERS}
    for n in sizes:
        atoms = rocksalt(n)
        charges = torch.tensor(atoms.get_initial_charges(), dtype=torch.get_default_dtype())
        for method, cls in SOLVERS.items():
            cutoff = cutoff_for(method, atoms)
            solver = cls(cutoff=cutoff, accuracy=ACCURACY)
            if method == "ewald":
                k_cut = 2 * math.pi / solver.lr_wavelength
                n_k = 4 / 3 * math.pi * k_cut**3 * atoms.get_volume() / (2 * math.pi) ** 3
                if n_k * len(atoms) > EWALD_MAX_MATRIX or len(atoms) * 4 / 3 * math.pi * cutoff**3 * len(atoms) / atoms.get_volume() > 3e7:
                    print(f"  {method:5s} N={len(atoms):7d}: skipped (k-space matrix {n_k * len(atoms):.1e} entries / real-space pairs over budget)", flush=True)
                    continue
            data = graph_data(atoms, cutoff)
            case = PluginCase(solver, data, charges)
            seconds = timed(case, repeats if len(atoms) < 30000 else 1)
            results[method].append((len(atoms), seconds, int(data.edge_index.shape[1])))
            print(f"  {method:5s} N={len(atoms):7d}: {seconds:8.3f} s  (cutoff {cutoff:.1f} Å, {data.edge_index.shape[1]} edges)", flush=True)
            del data, case
            gc.collect()
    return results


def slope(points) -> float:
    n = np.log([p[0] for p in points])
    t = np.log([p[1] for p in points])
    return float(np.polyfit(n, t, 1)[0]) if len(points) > 1 else float("nan")


def overhead(n: int, repeats: int) -> list[tuple[str, float, float]]:
    atoms = rocksalt(n)
    charges = torch.tensor(atoms.get_initial_charges(), dtype=torch.get_default_dtype())
    rows = []
    for method, cls in SOLVERS.items():
        cutoff = MESH_CUTOFF
        solver = cls(cutoff=cutoff, accuracy=ACCURACY)
        data = graph_data(atoms, cutoff)
        plugin, direct = PluginCase(solver, data, charges), TorchPMECase(solver, data, charges)
        f1, f2 = plugin(), direct()
        assert torch.allclose(f1, f2, atol=1e-4 * float(f2.abs().max())), method
        t_direct, t_plugin = [], []
        for _ in range(repeats):  # interleave to share the machine's load fluctuations fairly
            t_direct.append(timed(direct, 1, warmup=0))
            t_plugin.append(timed(plugin, 1, warmup=0))
        rows.append((method, float(np.median(t_direct)), float(np.median(t_plugin))))
    return rows


def batching(num: int, repeats: int) -> list[tuple[str, float, float, float]]:
    structures = [rocksalt(2, seed=s, strain=0.03) for s in range(num)]
    cutoff = 5.0
    graphs = [atoms_to_graph(a, cutoff) for a in structures]
    batch = Batch.from_data_list(graphs)
    singles = [Batch.from_data_list([g]) for g in graphs]
    charges = torch.tensor(np.concatenate([a.get_initial_charges() for a in structures]), dtype=torch.get_default_dtype())
    single_charges = [torch.tensor(a.get_initial_charges(), dtype=torch.get_default_dtype()) for a in structures]
    rows = []
    for method in ("ewald", "p3m"):
        solver = SOLVERS[method](cutoff=cutoff, accuracy=ACCURACY)
        batched = PluginCase(solver, batch, charges)
        loop_cases = [PluginCase(solver, d, q) for d, q in zip(singles, single_charges)]
        direct_cases = [TorchPMECase(solver, d, q) for d, q in zip(singles, single_charges)]
        t_batch = timed(batched, repeats)
        t_loop = timed(lambda: [c() for c in loop_cases], repeats)
        t_direct = timed(lambda: [c() for c in direct_cases], repeats)
        rows.append((method, t_batch, t_loop, t_direct))
    return rows


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    for method, points in results.items():
        if not points:
            continue
        n = [p[0] for p in points]
        t = [p[1] for p in points]
        ax.loglog(n, t, "o-", label=f"{method} (slope {slope(points):.2f})")
    ax.set_xlabel("atoms N")
    ax.set_ylabel("energy + forces time (s)")
    ax.set_title(f"long-range solvers on CPU ({torch.get_num_threads()} threads), accuracy {ACCURACY:g}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-atoms", type=int, default=110592)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--out", default="outputs/long_range_scaling")
    args = parser.parse_args()
    torch.set_default_dtype(torch.float32)
    print(f"torch {torch.__version__}, torch-pme {torchpme.__version__}, {torch.get_num_threads()} threads, float32")
    print("1. scaling (energy + forces)")
    results = scaling(args.max_atoms, args.repeats)
    out = Path(args.out)
    plot(results, out / "long_range_scaling.png")
    print(f"\n{'solver':<8}{'N range':>18}{'fitted slope':>14}{'time at largest N (s)':>24}")
    for method, points in results.items():
        if points:
            print(f"{method:<8}{f'{points[0][0]}-{points[-1][0]}':>18}{slope(points):>14.2f}{points[-1][1]:>24.3f}")
    print(f"plot: {out / 'long_range_scaling.png'}")
    print("\n2. plugin overhead vs torch-pme called directly (N = 4096, same full neighbour list and parameters)")
    print(f"{'solver':<8}{'torch-pme (s)':>16}{'plugin (s)':>14}{'ratio':>8}")
    for method, t_direct, t_plugin in overhead(8, max(5, args.repeats)):
        print(f"{method:<8}{t_direct:>16.4f}{t_plugin:>14.4f}{t_plugin / t_direct:>8.2f}")
    print(f"\n3. batch of {args.batch} structures (64 atoms, different cells) vs Python loops")
    print(f"{'solver':<8}{'batched (s)':>13}{'loop plugin (s)':>17}{'loop torch-pme (s)':>20}{'speed-up vs torch-pme loop':>28}")
    for method, t_batch, t_loop, t_direct in batching(args.batch, args.repeats):
        print(f"{method:<8}{t_batch:>13.4f}{t_loop:>17.4f}{t_direct:>20.4f}{t_direct / t_batch:>28.2f}")


if __name__ == "__main__":
    main()
