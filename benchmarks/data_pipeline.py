"""Data pipeline and training-epoch timing on the default dataset (issue: foundation).

Measures, in one run:
* read: parse the cached extxyz with ASE;
* neighbour lists: vesin (ours) against ASE's ``neighbor_list`` (the peer) on the same frames;
* graph build (labels + tensors) and collate (PyG batching of one epoch);
* one training epoch of the default model, split into data loading/collate and model compute;
* loading the on-disk graph cache (what every later run pays instead of read + build), and
  its key: an xxHash (XXH3-128) of the data file's bytes, paid on every cache lookup.

    python benchmarks/data_pipeline.py [--structures 240] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch


def timed(fn, repeat: int = 1):
    best = float("inf")
    result = None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--structures", type=int, default=240)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cutoff", type=float, default=5.0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("MLIP_PLUGINS_CACHE", tempfile.mkdtemp(prefix="mlip_bench_"))

    from ase.io import read
    from ase.neighborlist import neighbor_list as ase_neighbor_list

    from lightning_modules.datamodule import AtomsDataModule
    from lightning_modules.module import PotentialModule
    from mlip_plugins.data.default_dataset import default_dataset_path
    from mlip_plugins.data.fingerprint import file_fingerprint
    from mlip_plugins.data.graph_cache import build_graphs, cache_key, load_graphs, save_graphs
    from mlip_plugins.data.neighbors import neighbor_list
    from mlip_plugins.data.reading import read_structures

    t_generate, path = timed(lambda: default_dataset_path(args.structures, 0))
    t_read, frames = timed(lambda: read(path, index=":"), repeat=3)
    n_atoms = sum(len(a) for a in frames)
    t_vesin, _ = timed(lambda: [neighbor_list(a.positions, a.cell.array, a.pbc, args.cutoff) for a in frames], repeat=3)
    t_ase, _ = timed(lambda: [ase_neighbor_list("ijS", a, args.cutoff) for a in frames], repeat=3)
    t_checked_read, structures = timed(lambda: read_structures(path), repeat=1)
    t_build, graphs = timed(lambda: build_graphs(structures, args.cutoff), repeat=1)
    cache = os.path.join(os.environ["MLIP_PLUGINS_CACHE"], "bench_graphs.pt")
    save_graphs(graphs, Path(cache))
    t_cache, _ = timed(lambda: load_graphs(Path(cache)), repeat=3)
    t_key, _ = timed(lambda: cache_key(str(path), args.cutoff, {}), repeat=5)
    file_mb = os.path.getsize(path) / 1e6
    big = os.path.join(os.environ["MLIP_PLUGINS_CACHE"], "bench_64MB.bin")
    with open(big, "wb") as handle:
        handle.write(os.urandom(64 << 20))
    t_hash_big, _ = timed(lambda: file_fingerprint(big), repeat=3)
    os.remove(big)

    dm = AtomsDataModule(cutoff=args.cutoff, path=str(path), batch_size=8)
    dm.setup()
    loader = dm.train_dataloader()
    t_collate, batches = timed(lambda: list(loader), repeat=3)
    module = PotentialModule(
        model={"elements": ["Al", "Ni", "Cu", "Pd", "Ag", "Pt", "Au"], "cutoff": args.cutoff,
               "energy": {"descriptor": {"name": "radial"}, "readout": {"name": "mlp", "hidden": [32, 32]}}},
        loss={"energy": 1.0, "forces": 10.0, "stress": 0.1}, optimizer={"name": "adam", "lr": 1e-2},
    )
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-2)
    module.train()

    from lightning_modules.losses import errors, total_loss

    def epoch_compute():
        """The training step's work (forward, forces, loss, backward, Adam) without Lightning."""
        for batch in batches:
            optimizer.zero_grad()
            out = module(batch, create_graph=True)
            loss = total_loss(errors(batch, out), module.loss_weights)[0]
            loss.backward()
            optimizer.step()

    epoch_compute()  # warm-up
    t_epoch, _ = timed(epoch_compute, repeat=2)
    n_train_atoms = sum(b.num_nodes for b in batches)

    rows = [
        ("generate default dataset (EMT, first run only)", t_generate, None),
        ("read extxyz (ASE)", t_read, None),
        ("neighbour lists: vesin (ours)", t_vesin, None),
        ("neighbour lists: ASE neighbor_list (peer)", t_ase, t_ase / t_vesin),
        ("checked read (labels, geometry checks)", t_checked_read, None),
        ("graph build incl. vesin lists", t_build, None),
        ("load graph cache (later runs)", t_cache, (t_checked_read + t_build) / t_cache),
        (f"cache key: content hash of the {file_mb:.1f} MB file", t_key, None),
        ("content hash of a 64 MiB file (page cache)", t_hash_big, None),
        ("collate one epoch (PyG DataLoader)", t_collate, None),
        ("train one epoch: compute (fwd+bwd+step)", t_epoch, None),
    ]
    print(f"\n{len(frames)} structures, {n_atoms} atoms, cutoff {args.cutoff} Å, {args.threads} threads")
    print(f"{'stage':<48} {'seconds':>9} {'ratio':>8}")
    for name, seconds, ratio in rows:
        print(f"{name:<48} {seconds:>9.4f} {('%.1fx' % ratio) if ratio else '':>8}")
    data_share = t_collate / (t_collate + t_epoch)
    print(f"\nepoch = {t_collate + t_epoch:.2f} s: data {100 * data_share:.1f} %, compute {100 * (1 - data_share):.1f} %; "
          f"{n_train_atoms / t_epoch:.0f} training atoms/s")
    print("ratio column: peer time / ours (vesin vs ASE), or (read + build) / cache load")


if __name__ == "__main__":
    main()
