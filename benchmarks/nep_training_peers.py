"""Time to accuracy of gradient-trained NEPs: this project, TorchNEP and neppo side by side.

Data: GPUMD's PbTe example (``gpumd_pbte/train.xyz``, 25 frames x 250 atoms, as GPUMD ships it;
GPUMD ships no test.xyz for it, so every trainer trains on all 25 frames and the judge
evaluates the same frames, as GPUMD's own 39.9 meV/Å is the train force RMSE of its loss.out).
Model: the architecture of GPUMD's nep.txt there (cutoff 8/4, n_max 6/6, basis 6/6,
l_max 4 2 0, 30 neurons), batch 4, each trainer with its own defaults for everything else
(one nep.in for all three; ours reads it through ``experiment=nep nep_in=...``).

How they run: the three trainers run in one process, each in its own thread, interleaved
(one runs at a time, for ``--slice`` seconds of its training, then the next), with the same
torch thread count (``--threads``). Each trainer's clock counts only its own running time
(set-up included: reading the data, neighbour lists, descriptor scaler). A global
``torch.optim`` step hook (the same for all three; the peers are driven through their public
training functions, never copied) pauses a trainer at the end of its slice and, each time its
clock passes a checkpoint (every ``--every`` seconds), exports its model as a nep.txt with the
trainer's own writer (export time excluded). Each trainer is configured for ``--steps`` steps
(its learning-rate schedule spans them) and ends on its own, or is stopped at ``--budget``
seconds; its final model is exported too. Afterwards calorine's CPUNEP (GPUMD's C++ NEP) evaluates every exported
file on the frames: the table gives the force RMSE at equal wall times, the time each needs
to reach GPUMD's SNES result (39.9 meV/Å after 20,000 generations) and the ratio to the faster
peer. Peers: ``pip install -c constraints.txt -e .[bench]`` (TorchNEP is GPL-3, neppo MPL-2:
benchmark dependencies only).

    python benchmarks/nep_training_peers.py [--threads 1] [--steps 2100] [--budget 200] [--only ours]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

DATASET = Path(os.environ.get("MLIP_DATASETS", Path(__file__).resolve().parents[1].parent / "shared" / "datasets")) / "gpumd_pbte"
#: GPUMD's SNES result on this set (its loss.out after 20,000 generations): train force RMSE
SNES_FORCE_RMSE = 0.0399
ARCHITECTURE = """type 2 Te Pb
cutoff 8 4
n_max 6 6
basis_size 6 6
l_max 4 2 0
neuron 30
batch 4
"""


class Finished(BaseException):
    """Raised from the step hook to end a trainer's run (a BaseException, so that no peer's
    ``except Exception`` swallows it)."""


class Runner:
    """One trainer in its own thread; the step hook calls :meth:`after_step` after each step."""

    def __init__(self, name: str, train, export, args, out: Path):
        self.name, self._train, self._export, self.args = name, train, export, args
        self.out = out / name
        self.out.mkdir(parents=True, exist_ok=True)
        self.elapsed, self.steps, self.checkpoints, self.first_step = 0.0, 0, [], None
        self.next_checkpoint = args.every
        self.model = None  # set by the trainer function once its model exists
        self.error: BaseException | None = None
        self.done = False
        self._go, self._paused = threading.Event(), threading.Event()
        self._resumed = 0.0
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    # -- the scheduler's side ----------------------------------------------------------------
    def run_slice(self) -> None:
        """Let the trainer run for one slice; returns when it pauses or ends."""
        self._paused.clear()
        if not self.thread.is_alive() and not self.done:
            self._resumed = time.perf_counter()
            self.thread.start()
        else:
            self._go.set()
        self._paused.wait()

    # -- the trainer's side ------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._train(self)  # returns after its last step and its own end of run
            self._clock()
            self.export(self.elapsed)  # what the trainer hands its user (neppo folds the energy shift here)
        except Finished:
            pass
        except BaseException as exc:  # reported by the scheduler
            self.error = exc
        finally:
            self._clock()
            self.done = True
            self._paused.set()

    def _clock(self) -> float:
        now = time.perf_counter()
        self.elapsed += now - self._resumed
        self._resumed = now
        return now

    def after_step(self) -> None:
        self.steps += 1
        self._clock()
        if self.steps == 1:
            self.first_step = self.elapsed
        while self.elapsed >= self.next_checkpoint:
            self.export(self.next_checkpoint)
            self.next_checkpoint += self.args.every
        # out of time; or, for ours, the last step (what run_training does afterwards is its
        # final report: metrics on the training set, a parity plot)
        if self.elapsed >= self.args.budget or (self.name == "ours" and self.steps >= self.args.steps):
            self.export(self.elapsed)
            raise Finished
        if self.elapsed - self._slice_start >= self.args.slice:
            self._paused.set()
            self._go.wait()
            self._go.clear()
            self._slice_start = self.elapsed
            self._resumed = time.perf_counter()

    _slice_start = 0.0

    def export(self, at: float) -> None:
        path = self.out / f"nep_{len(self.checkpoints):03d}.txt"
        self._export(self, path)
        self.checkpoints.append({"seconds": round(at, 3), "step": self.steps, "path": str(path)})
        self._resumed = time.perf_counter()  # the export is not training time


_RUNNERS: dict[threading.Thread, Runner] = {}


def _step_hook(optimizer, args, kwargs) -> None:
    runner = _RUNNERS.get(threading.current_thread())
    if runner is not None:
        runner.after_step()


# -- the three trainers ----------------------------------------------------------------------
def train_ours(runner: Runner) -> None:
    """``mlip-train experiment=nep nep_in=nep.in`` on all frames, without per-epoch validation
    or checkpoints (the peers do neither)."""
    from hydra import compose, initialize_config_module

    from lightning_modules import module as module_lib
    from lightning_modules.train import run_training

    original = module_lib.PotentialModule.setup

    def capture(self, stage):  # the module Lightning trains, for the exports
        runner.model = self
        return original(self, stage)

    module_lib.PotentialModule.setup = capture
    try:
        overrides = [
            "experiment=nep", f"nep_in={runner.args.nep_in}", f"data.path={DATASET / 'train.xyz'}",
            "data.val_fraction=0", "data.test_fraction=0", f"run_dir={runner.out / 'run'}",
            f"threads={runner.args.threads}", "trainer.limit_val_batches=0", "trainer.enable_progress_bar=false",
            "trainer.enable_checkpointing=false",
            "~callbacks.checkpoint", "~callbacks.last", "~callbacks.lr_monitor", "~callbacks.gpumd_outputs",
            f"seed={runner.args.seed}",
        ] + list(runner.args.ours)
        with initialize_config_module(config_module="mlip_plugins.conf", version_base=None):
            cfg = compose(config_name="train", overrides=overrides)
        run_training(cfg)
    finally:
        module_lib.PotentialModule.setup = original


def export_ours(runner: Runner, path: Path) -> None:
    from mlip_plugins.nep.nep_txt import write_nep

    write_nep(runner.model.eval_model, path)


def train_torchnep(runner: Runner) -> None:
    """TorchNEP's ``train_nep`` (analytic forces, its default schedule), eager on the CPU."""
    from torchnep import model as tn_model
    from torchnep.train import train_nep

    original = tn_model.NEPModel.__init__

    def capture(self, *a, **k):
        original(self, *a, **k)
        runner.model = self

    tn_model.NEPModel.__init__ = capture
    try:
        train_nep(str(runner.args.torchnep_in), str(DATASET / "train.xyz"), output_dir=str(runner.out / "run"),
                  device="cpu", print_interval=10**9, checkpoint_interval=10**9, prediction_interval=0,
                  run_seed=runner.args.seed, use_compile=False)
    finally:
        tn_model.NEPModel.__init__ = original


