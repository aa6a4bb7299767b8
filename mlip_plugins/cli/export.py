"""``mlip-export <model> --format nep|pt -o <file>``: write a trained model for other codes.

    mlip-export runs/.../checkpoints/best.ckpt --format nep -o nep.txt   # GPUMD / calorine / LAMMPS (NEP_CPU)
    mlip-export runs/.../checkpoints/best.ckpt -o model.pt               # self-contained mlip-plugins model

``<model>`` is a training checkpoint (.ckpt; its EMA weights if it has them, ``--no-ema``
for the raw ones), an exported model (.pt) or a GPUMD nep.txt, recognised by content, not by
name. The output format defaults from the output name (``*.txt``, or a name starting with
``nep`` and no ``.pt``/``.ckpt`` suffix -> nep, else pt). A nep.txt needs a model whose energy
tree is a single NEP model (``{model: {name: nep}}``); E0 and the energy scale are folded in
exactly. After writing a nep.txt the file is read back and evaluated on a test structure
(and by calorine's CPUNEP when installed); the largest differences are printed.
Errors print one line and exit with status 2; nothing is written over an existing file on
error, the output may not be the input model, and its folder must exist.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
from pathlib import Path

import numpy as np
import torch

from mlip_plugins.atomic_files import sweep_stale_temporaries
from mlip_plugins.cli._errors import UsageError, cli_main
from mlip_plugins.model_files import load_model_file
from mlip_plugins.cli._options import add_threads_argument, apply_threads


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlip-export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="training checkpoint (.ckpt), exported model (.pt) or GPUMD nep.txt")
    parser.add_argument("-o", "--output", required=True, help="output file")
    parser.add_argument("--format", choices=["nep", "pt"], default=None, help="output format (default: from the output name)")
    parser.add_argument("--no-ema", action="store_true", help="export the raw weights of a checkpoint, not its EMA average")
    parser.add_argument("--no-check", action="store_true", help="skip reading the written nep.txt back")
    add_threads_argument(parser)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def output_format(output: Path) -> str:
    """The default output format of ``output``: nep for ``*.txt`` and ``nep*`` without a torch suffix."""
    if output.suffix == ".txt" or (output.name.startswith("nep") and output.suffix not in (".pt", ".ckpt")):
        return "nep"
    return "pt"


def check_output(model: Path, output: Path) -> None:
    """Refuse an output that would replace the input model, or that lies in a missing folder."""
    same = output.resolve() == model.resolve() or (output.exists() and model.exists() and os.path.samefile(output, model))
    if same:  # a hard link or a different spelling of the same path counts too
        raise UsageError(f"-o {output}: is the input model itself; write the export to another file")
    if not output.parent.is_dir():
        raise UsageError(f"-o {output}: folder {output.parent} does not exist")
    if output.is_dir():
        raise UsageError(f"-o {output}: is a directory, expected a file name")


def _test_structure(symbols: list[str], spacing: float):
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=spacing * 2**0.5, cubic=True).repeat((2, 2, 2))
    atoms.set_chemical_symbols([symbols[k % len(symbols)] for k in range(len(atoms))])
    atoms.rattle(0.05, seed=0)
    return atoms


def check_nep_file(potential, path: Path) -> dict[str, float]:
    """Max |dE|/atom and |dF| (and |dq| for a qNEP) between ``potential`` and the written file (ours, and calorine's)."""
    from ase.data import chemical_symbols

    from mlip_plugins.calculator import MLIPCalculator

    symbols = [chemical_symbols[z] for z in potential.atomic_numbers]
    atoms = _test_structure(symbols, spacing=2.6)
    reference = atoms.copy()
    reference.calc = MLIPCalculator(potential, dtype=torch.float64)
    e_ref, f_ref = reference.get_potential_energy(), reference.get_forces()
    q_ref = reference.calc.results.get("charges")  # a qNEP's charges are compared too
    checks = {}
    readers = {"mlip-plugins": lambda: MLIPCalculator.from_file(path)}
    try:
        from calorine.calculators import CPUNEP

        readers["calorine"] = lambda: CPUNEP(str(path))
    except ImportError:
        pass
    for name, make in readers.items():
        other = atoms.copy()
        other.calc = make()
        checks[f"{name}_dE_per_atom"] = abs(other.get_potential_energy() - e_ref) / len(atoms)
        checks[f"{name}_dF_max"] = float(np.abs(other.get_forces() - f_ref).max())
        if q_ref is not None:
            checks[f"{name}_dq_max"] = float(np.abs(other.calc.results["charges"] - q_ref).max())
    return checks


def run(args: argparse.Namespace) -> Path:
    output = Path(args.output)
    fmt = args.format or output_format(output)
    check_output(Path(args.model), output)
    sweep_stale_temporaries(output.parent, glob.escape(output.name))  # left by a killed export
    potential = load_model_file(args.model, use_ema=not args.no_ema)
    try:
        if fmt == "nep":
            from mlip_plugins.nep.nep_txt import write_nep

            path = write_nep(potential, output)
        else:
            from mlip_plugins.checkpoint import export_potential

            path = export_potential(potential, output)
    except OSError as exc:  # full disk, no permission: nothing was written, the temporary is gone
        raise UsageError(f"-o {output}: cannot write ({exc.strerror or exc})") from exc
    if fmt == "nep":
        print(f"wrote {path} (GPUMD nep.txt, elements {', '.join(potential.element_map.symbols)})")
        if not args.no_check:
            for key, value in check_nep_file(potential, path).items():
                print(f"  check {key}: {value:.3e}")
    else:
        print(f"wrote {path} (mlip-plugins model)")
    return path


@cli_main("mlip-export")
def main(argv: list[str] | None = None) -> int:
    """Console entry point of ``mlip-export``."""
    args = build_parser().parse_args(argv)
    apply_threads(args, "mlip-export")
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
