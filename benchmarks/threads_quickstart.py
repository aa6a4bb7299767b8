"""Quickstart wall time with torch's default thread count ("before") and the automatic choice of
:mod:`mlip_plugins.threads` ("after"), on an idle machine and beside a competing 2-thread process.

    python benchmarks/threads_quickstart.py                 # 3 epochs, 1 repeat, 60 s competitor warm-up
    python benchmarks/threads_quickstart.py --epochs 3 --repeats 3 --competitor-threads 2

Each measurement is ``mlip-train trainer.max_epochs=E`` on the embedded demo set (generated and
cached by a first, untimed run) in a fresh process without ``OMP_NUM_THREADS``:

* before: ``threads=<torch's default>``, the count a fresh ``import torch`` takes (one per core);
* after:  no setting (the automatic choice; its start-up line is printed with the time).

The competitor is a separate process doing float32 matrix products on ``--competitor-threads``
torch threads, started ``--warmup`` seconds before the busy measurements: the automatic choice
reads the 1-minute load average, which needs about a minute to show a new job. Run it on a
machine nobody else uses at the time (the numbers are wall times of the whole command).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMPETITOR = """
import sys, torch
torch.set_num_threads(int(sys.argv[1]))
a = torch.randn(1024, 1024)
while True:
    a = torch.tanh(a @ a * 1e-3)
"""


def clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env.setdefault("WANDB_MODE", "offline")
    env.setdefault("MPLBACKEND", "Agg")
    return env


def torch_default_threads() -> int:
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"], env=clean_env(),
                         capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def train(epochs: int, run_dir: Path, extra: list[str]) -> tuple[float, str]:
    """Wall time of one mlip-train run and its thread line."""
    command = [sys.executable, "-m", "lightning_modules.train", f"trainer.max_epochs={epochs}", "logger=[]",
               "trainer.enable_progress_bar=false", f"hydra.run.dir={run_dir}", *extra]
    start = time.perf_counter()
    result = subprocess.run(command, env=clean_env(), capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"mlip-train failed:\n{result.stderr[-3000:]}")
    line = next((ln.split(" - ", 1)[-1] for ln in result.stdout.splitlines() if "torch threads" in ln), "?")
    shutil.rmtree(run_dir, ignore_errors=True)
    return wall, line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--competitor-threads", type=int, default=2)
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds the competitor runs before the busy measurements")
    args = parser.parse_args(argv)

    default = torch_default_threads()
    cases = {"before": [f"threads={default}"], "after": []}
    workdir = Path(tempfile.mkdtemp(prefix="threads_bench_"))
    print(f"torch's default: {default} threads; {os.cpu_count()} CPUs; {args.epochs} epochs, {args.repeats} repeat(s)")
    train(1, workdir / "warm", [])  # generates and caches the demo set and its graphs: not timed
    rows = []
    for load in ("idle", f"beside a {args.competitor_threads}-thread process"):
        competitor = None
        if load != "idle":
            competitor = subprocess.Popen([sys.executable, "-c", COMPETITOR, str(args.competitor_threads)], env=clean_env())
            time.sleep(args.warmup)
        try:
            for name, extra in cases.items():
                walls, line = [], ""
                for k in range(args.repeats):
                    wall, line = train(args.epochs, workdir / f"{name}{k}", extra)
                    walls.append(wall)
                rows.append((load, name, statistics.median(walls), line))
                print(f"{load:<28} {name:<7} {statistics.median(walls):8.1f} s   {line}", flush=True)
        finally:
            if competitor is not None:
                competitor.kill()
                competitor.wait()
    shutil.rmtree(workdir, ignore_errors=True)
    print("\n| load | threads | wall (s, median) | choice |\n|---|---|---|---|")
    for load, name, wall, line in rows:
        print(f"| {load} | {name} | {wall:.1f} | {line} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
