"""Command-line options every ``mlip-*`` command shares: ``--threads`` and ``--format``.

One definition, so the flags read and behave the same everywhere (and as ``threads=`` and
``data.file_format=`` in ``mlip-train``).
"""

from __future__ import annotations

import argparse
import sys

from mlip_plugins.threads import ThreadChoice, set_threads


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="torch CPU threads (default: OMP_NUM_THREADS, SLURM_CPUS_PER_TASK or the affinity mask; "
                             "see mlip_plugins.threads)")


def add_format_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", dest="data_format", default=None, metavar="FORMAT",
                        help="ASE format of the data file (e.g. extxyz, gpumd-xyz; default: GPUMD's train.xyz "
                             "conventions are detected from the header, else ASE chooses by the file name)")


def apply_threads(args: argparse.Namespace, prog: str) -> ThreadChoice:
    """Set torch's threads from ``args.threads`` and print the choice in one line on stderr."""
    choice = set_threads(getattr(args, "threads", None))
    print(f"{prog}: {choice.describe()}", file=sys.stderr)
    return choice
