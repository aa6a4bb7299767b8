"""``mlip-design``: Fisher-guided adaptive model design within a trial budget.

Starts from a single-term model and reconfigures it (add or multiply a term, swap linear and
nonlinear readouts, resize a basis, remove an all-sloppy term), training every candidate
with a compact Adam trainer and judging it on held-out errors (and, with ``--eos``, the
equation of state against a reference calculator) and its Fisher information. Writes into
``--output``: ``candidates.csv``/``.md``, ``pareto.png``, ``design.json``, the Fisher report
of every trial, and the best configuration as ``best_model.yaml`` and
``conf/model/designed.yaml`` (train it with ``mlip-train --config-dir <output>/conf model=designed``).

Examples::

    mlip-design --budget 6 --epochs 15 -o design/                 # embedded EMT dataset
    mlip-design --data train.xyz --cutoff 5.5 --blocks radial,eam --budget 10
    mlip-design --data Mo_training.extxyz --test Mo_test.extxyz --max-params 100 --normalize variance
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from mlip_plugins.cli._options import add_format_argument, add_threads_argument, apply_threads

from mlip_plugins.cli._errors import UsageError, cli_main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mlip-design", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="default", help="structure file ASE reads, or 'default' (embedded EMT metals)")
    p.add_argument("--test", default=None, help="held-out structure file: every candidate's test errors are reported (never scored)")
    p.add_argument("--cutoff", type=float, default=5.0)
    p.add_argument("--elements", default="auto", help="comma-separated symbols, or 'auto' (those in the data)")
    p.add_argument("--budget", type=int, default=8, help="number of candidates trained, the start included (default 8)")
    p.add_argument("--max-minutes", type=float, default=None, help="start no new candidate after this wall time")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--final-epochs", type=int, default=None,
                   help="after the search, train the pick once more with this many epochs (one more candidate)")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--energy-weight", type=float, default=1.0, help="loss weight of the energy per atom")
    p.add_argument("--forces-weight", type=float, default=10.0, help="loss weight of the force components")
    p.add_argument("--stress-weight", type=float, default=0.0, help="loss weight of the stress")
    p.add_argument("--normalize", choices=("none", "variance"), default="none",
                   help="variance: divide each loss term by the training set's variance of its label (as experiment=dft)")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--max-structures", type=int, default=None, help="use at most this many structures (random subset)")
    p.add_argument("--probe-size", type=int, default=16, help="training structures in the Fisher probe set")
    p.add_argument("--sloppy-threshold", type=float, default=1e-6)
    p.add_argument("--blocks", default=None, help="comma-separated building blocks (radial, eam, angular); default: all installed")
    p.add_argument("--max-terms", type=int, default=3)
    p.add_argument("--max-params", type=int, default=None, help="skip candidates with more trainable parameters than this")
    p.add_argument("--hidden", type=int, default=8, help="hidden width of the nonlinear (MLP) readout")
    p.add_argument("--eos", default="auto", help="EOS reference calculator ('emt'), 'none', or 'auto' (emt for the default data)")
    p.add_argument("--score", default="energy,forces", help="properties in the score: energy, forces, stress, eos")
    p.add_argument("--tolerance", type=float, default=0.05, help="parsimony window of the best-candidate rule")
    p.add_argument("--start", default=None, help="YAML file with the start energy spec (a conf/model file or its 'energy')")
    p.add_argument("--seed", type=int, default=0)
    add_threads_argument(p)
    add_format_argument(p)
    p.add_argument("-o", "--output", default="design", help="output directory (default ./design)")
    return p


def load_graphs(data: str, cutoff: float, file_format: str | None = None) -> list:
    from mlip_plugins.data.graph_cache import build_graphs
    from mlip_plugins.data.reading import read_structures

    if data == "default":
        from mlip_plugins.data.default_dataset import default_dataset_path

        data = str(default_dataset_path())
    return build_graphs(read_structures(data, require_energy=True, file_format=file_format), cutoff)


def split(graphs: list, val_fraction: float, seed: int, max_structures: int | None) -> tuple[list, list]:
    order = np.random.default_rng(seed).permutation(len(graphs)).tolist()
    if max_structures:
        order = order[:max_structures]
    n_val = max(1, int(round(val_fraction * len(order))))
    if len(order) - n_val < 1:
        raise UsageError(f"{len(order)} structures leave nothing to train on with val_fraction={val_fraction}")
    return [graphs[i] for i in order[n_val:]], [graphs[i] for i in order[:n_val]]


def _start_spec(path: str | None) -> dict | None:
    if path is None:
        return None
    import yaml

    if not Path(path).is_file():
        raise UsageError(f"--start {path}: file not found")
    spec = yaml.safe_load(Path(path).read_text())
    if isinstance(spec, dict) and "energy" in spec:
        spec = spec["energy"]
    if not isinstance(spec, dict):
        raise UsageError(f"{path}: expected an energy spec mapping")
    return spec


@cli_main("mlip-design")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    apply_threads(args, "mlip-design")
    from mlip_plugins.data.statistics import elements_in
    from mlip_plugins.design import AdaptiveDesign, DesignLimits, DesignSettings, TrainSettings
    from mlip_plugins.design.report import write_all

    started = time.perf_counter()
    graphs = load_graphs(args.data, args.cutoff, args.data_format)
    train, val = split(graphs, args.val_fraction, args.seed, args.max_structures)
    test = load_graphs(args.test, args.cutoff, args.data_format) if args.test else []
    elements = elements_in(graphs) if args.elements == "auto" else [e.strip() for e in args.elements.split(",")]
    eos = {"auto": "emt" if args.data == "default" else None, "none": None}.get(args.eos, args.eos)
    names = {"energy": "energy_rmse", "forces": "forces_rmse", "stress": "stress_rmse", "eos": "eos_rmse"}
    unknown = [s.strip() for s in args.score.split(",") if s.strip() and s.strip() not in names]
    if unknown:
        raise UsageError(f"--score {args.score}: unknown {', '.join(unknown)} (known: {', '.join(names)})")
    score = tuple(names[s.strip()] for s in args.score.split(",") if s.strip())
    if "eos_rmse" in score and not eos:
        raise UsageError("--score eos needs an EOS reference (--eos emt)")
    settings = DesignSettings(
        budget=args.budget, max_minutes=args.max_minutes,
        train=TrainSettings(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, energy=args.energy_weight,
                            forces=args.forces_weight, stress=args.stress_weight, normalize=args.normalize, seed=args.seed),
        probe_size=args.probe_size, sloppy_threshold=args.sloppy_threshold, eos_reference=eos, score_properties=score,
        tolerance=args.tolerance, limits=DesignLimits(max_terms=args.max_terms, hidden=args.hidden, max_params=args.max_params),
        blocks=[b.strip() for b in args.blocks.split(",")] if args.blocks else None,
        start=_start_spec(args.start), seed=args.seed, final_epochs=args.final_epochs,
    )
    print(f"mlip-design: {len(train)} training / {len(val)} validation / {len(test)} test structures, elements {elements}, "
          f"cutoff {args.cutoff} Å, budget {args.budget}", flush=True)
    design = AdaptiveDesign(elements, args.cutoff, train, val, settings, log=lambda line: print(line, flush=True), test_graphs=test)
    print(f"building blocks: {', '.join(design.blocks)}", flush=True)
    design.run()
    files = write_all(design, args.output)
    best = design.best()
    print()
    print(files["markdown"].read_text())
    print(f"best: trial {best.id} {best.description} ({best.n_params} parameters, score {best.score:.3f})")
    print(f"written: {files['csv']}, {files['markdown']}, {files['pareto']}, {files['json']}")
    print(f"best config: {files['best_yaml']}  (mlip-train --config-dir {files['hydra_model'].parent.parent} model=designed)")
    print(f"wall time: {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
