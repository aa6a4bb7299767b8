"""``mlip-store``: build an on-disk graph store before training (datasets beyond memory).

    mlip-store build train.xyz --store /scratch/store --cutoff 5.0 --workers 16
    mlip-store build a.db b.xyz --store /scratch/store --cutoff 5.0 --keys energy=REF_energy,forces=REF_forces
    mlip-store info /scratch/store

then ``mlip-train data.store=/scratch/store model.cutoff=5.0`` on any number of processes and
nodes. Building once in a job step of its own (many CPUs, one task) keeps the training job's
processes from waiting for each other on the store's lock. A build that was killed resumes
where it stopped when run again with the same arguments. Errors print one line and exit with
status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from mlip_plugins.cli._errors import UsageError, cli_main
from mlip_plugins.data.store.build import DEFAULT_SHARD_SIZE, build_store
from mlip_plugins.data.store.reader import GraphStore
from mlip_plugins.data.structures import LabelKeys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlip-store", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("build", help="build (or resume) a store from structure files")
    make.add_argument("sources", nargs="+", help="files ASE reads (extxyz, ASE .db, GPUMD xyz with --format gpumd-xyz)")
    make.add_argument("--store", required=True, help="the store's folder")
    make.add_argument("--cutoff", type=float, required=True, help="neighbour-list cutoff (the model's, Å)")
    make.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes building neighbour lists")
    make.add_argument("--format", default=None, help="ASE format of the sources (default: from the names)")
    make.add_argument("--keys", default="", help="label keys as name=key,... (as data.keys of mlip-train)")
    make.add_argument("--on-error", choices=["raise", "skip"], default="raise", help="bad frames: stop, or skip them")
    make.add_argument("--no-require-energy", action="store_true", help="frames without an energy train on forces only")
    make.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE, help="structures per shard")
    make.add_argument("--debug", action="store_true", help="show tracebacks")
    info = commands.add_parser("info", help="print what a store holds")
    info.add_argument("store")
    info.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def _label_keys(text: str) -> LabelKeys:
    pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
    if any(len(pair) != 2 for pair in pairs):
        raise UsageError(f"--keys {text!r}: expected name=key,name=key")
    names = set(vars(LabelKeys()))
    unknown = sorted({name for name, _ in pairs} - names - {"extra"})
    if unknown:
        raise UsageError(f"--keys: unknown label name(s) {', '.join(unknown)} (known: {', '.join(sorted(names - {'extra'}))})")
    return LabelKeys(**{name.strip(): key.strip() for name, key in pairs})


@cli_main("mlip-store")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "build":
        manifest = build_store(args.store, args.sources, args.cutoff, _label_keys(args.keys), args.format, args.on_error,
                               not args.no_require_energy, args.workers, args.shard_size, progress=sys.stderr.isatty())
    else:
        manifest = GraphStore(args.store).manifest
    print(json.dumps({"store": os.path.abspath(args.store), "sources": manifest["sources"], "cutoff": manifest["cutoff"],
                      "shards": len(manifest["shards"]), "skipped": manifest["skipped"], **manifest["summary"]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
