"""Angular (3-body) descriptor: per-atom moments (addition theorem) against an explicit triplet sum.

Peer: a vectorised triplet implementation of the same quantity,
q_nl(i) = (2l+1)/(4 pi) sum_{j,k in N(i)} g_n(r_ij) g_n(r_ik) P_l(cos theta_jik), that forms every
(j, k) neighbour pair of every atom (O(neighbours^2) per atom). Ours: ``AngularDescriptor``
(A_nlm = sum_j g_n Y_lm, q_nl = sum_m A_nlm^2; O(neighbours) per atom). Both share the radial
functions g_n, so the table also shows their agreement. Timings: energy + forces (forward and
backward), best of several rounds, float64, one thread, rattled fcc Cu (256 atoms), growing
cutoff so the neighbour count grows.

    python benchmarks/angular_moments_benchmark.py [--rounds 5] [--l-max 4] [--n-max 3]
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from ase.build import bulk
from torch_geometric.data import Batch

from mlip_plugins.data.structures import atoms_to_graph
from mlip_plugins.descriptors.angular import AngularDescriptor
from mlip_plugins.descriptors.harmonics import legendre_polynomials
from mlip_plugins.graph import build_atomic_graph


def triplet_angular(descriptor: AngularDescriptor, graph) -> torch.Tensor:
    """The same features as ``descriptor(graph)`` from an explicit sum over neighbour pairs."""
    g = descriptor.radial(graph)  # [E, n]
    unit = graph.edge_vec / graph.edge_len.unsqueeze(-1)
    dst = graph.edge_index[1]
    order = torch.argsort(dst, stable=True)
    g, unit, dst = g[order], unit[order], dst[order]
    counts = torch.bincount(dst, minlength=graph.num_atoms)
    starts = torch.cumsum(counts, 0) - counts
    partners = counts[dst]  # every edge pairs with all edges of its centre
    first = torch.repeat_interleave(torch.arange(len(dst)), partners)
    local = torch.arange(len(first)) - torch.repeat_interleave(torch.cumsum(partners, 0) - partners, partners)
    second = starts[dst[first]] + local
    cosine = (unit[first] * unit[second]).sum(-1)
    degrees = range(descriptor.l_min, descriptor.l_max + 1)
    legendre = legendre_polynomials(cosine, descriptor.l_max)[:, descriptor.l_min :]
    factor = torch.tensor([(2 * l + 1) / (4 * math.pi) for l in degrees], dtype=cosine.dtype)
    per_triplet = (legendre * factor).unsqueeze(-1) * (g[first] * g[second]).unsqueeze(1)  # [T, L, n]
    q = per_triplet.new_zeros(graph.num_atoms, per_triplet.shape[1] * per_triplet.shape[2])
    return q.index_add(0, dst[first], per_triplet.flatten(1)), len(first)


def best_time(fn, rounds: int) -> float:
    fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--l-max", type=int, default=4)
    parser.add_argument("--n-max", type=int, default=3)
    parser.add_argument("--cutoffs", type=float, nargs="+", default=[4.0, 5.0, 6.0, 7.0])
    args = parser.parse_args()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((4, 4, 4))
    atoms.rattle(0.05, seed=0)
    print(f"rattled fcc Cu, {len(atoms)} atoms, float64, 1 thread, l_max={args.l_max}, n_max={args.n_max}; "
          f"energy+forces time, best of {args.rounds}")
    header = f"{'cutoff':>6} {'neigh/atom':>10} {'triplets':>10} {'peer: triplet sum (ms)':>22} {'moments (ms)':>13} {'ratio':>7} {'max |diff|':>11}"
    print(header)
    print("-" * len(header))
    for cutoff in args.cutoffs:
        torch.manual_seed(0)
        descriptor = AngularDescriptor(num_species=1, cutoff=cutoff, n_max=args.n_max, basis_size=6, l_max=args.l_max)
        data = Batch.from_data_list([atoms_to_graph(atoms, cutoff)])
        species = torch.zeros(len(atoms), dtype=torch.long)
        weights = torch.randn(descriptor.dim)

        def run(function):
            def step():
                pos = data.pos.clone().requires_grad_(True)
                graph = build_atomic_graph(data, species, pos=pos)
                out = function(graph)
                features = out[0] if isinstance(out, tuple) else out
                torch.autograd.grad((features @ weights).sum(), pos)
                return features
            return step

        graph = build_atomic_graph(data, species)
        with torch.no_grad():
            ours = descriptor(graph)
            peer, n_triplets = triplet_angular(descriptor, graph)
        diff = (ours - peer).abs().max().item()
        t_peer = best_time(run(lambda g: triplet_angular(descriptor, g)), args.rounds)
        t_ours = best_time(run(descriptor), args.rounds)
        neighbours = graph.edge_index.shape[1] / len(atoms)
        print(f"{cutoff:6.1f} {neighbours:10.1f} {n_triplets:10d} {1e3 * t_peer:22.2f} {1e3 * t_ours:13.2f} "
              f"{t_peer / t_ours:7.1f} {diff:11.1e}")


if __name__ == "__main__":
    main()
