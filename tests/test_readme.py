"""Every README command and snippet runs as pasted (issue 15, item 4).

The README's ```bash and ```python blocks are extracted and run in order in one scratch folder,
so a command may use what an earlier one wrote (``mlip-fim --save-uncertainty unc.pt`` before
``mlip-eval --uncertainty unc.pt``; ``mlip-export ... -o nep.txt`` before the Python block that
loads ``nep.txt``). Placeholders are replaced by real files of tiny runs made by fixtures
(``runs/.../checkpoints/best.ckpt``, ``train.xyz``, ``path/to/nep.in``, ...), and the
```yaml block named ``myconf/model/my_model.yaml`` is written there.

* default suite: every ``mlip-train`` command composes through Hydra (as ``--cfg job`` does) and
  its model builds; every other command and every Python block runs (MD steps cut to a few);
* ``-m slow``: every ``mlip-train`` command also trains (one epoch, two batches), and
  ``mlip-design`` runs with a tiny budget.

Never run (:data:`SKIPPED`): installs, the test suite itself, GPU/SLURM/torchrun launches and
benchmarks (their own scripts time them).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BIN = Path(sys.executable).parent

#: first words of commands that are never run, and why
SKIPPED = {
    "python3": "the install line (a fresh venv)",
    ".": "the install line (activating the venv)",
    "pip": "installs",
    "pytest": "the test suite itself",
    "torchrun": "a multi-GPU launch",
    "srun": "a SLURM launch",
    "python": "benchmarks time themselves (benchmarks/*.py)",
}
#: mlip-train commands that need hardware the test machine lacks: composed, never trained
NEEDS_GPU = ("trainer=gpu",)
#: the overrides a trained README command gets (replacing its own values of these keys)
TINY_TRAINING = {"trainer.max_epochs": "1", "trainer.limit_train_batches": "2", "trainer.limit_val_batches": "1",
                 "trainer.enable_progress_bar": "false"}
#: ... where the command sets the key itself
TINY_IF_SET = {"callbacks.fisher.every_n_epochs": "1"}
#: ... where it trains on the embedded demo set
TINY_DEMO = {"data.default_dataset.n_structures": "24"}
#: mlip-design's options for a tiny loop
TINY_DESIGN = {"--budget": "2", "--epochs": "1", "--max-structures": "12"}


def readme_blocks(text: str) -> list[tuple[str, str]]:
    """(language, code) of every fenced block of ``text``, in order."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"^```(\w+)\n(.*?)^```", text, re.M | re.S)]


def bash_commands(code: str) -> list[list[str]]:
    """The commands of a bash block as argument lists: ``\\`` continuations joined, comments and
    shell-only lines (``#!``, ``#SBATCH``) dropped, ``A && B`` split, ``VAR=1 cmd`` kept whole."""
    commands = []
    for line in code.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        while words:
            cut = words.index("&&") if "&&" in words else len(words)
            if words[:cut]:
                commands.append(words[:cut])
            words = words[cut + 1 :]
    return commands


def program(words: list[str]) -> tuple[dict, list[str]]:
    """Leading ``VAR=value`` assignments and the command after them."""
    env = {}
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
        key, value = words[0].split("=", 1)
        env[key] = value
        words = words[1:]
    return env, words


class Scratch:
    """The scratch folder the README runs in and the placeholder substitutions."""

    def __init__(self, folder: Path, files: dict[str, Path]):
        self.folder = folder
        self.files = files

    def substitute(self, word: str, checkpoint: str = "ckpt") -> str:
        """``word`` with ``runs/...ckpt`` (the ``checkpoint`` run's) and ``path/to/nep.in`` made real."""
        word = re.sub(r"runs/\S*?\.ckpt", str(self.files[checkpoint]), word)
        word = word.replace("/scratch/big_store", str(self.folder / "big_store"))  # the graph-store examples
        return word.replace("path/to/nep.in", str(self.files["nep_in"]))

    def command(self, words: list[str]) -> list[str]:
        """A README command with real files; a bare ``...`` (more overrides of your own) dropped."""
        name = words[0]
        checkpoint = "moe_ckpt" if name == "mlip-moe" else "nep_ckpt" if name == "mlip-export" and "nep" in words else "ckpt"
        return [name] + [self.substitute(w, checkpoint) for w in words[1:] if w != "..."]


def _tiny(words: list[str], tiny: dict[str, str], add: bool = True) -> list[str]:
    """``words`` with the keys of ``tiny`` set to its values (replaced where present, else added if ``add``)."""
    out, seen = [], set()
    for word in words:
        key = word.split("=", 1)[0]
        if key in tiny:
            out.append(f"{key}={tiny[key]}")
            seen.add(key)
        else:
            out.append(word)
    return out + ([f"{k}={v}" for k, v in tiny.items() if k not in seen] if add else [])