def export_torchnep(runner: Runner, path: Path) -> None:
    runner.model.save_nep_txt(str(path), 200, 100)


def train_neppo(runner: Runner) -> None:
    """neppo's ``Trainer`` built as ``neppo train`` builds it from nep.in (its defaults)."""
    from ase.io import read
    from neppo import StructureContainer
    from neppo.nep_in import get_loss, get_model, get_stages, read_nep_in
    from neppo.trainer import Trainer

    settings = read_nep_in(runner.args.nep_in)
    torch.manual_seed(runner.args.seed)
    stage = get_stages(settings)[0]
    model = get_model(settings, runner.args.nep_in.parent)
    runner.model = model
    container = StructureContainer(model, read(DATASET / "train.xyz", ":"))
    trainer = Trainer(model, get_loss(stage, has_bec=False), container, batch_size=int(settings["batch"][0]),
                      learning_rate=tuple(float(v) for v in stage["learning_rate"]),
                      weight_decay=float(stage["weight_decay"][0]), device="cpu", seed=runner.args.seed)
    trainer.train(steps=runner.args.steps, report_interval=runner.args.steps)


def export_neppo(runner: Runner, path: Path) -> None:
    from neppo.io import write_model

    write_model(runner.model, path)


TRAINERS = {"ours": (train_ours, export_ours), "torchnep": (train_torchnep, export_torchnep), "neppo": (train_neppo, export_neppo)}


