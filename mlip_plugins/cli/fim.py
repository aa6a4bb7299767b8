"""``mlip-fim <checkpoint> <data>``: the Fisher-information (sloppiness) report of a trained model.

The probe set is ``--probe-size`` structures of the data file (from ``--start``); the report
(the same as the ``fisher`` training callback's) is printed as a table, and with ``-o DIR``
written as ``fisher.json`` with spectrum and attribution plots. ``--save-uncertainty FILE``
also fits the linearised uncertainty model (:mod:`mlip_plugins.uncertainty`) on the data and
saves it for ``mlip-eval`` and the ASE calculator.

Examples::

    mlip-fim runs/.../checkpoints/best.ckpt train.xyz --probe-size 16 -o fim/
    mlip-fim model.pt default --method lanczos --top-k 30
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


from mlip_plugins.cli._options import add_format_argument, add_threads_argument, apply_threads

from mlip_plugins.cli._errors import cli_main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlip-fim", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="training checkpoint (.ckpt), exported model (.pt) or GPUMD nep.txt")
    parser.add_argument("data", help="structure file ASE reads (extxyz, .db, ...), or 'default' for the embedded dataset")
    parser.add_argument("--probe-size", type=int, default=16, help="number of structures in the probe set (default 16)")
    parser.add_argument("--start", type=int, default=0, help="index of the first probe structure")
    parser.add_argument("--method", choices=("auto", "exact", "lanczos"), default="auto")
    parser.add_argument("--top-k", type=int, default=20, help="eigenpairs of the matrix-free method")
    parser.add_argument("--threshold", type=float, default=1e-6, help="relative eigenvalue below which a direction is sloppy")
    parser.add_argument("--energy-weight", type=float, default=1.0)
    parser.add_argument("--forces-weight", type=float, default=1.0)
    parser.add_argument("--stress-weight", type=float, default=1.0)
    parser.add_argument("--modes", type=int, default=5, help="stiffest/sloppiest modes to describe")
    parser.add_argument("--groups", action="store_true", help="also print the attribution per parameter group")
    parser.add_argument("-o", "--output", help="directory for fisher.json and the plots")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--save-uncertainty", metavar="FILE", help="fit the FIM uncertainty model on the data and save it")
    parser.add_argument("--uncertainty-structures", type=int, default=32,
                        help="structures (evenly spaced over the data) the uncertainty model is fitted on (default 32)")
    parser.add_argument("--ridge", type=float, default=1e-4, help="relative ridge (prior precision) of the uncertainty model")
    add_threads_argument(parser)
    add_format_argument(parser)
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    return parser


def load_probe(data: str, cutoff: float, start: int = 0, count: int | None = None, file_format: str | None = None) -> list:
    """Graphs of ``data`` (a file, or 'default') from ``start``, at most ``count`` of them."""
    from mlip_plugins.data.graph_cache import build_graphs
    from mlip_plugins.data.reading import read_structures

    if data == "default":
        from mlip_plugins.data.default_dataset import default_dataset_path

        data = str(default_dataset_path())
    stop = "" if count is None else str(start + count)
    structures = read_structures(data, index=f"{start}:{stop}", file_format=file_format)
    return build_graphs(structures, cutoff)


def format_groups(report) -> str:
    lines = [f"  {'parameter group':<48} {'params':>7} {'stiff share':>12} {'sloppy frac':>12} {'info share':>11}"]
    for g in report.groups:
        frac = "-" if g.sloppy_fraction is None else f"{g.sloppy_fraction:.4g}"
        lines.append(f"  {g.name:<48} {g.n_params:>7d} {g.stiff_share:>12.4g} {frac:>12} {g.information_share:>11.4g}")
    return "\n".join(lines)


@cli_main("mlip-fim")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    apply_threads(args, "mlip-fim")
    from mlip_plugins.fim.report import analyse
    from mlip_plugins.model_files import load_model_file

    potential = load_model_file(args.checkpoint)
    graphs = load_probe(args.data, potential.cutoff, args.start, args.probe_size, args.data_format)
    weights = {"energy": args.energy_weight, "forces": args.forces_weight, "stress": args.stress_weight}
    report = analyse(potential, graphs, weights=weights, method=args.method, sloppy_threshold=args.threshold,
                     n_modes=args.modes, top_k=args.top_k)
    report.settings.update({"checkpoint": str(args.checkpoint), "data": args.data, "start": args.start})
    if args.json:
        print(json.dumps(report.to_dict(), indent=1, default=str))
    else:
        print(report.format_table())
        if args.groups:
            print()
            print(format_groups(report))
    if args.output:
        from mlip_plugins.fim.plots import plot_attribution, plot_spectrum

        out = Path(args.output)
        report.save_json(out / "fisher.json")
        if not args.no_plots:
            plot_spectrum(report, out / "fisher_spectrum.png")
            plot_attribution(report, out / "fisher_attribution.png")
        print(f"\nwritten: {out / 'fisher.json'}" + ("" if args.no_plots else " and plots"), file=sys.stderr)
    if args.save_uncertainty:
        from mlip_plugins.uncertainty import FisherUncertainty

        all_graphs = load_probe(args.data, potential.cutoff, file_format=args.data_format)
        unc = FisherUncertainty.fit(potential, all_graphs, ridge=args.ridge, max_structures=args.uncertainty_structures)
        unc.save(args.save_uncertainty)
        print(f"uncertainty model ({unc.info['rank_kept']} directions, fitted on {unc.info['n_structures']} "
              f"structures) written to {args.save_uncertainty}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
