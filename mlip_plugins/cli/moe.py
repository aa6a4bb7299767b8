"""``mlip-moe``: routing statistics and PCA plot of a trained MoE model.

    mlip-moe MODEL [--data FILE | --default-data] [-o DIR] [--max-structures N]

MODEL is anything :func:`mlip_plugins.model_files.load_model_file` reads (a training
checkpoint, an exported model or a nep.txt). Element-wise routers need no data; global and feature
routers are averaged over the structures of ``--data`` (any file ASE reads) or of the
built-in seven-metal dataset (``--default-data``). The files go to ``-o DIR``, by default
beside the model: ``<run>/moe_analysis`` for ``<run>/checkpoints/*.ckpt`` (where the
``moe_analysis`` training callback writes), else ``moe_analysis/`` in the model's folder.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from torch import nn

from mlip_plugins.cli._errors import cli_main
from mlip_plugins.cli._options import add_format_argument, add_threads_argument, apply_threads


def load_model(path: str) -> nn.Module:
    """The ``Potential`` stored at ``path`` (a checkpoint, an exported model or a nep.txt)."""
    from mlip_plugins.model_files import load_model_file

    return load_model_file(path)


def load_graphs(args: argparse.Namespace, cutoff: float) -> list:
    """Graphs of ``--data`` or the default dataset (at most ``--max-structures``)."""
    from mlip_plugins.data.structures import atoms_to_graph

    if args.data:
        from mlip_plugins.data.reading import read_structures

        atoms_list = [s.atoms for s in read_structures(args.data, on_error="skip", file_format=args.data_format)]
    elif args.default_data:
        from mlip_plugins.data.default_dataset import load_default_dataset

        atoms_list = load_default_dataset()
    else:
        return []
    return [atoms_to_graph(atoms, cutoff) for atoms in atoms_list[: args.max_structures]]


def default_output_dir(model_path: str) -> Path:
    """``<run>/moe_analysis`` for a model in ``<run>/checkpoints/``, else ``moe_analysis/`` beside the model."""
    folder = Path(model_path).resolve().parent
    return (folder.parent if folder.name == "checkpoints" else folder) / "moe_analysis"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlip-moe", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="checkpoint or exported model")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--data", help="structures for data-dependent routers (any ASE-readable file)")
    source.add_argument("--default-data", action="store_true", help="use the built-in seven-metal dataset")
    parser.add_argument("-o", "--out", default=None,
                        help="output directory (default: <run>/moe_analysis for <run>/checkpoints/*.ckpt, else beside the model)")
    parser.add_argument("--max-structures", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--no-plot", action="store_true", help="skip the PCA plot")
    add_format_argument(parser)
    add_threads_argument(parser)
    return parser


@cli_main("mlip-moe")
def main(argv: Sequence[str] | None = None) -> int:
    from mlip_plugins.moe.analysis import write_moe_analysis

    args = build_parser().parse_args(argv)
    apply_threads(args, "mlip-moe")
    model = load_model(args.model)
    graphs = load_graphs(args, float(getattr(model, "cutoff", 5.0)))
    out = Path(args.out) if args.out else default_output_dir(args.model)
    summary = write_moe_analysis(model, out, graphs, args.batch_size, plot=not args.no_plot)
    if not summary["layers"]:
        print("mlip-moe: the model has no routed MoE layer (or its router needs --data)", file=sys.stderr)
        return 1
    for layer in summary["layers"]:
        print(f"{layer['layer']}: {layer['router']} ({layer['source']}), {layer['num_experts']} experts, "
              f"top-k {layer['top_k']}, {layer['num_shared']} shared")
        for element in layer["elements"]:
            print(f"  {element['symbol']:>3} (group {element['group']}): top experts {element['top_experts']}, "
                  f"gates {json.dumps([round(g, 3) for g in element['mean_gate']])}")
    print("wrote " + ", ".join(summary["files"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
