"""``mlip-eval <model> <data>``: metrics table, metrics JSON and parity plot for a data file."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from mlip_plugins.cli._errors import cli_main
from mlip_plugins.data.structures import LabelKeys
from mlip_plugins.elements import check_known_elements
from mlip_plugins.cli._options import add_format_argument, add_threads_argument, apply_threads
from mlip_plugins.evaluation import format_table, metrics_from_predictions, parity_plot, predict, write_json


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlip-eval", description=__doc__)
    parser.add_argument("model", help="training checkpoint (.ckpt), exported model (.pt) or GPUMD nep.txt")
    parser.add_argument("data", help="structure file ASE reads (extxyz, .db, ...)")
    parser.add_argument("-o", "--output-dir", default=None, help="where metrics.json and parity.png go (default: beside the data, named after it)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--energy-key", default="energy")
    parser.add_argument("--forces-key", default="forces")
    parser.add_argument("--stress-key", default="stress")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    parser.add_argument("--on-error", choices=["raise", "skip"], default="raise")
    parser.add_argument("--uncertainty", default=None, metavar="FILE",
                        help="a Fisher uncertainty model (mlip-fim ... --save-uncertainty FILE): also report how well "
                             "its predicted std ranks the actual errors (Spearman) and the coverage")
    add_format_argument(parser)
    add_threads_argument(parser)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def run(args: argparse.Namespace) -> dict:
    from mlip_plugins.data.loading import load_graph_file
    from mlip_plugins.calculator import MLIPCalculator

    calc = MLIPCalculator.from_file(args.model, dtype=args.dtype)
    potential = calc.potential
    keys = LabelKeys(energy=args.energy_key, forces=args.forces_key, stress=args.stress_key)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(potential.e0.dtype)
    try:
        graphs = load_graph_file(args.data, potential.cutoff, keys, file_format=args.data_format, on_error=args.on_error,
                                 use_cache=False)
    finally:
        torch.set_default_dtype(previous)
    check_known_elements(graphs, potential.atomic_numbers)
    pred = predict(potential, graphs, batch_size=args.batch_size)
    metrics = metrics_from_predictions(pred)
    if args.uncertainty:
        from mlip_plugins.uncertainty import FisherUncertainty

        assessment = FisherUncertainty.load(args.uncertainty).assess(potential, graphs)
        metrics.update({f"uncertainty_{k}": v for k, v in assessment.items()})
    out_dir = Path(args.output_dir) if args.output_dir else Path(f"{os.path.splitext(args.data)[0]}_eval")
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json({"model": str(args.model), "data": str(args.data), **metrics}, out_dir / "metrics.json")
    parity_plot(pred, out_dir / "parity.png", title=f"{Path(args.model).name} on {Path(args.data).name}")
    print(format_table(metrics, f"{args.data}: {len(graphs)} structures"))
    extra = {k: v for k, v in metrics.items() if k.startswith("uncertainty")}
    for key, value in extra.items():
        print(f"{key}: {value}")
    print(f"wrote {out_dir / 'metrics.json'} and {out_dir / 'parity.png'}")
    return metrics


@cli_main("mlip-eval")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    apply_threads(args, "mlip-eval")
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