# -- the judge -------------------------------------------------------------------------------
def judge(path: str, frames) -> tuple[float, float]:
    """(force RMSE eV/Å, energy RMSE eV/atom) of a nep.txt by calorine's CPUNEP on ``frames``."""
    from calorine.calculators import CPUNEP

    calc = CPUNEP(path)
    sq_f, n_f, de = 0.0, 0, []
    for atoms in frames:
        a = atoms.copy()
        a.calc = calc
        diff = a.get_forces() - atoms.arrays["forces"]
        sq_f, n_f = sq_f + float((diff**2).sum()), n_f + diff.size
        de.append((a.get_potential_energy() - atoms.info["energy"]) / len(a))
    return math.sqrt(sq_f / n_f), float(np.sqrt(np.mean(np.square(de))))


def at_time(curve: list[dict], seconds: float) -> dict | None:
    """The last checkpoint at or before ``seconds``."""
    best = None
    for point in curve:
        if point["seconds"] <= seconds + 1e-9:
            best = point
    return best


def time_to(curve: list[dict], target: float) -> float | None:
    return next((p["seconds"] for p in curve if p["force_rmse"] <= target), None)


def table(curves: dict[str, list[dict]], every: float, speed: dict[str, str]) -> str:
    names = list(curves)
    end = max(p["seconds"] for c in curves.values() for p in c)
    marks = [t for t in (10, 20, 30, 45, 60, 80, 100, 120, 150, 200, 250, 300, 400, 500, 600) if t <= end + every]
    lines = ["| wall time (s) | " + " | ".join(f"{n}: force RMSE (meV/Å)" for n in names) + " |",
             "|---:|" + "---:|" * len(names)]
    for t in marks:
        cells = []
        for n in names:
            p = at_time(curves[n], t)
            cells.append(f"{1000 * p['force_rmse']:.1f} (step {p['step']})" if p else "-")
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    reach = {n: time_to(curves[n], SNES_FORCE_RMSE) for n in names}
    lines.append(f"| **time to {1000 * SNES_FORCE_RMSE:.1f} meV/Å** | "
                 + " | ".join(f"{reach[n]:.0f} s" if reach[n] is not None else "not reached" for n in names) + " |")
    final = {n: curves[n][-1] for n in names}
    lines.append("| final (s, step, force, energy) | " + " | ".join(
        f"{final[n]['seconds']:.0f} s, {final[n]['step']}, {1000 * final[n]['force_rmse']:.1f} meV/Å, "
        f"{1000 * final[n]['energy_rmse']:.2f} meV/atom" for n in names) + " |")
    lines.append("| set-up; ms per step after it | " + " | ".join(speed[n] for n in names) + " |")
    text = "\n".join(lines)
    peers = [reach[n] for n in names if n != "ours" and reach[n] is not None]
    if "ours" in reach and peers:
        if reach["ours"] is not None:
            text += f"\n\nfaster peer reaches {1000 * SNES_FORCE_RMSE:.1f} meV/Å in {min(peers):.0f} s; ours in {reach['ours']:.0f} s: ratio {min(peers) / reach['ours']:.2f}x (goal >= 1.5x)"
        else:
            text += f"\n\nfaster peer reaches {1000 * SNES_FORCE_RMSE:.1f} meV/Å in {min(peers):.0f} s; ours does not within the budget"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads, the same for every trainer")
    parser.add_argument("--steps", type=int, default=2100, help="training steps (batches) per trainer, as in the issue")
    parser.add_argument("--budget", type=float, default=300.0, help="wall seconds per trainer (training clock)")
    parser.add_argument("--every", type=float, default=5.0, help="seconds between exported checkpoints")
    parser.add_argument("--slice", type=float, default=2.0, help="seconds each trainer runs before the next one's turn")
    parser.add_argument("--only", nargs="*", default=list(TRAINERS), choices=list(TRAINERS))
    parser.add_argument("--ours", nargs="*", default=[], help="extra Hydra overrides for our trainer")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="outputs/nep_training_peers")
    args = parser.parse_args()
    if not (DATASET / "train.xyz").exists():
        raise SystemExit(f"nep_training_peers: {DATASET / 'train.xyz'} not found (set MLIP_DATASETS)")
    os.environ.setdefault("WANDB_MODE", "offline")
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(args.threads)
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    work = Path(tempfile.mkdtemp(prefix="nep_peers_", dir=out))
    args.nep_in = work / "nep.in"
    # one nep.in: GPUMD's keywords; neppo and ours read `generation`, TorchNEP `epoch` (its
    # epochs drop no batch: ceil(25 / 4) = 7 steps each)
    args.nep_in.write_text(ARCHITECTURE + f"generation {args.steps}\n")
    args.torchnep_in = work / "torchnep.in"
    args.torchnep_in.write_text(ARCHITECTURE + f"epoch {math.ceil(args.steps / 7)}\n")

    load = os.getloadavg()
    register_optimizer_step_post_hook(_step_hook)
    runners = [Runner(name, *TRAINERS[name], args, out) for name in args.only]
    for r in runners:
        _RUNNERS[r.thread] = r
    start = time.perf_counter()
    while not all(r.done for r in runners):
        for r in runners:
            if not r.done:
                r.run_slice()
    wall = time.perf_counter() - start
    load_end = os.getloadavg()
    for r in runners:
        if r.error is not None:
            raise RuntimeError(f"{r.name} failed") from r.error

    from ase.io import read

    frames = read(DATASET / "train.xyz", ":", format="gpumd-xyz")
    curves = {}
    for r in runners:
        for point in r.checkpoints:
            point["force_rmse"], point["energy_rmse"] = judge(point["path"], frames)
        curves[r.name] = r.checkpoints
    speed = {r.name: f"{r.first_step:.1f} s; {1000 * (r.elapsed - r.first_step) / max(r.steps - 1, 1):.0f} ms" for r in runners}
    text = table(curves, args.every, speed)
    header = (f"PbTe (25 x 250 atoms), NEP4 8/4 6/6 6/6 4 2 0 30, batch 4, {args.threads} thread(s), {args.steps} steps or "
              f"{args.budget:.0f} s each, interleaved ({args.slice:.0f} s slices); judged by calorine CPUNEP; "
              f"load average {load[0]:.1f} at start, {load_end[0]:.1f} at end; {wall:.0f} s in all")
    print(header + "\n\n" + text)
    (out / "table.md").write_text(header + "\n\n" + text + "\n")
    (out / "results.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "curves": curves,
                                                  "load": [load, load_end]}, indent=1))
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
