"""``mlip-eval <model> <data>``: metrics table, metrics JSON and parity plot for a data file."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


from mlip_plugins.cli._errors import cli_main
from mlip_plugins.data.structures import LabelKeys
from mlip_plugins.dtypes import default_dtype
from mlip_plugins.elements import check_known_elements
from mlip_plugins.cli._options import add_format_argument, add_threads_argument, apply_threads
from mlip_plugins.evaluation import format_table, metrics_from_predictions, parity_plot, predict, select_structures, write_json


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlip-eval", description=__doc__)
    parser.add_argument("model", help="training checkpoint (.ckpt), exported model (.pt) or GPUMD nep.txt")
    parser.add_argument("data", help="structure file ASE reads (extxyz, .db, ...)")
    parser.add_argument("-o", "--output-dir", default=None,
                        help="where metrics.json and parity.png go (default: a new folder beside the data, named "
                             "after it: <data>_eval, or <data>_eval-2, -3, ... where that one exists; an earlier "
                             "evaluation is never replaced)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--energy-key", default="energy")
    parser.add_argument("--forces-key", default="forces")
    parser.add_argument("--stress-key", default="stress")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    parser.add_argument("--on-error", choices=["raise", "skip"], default="raise")
    parser.add_argument("--uncertainty", default=None, metavar="FILE",
                        help="a Fisher uncertainty model (mlip-fim ... --save-uncertainty FILE): also report how well "
                             "its predicted std ranks the actual errors (Spearman) and the coverage")
    parser.add_argument("--group-by", default=None, metavar="KEY",
                        help="also report the errors per value of this per-structure info key (e.g. config_type: "
                             "where a model's error comes from)")
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
    with default_dtype(potential.e0.dtype):
        graphs = load_graph_file(args.data, potential.cutoff, keys, file_format=args.data_format, on_error=args.on_error,
                                 use_cache=False)
    check_known_elements(graphs, potential.atomic_numbers)
    pred = predict(potential, graphs, batch_size=args.batch_size)
    metrics = metrics_from_predictions(pred)
    if args.uncertainty:
        from mlip_plugins.uncertainty import FisherUncertainty

        assessment = FisherUncertainty.load(args.uncertainty).assess(potential, graphs)
        metrics.update({f"uncertainty_{k}": v for k, v in assessment.items()})
    groups = group_metrics(pred, group_values(args, len(graphs))) if args.group_by else None
    out_dir = Path(args.output_dir) if args.output_dir else default_output_dir(args.data)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json({"model": str(args.model), "data": str(args.data), **metrics,
                **({"groups": {"key": args.group_by, **groups}} if groups else {})}, out_dir / "metrics.json")
    parity_plot(pred, out_dir / "parity.png", title=f"{Path(args.model).name} on {Path(args.data).name}")
    print(format_table(metrics, f"{args.data}: {len(graphs)} structures"))
    if groups:
        print(format_group_table(groups, args.group_by))
    extra = {k: v for k, v in metrics.items() if k.startswith("uncertainty")}
    for key, value in extra.items():
        print(f"{key}: {value}")
    print(f"wrote {out_dir / 'metrics.json'} and {out_dir / 'parity.png'}")
    return metrics


def default_output_dir(data: str | os.PathLike) -> Path:
    """``<data without suffix>_eval`` beside the data file, or the first of ``_eval-2``, ``_eval-3``, ...
    that does not exist yet: evaluating another model on the same file keeps the earlier results."""
    base = f"{os.path.splitext(os.fspath(data))[0]}_eval"
    candidate, number = Path(base), 1
    while candidate.exists():
        number += 1
        candidate = Path(f"{base}-{number}")
    return candidate


def group_values(args: argparse.Namespace, count: int) -> list[str]:
    """The ``--group-by`` info value of every structure of the data file, in file order."""
    from ase.io import iread

    from mlip_plugins.cli._errors import UsageError
    from mlip_plugins.data.structures import DataError

    if args.data_format:
        raise UsageError(f"{args.data}: --group-by reads structure info through ASE; not with --format {args.data_format}")
    values = [str(atoms.info.get(args.group_by, "(none)")) for atoms in iread(args.data, index=":")]
    if len(values) != count:
        raise DataError(f"{args.data}: --group-by needs every structure, but {len(values) - count} were skipped (--on-error skip)")
    return values


def group_metrics(pred: dict, values: list[str]) -> dict[str, dict]:
    """Metrics of each group of structures (``values[i]``: the group of structure i), from the
    predictions of the whole file, with the group's structure count."""
    groups: dict[str, dict] = {}
    for value in sorted(set(values)):
        members = [i for i, v in enumerate(values) if v == value]
        groups[value] = {"structures": len(members), **metrics_from_predictions(select_structures(pred, members))}
    return groups


def format_group_table(groups: dict[str, dict], key: str) -> str:
    """One line per group: structures, E MAE/RMSE (meV/atom), F MAE/RMSE (meV/Å)."""
    lines = [f"errors by {key}:", f"{key:<24} {'n':>4} {'E MAE':>9} {'E RMSE':>9} {'F MAE':>9} {'F RMSE':>9}   (meV/atom, meV/Å)"]
    for value, m in groups.items():
        cells = [f"{1000 * m[k]:9.3f}" if k in m else f"{'–':>9}" for k in ("energy_mae", "energy_rmse", "forces_mae", "forces_rmse")]
        lines.append(f"{value[:24]:<24} {m['structures']:>4} {' '.join(cells)}")
    return "\n".join(lines)


@cli_main("mlip-eval")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    apply_threads(args, "mlip-eval")
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