def compose_train(overrides: list[str], scratch: Scratch):
    """What ``mlip-train OVERRIDES --cfg job`` composes (``-cd DIR`` as ``hydra.searchpath``), and the model built."""
    from hydra import compose, initialize_config_module

    from lightning_modules.train import apply_nep_in
    from mlip_plugins.models import build_potential

    args = []
    words = iter(overrides)
    for word in words:
        if word in ("-cd", "--config-dir"):
            args.append(f"hydra.searchpath=[file://{(scratch.folder / next(words)).resolve()}]")
        else:
            args.append(word)
    with initialize_config_module("mlip_plugins.conf", version_base=None):
        cfg = apply_nep_in(compose("train", overrides=args))
    model = dict(cfg.model)
    if model.get("elements") in (None, "auto"):
        model["elements"] = ["Na", "Cl"] if "long_range" in str(model) or "ensemble" in str(model) else ["Cu", "Au"]
    build_potential(model)
    return cfg


def run_readme(scratch: Scratch, train: bool) -> list[str]:
    """Run the README in ``scratch``; returns what was skipped (command and reason)."""
    text = README.read_text()
    skipped = []
    quickstart = None  # the trained plain `mlip-train`: what the README's resume line resumes
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "MPLBACKEND": "Agg", "WANDB_MODE": "offline"}
    for language, code in readme_blocks(text):
        if language == "yaml":
            first = code.splitlines()[0]
            if first.startswith("# ") and first.endswith(".yaml"):
                target = scratch.folder / first[2:].strip()
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(code)
            continue
        if language == "python":
            code = re.sub(r"\.run\((\d+)\)", ".run(3)", code)  # a few MD steps, not a thousand
            code = re.sub(r'"(runs/[^"]*\.ckpt)"', lambda m: repr(scratch.substitute(m.group(1))), code)
            code = code.replace('"structure.xyz"', repr(str(scratch.folder / "structure.xyz")))
            done = subprocess.run([sys.executable, "-c", code], cwd=scratch.folder, env=env, capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, f"README python block failed:\n{code}\n{done.stderr[-3000:]}"
            continue
        if language != "bash":
            continue
        for words in bash_commands(code):
            extra_env, words = program(words)
            name = words[0]
            if name in SKIPPED:
                skipped.append(f"{' '.join(words)[:60]} ({SKIPPED[name]})")
                continue
            if any("$SLURM" in w for w in words):  # a line of a SLURM job script: its variables exist only there
                skipped.append(f"{' '.join(words)[:60]} (a SLURM job's line)")
                continue
            words = scratch.command(words)
            if name == "mlip-train":
                compose_train(words[1:], scratch)
                if not train or any(w in NEEDS_GPU for w in words):
                    continue
                if quickstart is not None:  # resume the README's own quickstart run, not a run of another config
                    words = [f"ckpt_path={quickstart}" if w.startswith("ckpt_path=") else w for w in words]
                plain = words == ["mlip-train"]
                words = _tiny(_tiny(words, TINY_TRAINING), TINY_IF_SET, add=False)
                if not any(w.startswith(("data.path=", "data.train_path=", "nep_in=", "ckpt_path=")) for w in words):
                    words = _tiny(words, TINY_DEMO)
                if not any(w.startswith("hydra.run.dir=") for w in words):
                    words.append(f"hydra.run.dir=runs/readme/{len(list((scratch.folder / 'runs').glob('readme/*')))}")
                if plain:
                    quickstart = scratch.folder / words[-1].split("=", 1)[1] / "checkpoints" / "last.ckpt"
            elif name == "mlip-design":
                if not train:
                    skipped.append("mlip-design (trains: -m slow)")
                    continue
                for flag, value in TINY_DESIGN.items():
                    words = words[: words.index(flag)] + words[words.index(flag) + 2 :] if flag in words else words
                    words += [flag, value]
            done = subprocess.run(words, cwd=scratch.folder, env={**env, **extra_env}, capture_output=True, text=True, timeout=600)
            assert done.returncode == 0, f"README command failed: {shlex.join(words)}\n{done.stderr[-3000:]}"
    return skipped


def _tiny_run(run_dir: Path, overrides: list[str]) -> Path:
    from hydra import compose, initialize_config_module

    from lightning_modules.train import run_training

    with initialize_config_module("mlip_plugins.conf", version_base=None):
        cfg = compose("train", overrides=[f"run_dir={run_dir}", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
                                          "logger=[]", "data.batch_size=4", *overrides])
    return Path(run_training(cfg)["best_ckpt"])


@pytest.fixture(scope="module")
def scratch(tmp_path_factory, cuau_frames) -> Scratch:
    """The scratch folder with the README's data files and the checkpoints of three tiny runs."""
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    from mlip_plugins.io.gpumd_xyz import write_gpumd_xyz

    folder = tmp_path_factory.mktemp("readme")
    frames = cuau_frames(12, seed=2)
    for atoms in frames:  # the README's data.keys.energy=REF_energy example reads these
        atoms.info["REF_energy"] = atoms.calc.results["energy"]
        atoms.arrays["REF_forces"] = atoms.calc.results["forces"].copy()
    for name in ("train.xyz", "val.xyz", "test.xyz", "data.xyz", "structure.xyz", "ionic.xyz", "big.xyz"):
        write(folder / name, frames[:1] if name == "structure.xyz" else frames, format="extxyz")
    molecules = []  # the dipole-loss example: clusters (no cell) with a dipole label
    for k, atoms in enumerate(frames):
        molecule = atoms.copy()
        molecule.pbc, molecule.cell = False, None
        molecule.calc = SinglePointCalculator(molecule, energy=atoms.calc.results["energy"], forces=atoms.calc.results["forces"])
        molecule.info["dipole"] = [0.1 * k, -0.05, 0.02 * k]
        molecules.append(molecule)
    write(folder / "molecules.xyz", molecules, format="extxyz")
    slabs = []  # the qeq example: reference charges (neutral structures)
    for atoms in frames:
        slab = atoms.copy()
        slab.calc = SinglePointCalculator(slab, energy=atoms.calc.results["energy"], forces=atoms.calc.results["forces"])
        charges = [0.1 if s == "Cu" else -0.1 for s in slab.get_chemical_symbols()]
        slab.set_initial_charges([q - sum(charges) / len(charges) for q in charges])
        slabs.append(slab)
    write(folder / "doped_slab.xyz", slabs, format="extxyz")
    gpumd = folder / "gpumd_train.xyz"
    with open(gpumd, "w") as handle:
        write_gpumd_xyz(handle, frames)
    nep_in = folder / "nep.in"
    nep_in.write_text("type 2 Cu Au\ncutoff 4.0 3.5\nn_max 2 2\nbasis_size 4 4\nl_max 2\nneuron 4\n")
    tiny = ["model.cutoff=4.0", "model.energy.descriptor.n_max=2", "model.energy.descriptor.basis_size=3"]
    files = {
        "nep_in": nep_in,
        "ckpt": _tiny_run(folder / "runs" / "tiny", [f"data.path={folder / 'train.xyz'}", "model=composable", *tiny, "model.energy.readout.hidden=[4]"]),
        "moe_ckpt": _tiny_run(folder / "runs" / "moe", [f"data.path={folder / 'train.xyz'}", "model=moe", *tiny]),
        "nep_ckpt": _tiny_run(folder / "runs" / "nep", ["experiment=nep", f"nep_in={nep_in}", f"data.path={gpumd}"]),
    }
    return Scratch(folder, files)


def test_readme_parses_into_blocks_and_commands():
    blocks = readme_blocks(README.read_text())
    languages = {language for language, _ in blocks}
    assert {"bash", "python", "yaml"} <= languages
    commands = [words for language, code in blocks if language == "bash" for words in bash_commands(code)]
    assert sum(program(w)[1][0] == "mlip-train" for w in commands) >= 20
    assert bash_commands("a x=1 \\\n  y=2   # note\n# only a comment\nb && c 'd # e'") == [["a", "x=1", "y=2"], ["b"], ["c", "d # e"]]


def test_the_install_pins_the_constraint_version():
    """The README's CPU-torch install line names the version constraints.txt pins."""
    pin = re.search(r"^torch==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M).group(1)
    assert f"pip install torch=={pin} --index-url https://download.pytorch.org/whl/cpu" in README.read_text()


def test_every_readme_command_and_snippet_runs(scratch):
    skipped = run_readme(scratch, train=False)
    assert all(reason.split(" (")[0] for reason in skipped)
    assert (scratch.folder / "eval" / "metrics.json").exists() and (scratch.folder / "unc.pt").exists()


@pytest.mark.slow
def test_every_readme_training_command_trains(scratch):
    shutil.rmtree(scratch.folder / "runs" / "readme", ignore_errors=True)
    run_readme(scratch, train=True)
