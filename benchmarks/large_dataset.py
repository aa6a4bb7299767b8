"""Datasets beyond memory: build a graph store of N structures and train from it (issue 19).

    python benchmarks/large_dataset.py --structures 4000 --workers 1 2
    python benchmarks/large_dataset.py --structures 40000 --workers 2 --steps 200
    python benchmarks/large_dataset.py --structures 1000000 --workers 2 --steps 0   # build only

1. generates N small structures (4-atom fcc cells of two species, strained and rattled; 4·r³ atoms
   with ``--repeat r``) labelled
   with a vectorised Lennard-Jones reference (energy, forces; periodic images summed exactly)
   and writes them as extxyz;
2. builds the store once per ``--workers`` value (a fresh store and a fresh process each):
   structures/s and the peak memory of the build (the process and its workers);
3. trains ``--steps`` steps of the default model from the store (``data.store``) through
   ``run_training`` in a fresh process: its peak memory and the data-loading share of a step
   (time spent in the training DataLoader, making its iterator each epoch and fetching each
   batch, over the wall time of the steps, after 10 warm-up steps); also the time between
   steps (end of one to the start of the next), which adds Lightning's own work, such as the
   epoch-end checkpoint, to the data loading.

Memory is sampled every 0.2 s over the process and its children: ``rss`` sums their resident
sets (pages shared between them, such as the mapped store files or the libraries of spawned
workers, count once per process), ``pss`` shares them out (the memory actually used).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

SIGMA = {"Cu": 2.34, "Ni": 2.28}
EPSILON = {"Cu": 0.41, "Ni": 0.52}
E_ATOM = {"Cu": -3.5, "Ni": -4.4}  # per-atom offsets, so the E0 fit has something to find
LATTICE = 3.6
LJ_CUTOFF = 6.0


class PeakMemory:
    """Peak RSS and PSS (MB) of this process and its children, sampled in a thread."""

    def __init__(self, interval: float = 0.2):
        import psutil

        self.process, self.interval = psutil.Process(), interval
        self.rss = self.pss = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        rss = pss = 0.0
        for process in [self.process, *self.process.children(recursive=True)]:
            try:
                info = process.memory_full_info()
            except Exception:  # noqa: BLE001 - a child that just ended
                continue
            rss, pss = rss + info.rss, pss + getattr(info, "pss", info.rss)
        self.rss, self.pss = max(self.rss, rss / 2**20), max(self.pss, pss / 2**20)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            time.sleep(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


# -- 1. the data set ----------------------------------------------------------------------------
def _images(height: float) -> np.ndarray:
    """Integer cell offsets reaching LJ_CUTOFF for a cell whose lattice planes are ``height`` apart."""
    reach = int(np.ceil(LJ_CUTOFF / height))
    grid = np.arange(-reach, reach + 1)
    return np.stack(np.meshgrid(grid, grid, grid, indexing="ij"), -1).reshape(-1, 3).astype(float)


def lennard_jones(positions: np.ndarray, cell: np.ndarray, sigma: np.ndarray, epsilon: np.ndarray, images: np.ndarray):
    """Energies [B] and forces [B, n, 3] of B periodic cells of n atoms (shifted LJ, Lorentz-Berthelot),
    summed over the cell offsets ``images``."""
    offsets = np.einsum("ks,bsc->bkc", images, cell)                              # [B, K, 3]
    rij = positions[:, None, :, None] - positions[:, :, None, None] + offsets[:, None, None]  # [B, i, j, K, 3]
    r = np.linalg.norm(rij, axis=-1)
    s = 0.5 * (sigma[:, :, None] + sigma[:, None, :])[..., None]
    e = np.sqrt(epsilon[:, :, None] * epsilon[:, None, :])[..., None]
    inside = (r < LJ_CUTOFF) & (r > 1e-8)
    r_safe = np.where(inside, r, 1.0)
    sr6 = (s / r_safe) ** 6
    shift = (s / LJ_CUTOFF) ** 6
    pair = np.where(inside, 4 * e * (sr6 * sr6 - sr6 - (shift * shift - shift)), 0.0)
    energy = 0.5 * pair.sum(axis=(1, 2, 3))
    dvdr = np.where(inside, 4 * e * (-12 * sr6 * sr6 + 6 * sr6) / r_safe, 0.0)
    forces = (dvdr[..., None] * rij / r_safe[..., None]).sum(axis=(2, 3))      # on atom i from all j
    return energy, forces


def write_dataset(path: Path, n_structures: int, repeat: int = 1, seed: int = 0) -> None:
    """``n_structures`` labelled fcc cells of 4·repeat³ atoms as extxyz, written chunk by chunk (flat memory)."""
    rng = np.random.default_rng(seed)
    cube = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    basis = np.concatenate([cube + shift for shift in np.ndindex(repeat, repeat, repeat)]) / repeat  # fractional
    n = len(basis)
    images = _images(0.9 * repeat * LATTICE)
    chunk = max(10, int(2.5e7 // (n * n * len(images) * 3)))  # ~200 MB per temporary array
    species = np.array(list(SIGMA))
    with open(path, "w") as handle:
        for start in range(0, n_structures, chunk):
            b = min(chunk, n_structures - start)
            strain = rng.uniform(-0.03, 0.03, size=(b, 3, 3))
            cell = repeat * LATTICE * (np.eye(3) + 0.5 * (strain + strain.transpose(0, 2, 1)))
            positions = np.einsum("ns,bsc->bnc", basis, cell) + rng.normal(scale=0.1, size=(b, n, 3))
            symbols = species[rng.integers(0, 2, size=(b, n))]
            sigma = np.vectorize(SIGMA.get)(symbols)
            epsilon = np.vectorize(EPSILON.get)(symbols)
            energy, forces = lennard_jones(positions, cell, sigma, epsilon, images)
            energy = energy + np.vectorize(E_ATOM.get)(symbols).sum(1)
            lines = []
            for k in range(b):
                lattice = " ".join(f"{x:.8f}" for x in cell[k].reshape(-1))
                lines.append(f"{n}\nLattice=\"{lattice}\" Properties=species:S:1:pos:R:3:forces:R:3 "
                             f"energy={energy[k]:.10f} pbc=\"T T T\"\n")
                for i in range(n):
                    p, f = positions[k, i], forces[k, i]
                    lines.append(f"{symbols[k, i]} {p[0]:.8f} {p[1]:.8f} {p[2]:.8f} {f[0]:.8f} {f[1]:.8f} {f[2]:.8f}\n")
            handle.write("".join(lines))


# -- 2. / 3. the phases, each in a fresh process --------------------------------------------------
def phase_build(args) -> dict:
    from mlip_plugins.data.store.build import build_store

    with PeakMemory() as memory:
        start = time.perf_counter()
        manifest = build_store(args.store, [args.source], args.cutoff, workers=args.workers[0], progress=args.progress)
        seconds = time.perf_counter() - start
    return {"structures": manifest["structures"], "seconds": seconds, "structures_per_s": manifest["structures"] / seconds,
            "peak_rss_mb": memory.rss, "peak_pss_mb": memory.pss, "summary": manifest["summary"]}


class StepTimer:
    """Lightning callback (duck-typed: the build's spawned workers need not import Lightning): the
    wall time of the steps after ``warmup`` (start of the first measured step to the end of the
    last), the time between steps (end of one to the start of the next: data loading plus
    Lightning's own work, the epoch-end checkpoint included) and, through :meth:`watch_loader`,
    the time spent in the training DataLoader (its iterator made each epoch and each batch
    fetched), which is what waiting for data costs a step."""

    def __init__(self, warmup: int = 10):
        self.warmup, self.steps = warmup, 0
        self.loading = self.between = 0.0
        self._first = self._last_end = None

    @property
    def measuring(self) -> bool:
        return self._first is not None

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        now = time.perf_counter()
        if self.steps == self.warmup:
            self._first = now
        elif self.measuring:
            self.between += now - self._last_end

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self._last_end = time.perf_counter()
        self.steps += 1

    def result(self) -> dict:
        measured = max(self.steps - self.warmup, 1)
        total = self._last_end - self._first if self.measuring else float("nan")
        return {"steps": self.steps, "step_ms": 1e3 * total / measured, "data_ms": 1e3 * self.loading / measured,
                "data_share": self.loading / total, "between_ms": 1e3 * self.between / measured,
                "between_share": self.between / total}

    def watch_loader(self) -> None:
        """Add the time of the training loader's ``iter()`` and ``next()`` (the loader whose
        sampler is an ``EpochSeededSampler``) to ``loading`` while measuring."""
        from torch.utils.data import DataLoader
        from torch.utils.data.dataloader import _BaseDataLoaderIter

        from lightning_modules.datamodule import EpochSeededSampler

        def timed(method, is_training):
            def wrapper(this):
                start = time.perf_counter()
                try:
                    return method(this)
                finally:
                    if self.measuring and is_training(this):
                        self.loading += time.perf_counter() - start
            return wrapper

        DataLoader.__iter__ = timed(DataLoader.__iter__, lambda loader: isinstance(loader.sampler, EpochSeededSampler))
        _BaseDataLoaderIter.__next__ = timed(
            _BaseDataLoaderIter.__next__, lambda it: isinstance(getattr(it._index_sampler, "sampler", None), EpochSeededSampler))


def phase_train(args) -> dict:
    from hydra import compose, initialize_config_module

    from lightning.pytorch import Callback

    import lightning_modules.train as train

    timer = type("TimerCallback", (StepTimer, Callback), {})()
    timer.watch_loader()
    original = train.build_callbacks
    train.build_callbacks = lambda cfg: original(cfg) + [timer]
    data = [f"data.store={args.store}"] if args.store else [f"data.path={args.source}", "data.cache=false"]
    overrides = [*data, f"data.batch_size={args.batch_size}", f"data.num_workers={args.loader_workers}",
                 f"+trainer.max_steps={args.steps}", "trainer.max_epochs=1000", "trainer.enable_progress_bar=false",
                 f"model.cutoff={args.cutoff}", "logger=[]", "callbacks=[]", f"run_dir={args.run_dir}", "e0=fit",
                 "+trainer.limit_val_batches=0", "data.val_fraction=0.02", "data.test_fraction=0.0"]
    with PeakMemory() as memory:
        start = time.perf_counter()
        with initialize_config_module("mlip_plugins.conf", version_base=None):
            train.run_training(compose("train", overrides=overrides))
        seconds = time.perf_counter() - start
    return {**timer.result(), "seconds": seconds, "peak_rss_mb": memory.rss, "peak_pss_mb": memory.pss}


def run_phase(argv: list[str]) -> dict:
    result = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"phase {argv[:2]} failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--structures", type=int, default=4000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="build worker counts to measure")
    parser.add_argument("--steps", type=int, default=200, help="training steps (0: build only)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--loader-workers", type=int, default=0, help="DataLoader num_workers of the training")
    parser.add_argument("--cutoff", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=1, help="cells of 4·repeat³ atoms (1: 4 atoms)")
    parser.add_argument("--in-memory", action="store_true", help="also train from the extxyz in memory (today's path)")
    parser.add_argument("--workdir", default=None, help="where the data and stores go (default: a temporary folder)")
    parser.add_argument("--phase", choices=["build", "train"], help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", help=argparse.SUPPRESS)
    parser.add_argument("--progress", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.phase:
        import torch

        torch.set_num_threads(1)
        result = phase_build(args) if args.phase == "build" else phase_train(args)
        print(json.dumps(result))
        return

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="mlip_large_"))
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MLIP_PLUGINS_CACHE", str(workdir / "cache"))
    source = workdir / f"lj_{args.structures}_r{args.repeat}.xyz"
    start = time.perf_counter()
    if not source.exists():
        write_dataset(source, args.structures, args.repeat)
    print(f"{args.structures} structures ({4 * args.repeat**3} atoms, LJ reference), {source.stat().st_size / 1e6:.0f} MB extxyz, "
          f"generated in {time.perf_counter() - start:.0f} s; load: {os.getloadavg()[0]:.1f}")
    common = ["--source", str(source), "--cutoff", str(args.cutoff)]
    store = None
    for workers in args.workers:
        store = workdir / f"store_{args.structures}_r{args.repeat}_w{workers}"
        if store.exists():
            import shutil

            shutil.rmtree(store)
        built = run_phase(["--phase", "build", *common, "--store", str(store), "--workers", str(workers)])
        print(f"build, {workers} worker(s): {built['structures_per_s']:.0f} structures/s ({built['seconds']:.1f} s); "
              f"peak rss {built['peak_rss_mb']:.0f} MB, pss {built['peak_pss_mb']:.0f} MB; "
              f"{built['summary']['neighbors_per_atom']:.1f} neighbours/atom; load {os.getloadavg()[0]:.1f}")
    if args.steps and store is not None:
        flags = [*common, "--steps", str(args.steps), "--batch-size", str(args.batch_size),
                 "--loader-workers", str(args.loader_workers)]
        runs = [("store", ["--store", str(store)])] + ([("in memory", [])] if args.in_memory else [])
        for name, extra in runs:
            trained = run_phase(["--phase", "train", *flags, *extra, "--run-dir", str(workdir / f"run_{name.replace(' ', '_')}")])
            print(f"train from {name}, {trained['steps']} steps of {args.batch_size}: peak rss {trained['peak_rss_mb']:.0f} MB, "
                  f"pss {trained['peak_pss_mb']:.0f} MB; step {trained['step_ms']:.1f} ms, data loading "
                  f"{trained['data_ms']:.2f} ms = {100 * trained['data_share']:.1f} % of a step (between steps "
                  f"{trained['between_ms']:.2f} ms = {100 * trained['between_share']:.1f} %); load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
