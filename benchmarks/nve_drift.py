"""Energy conservation in NVE molecular dynamics for every model family, through the ASE calculator.

What a user needs before a week of MD: with velocity Verlet, the total energy of a
conservative, smooth potential fluctuates (O(dt^2)) but does not drift. A drift means the
forces are not the gradient of the energy (a detached term, an iterative solver stopped
early), or the energy is not smooth (a hard cutoff, a discontinuous router, a real-space
Coulomb sum cut off without a shift).

Protocol (one run, every model in the same conditions):

* models: every preset of the installed config tree (``conf/model/*.yaml``, discovered at run
  time, so presets that land later are covered), plus the ``electrostatic`` energy model
  (long range) with every registered charge model (Ewald) and every registered long-range
  solver (latent charges);
* systems: 108-atom fcc Cu/Au alloy (3x3x3 conventional cells, 25 % Au, a = 3.73 Å) for
  short-range models; 128-atom rock-salt NaCl (2x2x4 conventional cells) for models with
  charges and a long-range solver;
* each model is briefly trained with ``mlip-train``'s ``run_training`` (float32, E0 fitted)
  on a small reference set for its system (EMT for Cu/Au; Born-Mayer repulsion + damped
  shifted-force Coulomb for NaCl, both smooth and conservative), so that the crystal is
  bound and vibrates like a solid; a model whose validation force RMSE stays above
  0.2 eV/Å is retrained 4x longer (a too rough model has no short-range repulsion yet and the
  crystal collapses, which says nothing about energy conservation). Runs in which two atoms
  come closer than 0.6 x the initial nearest-neighbour distance are flagged unstable;
* MD: the checkpoint loaded by ``MLIPCalculator.from_file`` in float64, Maxwell-Boltzmann
  velocities at 2 x 300 K (equipartition brings the crystal to about 300 K), zero total
  momentum, ``ase.md.verlet.VelocityVerlet`` with dt = 1 fs for 2 ps (2000 steps);
* figure: the slope of a least-squares line through the total energy per atom against time
  (eV/atom/ps); peers: the reference potentials themselves (EMT, Born-Mayer + DSF) in the same
  MD, and the goal 1e-5 eV/atom/ps.

    python benchmarks/nve_drift.py                      # everything (tens of minutes on 2 cores)
    python benchmarks/nve_drift.py --models default nep electrostatic/latent+ewald --steps 500
    python benchmarks/nve_drift.py --list               # the models it would run

Writes ``<out>/nve_drift.json`` (table and energy traces) and ``<out>/nve_drift.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import io
import json
import logging
import math
import os
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
from ase import Atoms, units
from ase.build import bulk
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
from ase.md.verlet import VelocityVerlet
from scipy.special import erfc

from mlip_plugins.data.neighbors import neighbor_list
from mlip_plugins.units import COULOMB_CONSTANT

GOAL = 1e-5  # eV/atom/ps
RETRAIN_ABOVE = 0.2  # eV/Å: validation force RMSE above which a model is retrained longer
RETRAIN_FACTOR = 4
COLLAPSE = 0.6  # a run whose closest pair comes below 0.6 x the initial nearest-neighbour distance is unstable
TEMPERATURE = 300.0
METAL_LATTICE = 3.73  # Vegard's law for Cu3Au-like composition (Cu 3.61, Au 4.08)


# ----------------------------------------------------------------------------- systems
def metal_alloy(repeat: tuple[int, int, int] = (3, 3, 3), gold_fraction: float = 0.25, seed: int = 0,
                a: float = METAL_LATTICE) -> Atoms:
    """A random fcc Cu/Au alloy in conventional cells (108 atoms for 3x3x3)."""
    atoms = bulk("Cu", "fcc", a=a, cubic=True).repeat(repeat)
    rng = np.random.default_rng(seed)
    symbols = np.array(atoms.get_chemical_symbols())
    symbols[rng.choice(len(atoms), int(round(gold_fraction * len(atoms))), replace=False)] = "Au"
    atoms.set_chemical_symbols(symbols.tolist())
    return atoms


class BornMayerDSF(Calculator):
    """NaCl reference: Born-Mayer repulsion + damped shifted-force (DSF) Coulomb, fixed +-1 charges.

    V(r) = A exp(-r/rho) (shifted force) + k q_i q_j [erfc(a r)/r - erfc(a R)/R
    + (erfc(a R)/R^2 + 2a/sqrt(pi) exp(-a^2 R^2)/R)(r - R)] for r < R (Fennell and Gezelter,
    J. Chem. Phys. 124, 234104 (2006)): energy and force are continuous at R, so MD with it
    conserves energy; with a = 0.2/Å and R = 10 Å it is close to the Ewald sum for NaCl.
    A = 1221 eV, rho = 0.317 Å put the minimum of the lattice energy at a = 5.70 Å.
    """

    implemented_properties = ["energy", "forces"]
    COULOMB = COULOMB_CONSTANT  # eV Å / e^2

    def __init__(self, charges: dict | None = None, a_rep: float = 1221.0, rho: float = 0.317,
                 alpha: float = 0.2, cutoff: float = 10.0, **kwargs):
        super().__init__(**kwargs)
        self.charges = charges or {11: 1.0, 17: -1.0}
        self.a_rep, self.rho, self.alpha, self.rc = a_rep, rho, alpha, cutoff

    def _pair(self, r: np.ndarray, qq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pair energy V(r) and dV/dr."""
        a, rc, k = self.alpha, self.rc, self.COULOMB
        rep = self.a_rep * np.exp(-r / self.rho)
        rep_c = self.a_rep * np.exp(-rc / self.rho)
        e_rep = rep - rep_c + (r - rc) * rep_c / self.rho
        d_rep = -rep / self.rho + rep_c / self.rho
        gauss = 2 * a / math.sqrt(math.pi)
        slope_c = erfc(a * rc) / rc**2 + gauss * math.exp(-(a * rc) ** 2) / rc
        e_coul = k * qq * (erfc(a * r) / r - erfc(a * rc) / rc + slope_c * (r - rc))
        d_coul = k * qq * (-(erfc(a * r) / r**2 + gauss * np.exp(-(a * r) ** 2) / r) + slope_c)
        return e_rep + e_coul, d_rep + d_coul

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        positions, cell = self.atoms.positions, self.atoms.cell.array
        edges, shifts = neighbor_list(positions, cell, self.atoms.pbc, self.rc)
        j, i = edges  # row 0 = neighbour j, row 1 = centre i (data contract)
        vec = positions[j] - positions[i] + shifts @ cell
        d = np.linalg.norm(vec, axis=1)
        q = np.array([self.charges[int(z)] for z in self.atoms.numbers])
        energy_pair, slope = self._pair(d, q[i] * q[j])
        a, rc = self.alpha, self.rc
        self_term = -(erfc(a * rc) / (2 * rc) + a / math.sqrt(math.pi)) * self.COULOMB * float(np.sum(q**2))
        forces = np.zeros((len(self.atoms), 3))
        np.add.at(forces, i, (slope / d)[:, None] * vec)  # F_i = sum_j V'(r_ij) (r_j - r_i) / r_ij
        self.results = {"energy": 0.5 * float(energy_pair.sum()) + self_term, "forces": forces}


def rock_salt(repeat: tuple[int, int, int] = (2, 2, 4), a: float = 5.70) -> Atoms:
    """NaCl in conventional cells (128 atoms for 2x2x4), neutral."""
    atoms = bulk("NaCl", "rocksalt", a=a, cubic=True).repeat(repeat)
    atoms.info["total_charge"] = 0.0
    atoms.arrays["charges"] = np.where(atoms.numbers == 11, 1.0, -1.0)  # formal charges (for 'fixed')
    return atoms


@dataclass(frozen=True)
class System:
    name: str
    build: object          # () -> Atoms, the MD cell
    reference: object      # () -> ASE calculator (labels and the peer MD)
    training_cell: object  # (rng) -> Atoms, a small cell for the training set


def _metal_training_cell(rng: np.random.Generator) -> Atoms:
    atoms = metal_alloy((2, 2, 2), gold_fraction=float(rng.uniform(0.1, 0.4)), seed=int(rng.integers(1 << 30)),
                        a=METAL_LATTICE * float(rng.uniform(0.98, 1.02)))
    return atoms


def _ionic_training_cell(rng: np.random.Generator) -> Atoms:
    return rock_salt((1, 1, 1), a=5.70 * float(rng.uniform(0.98, 1.02)))


SYSTEMS = {
    "CuAu": System("fcc Cu/Au alloy", metal_alloy, EMT, _metal_training_cell),
    "NaCl": System("rock-salt NaCl", rock_salt, BornMayerDSF, _ionic_training_cell),
}


def reference_dataset(system: System, n_structures: int, seed: int = 0) -> list[Atoms]:
    """Labelled snapshots: strained cells rattled with thermal-like displacements (0.03-0.15 Å)."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n_structures):
        atoms = system.training_cell(rng)
        atoms.positions += rng.normal(scale=float(rng.uniform(0.03, 0.15)), size=atoms.positions.shape)
        atoms.calc = system.reference()
        results = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
        atoms.calc = SinglePointCalculator(atoms, **results)
        frames.append(atoms)
    return frames


# ----------------------------------------------------------------------------- models
def preset_names() -> list[str]:
    """Model presets of the installed config tree (``conf/model/*.yaml``)."""
    root = resources.files("mlip_plugins.conf") / "model"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def _plugin_names(spec, key: str = "") -> set[tuple[str, str]]:
    """(where, name) of every plugin in an energy spec, e.g. ("solver", "ewald"), ("model", "nep")."""
    found = set()
    if isinstance(spec, dict):
        if isinstance(spec.get("name"), str):
            found.add((key, spec["name"]))
        for k, v in spec.items():
            found |= _plugin_names(v, k)
    elif isinstance(spec, list):
        for v in spec:
            found |= _plugin_names(v, key)
    return found


def family_of(energy: dict) -> str:
    """The model family of an energy spec (for the table): from the plugins it uses."""
    names = _plugin_names(energy)
    if ("charges", "ensemble") in names or ("model", "ensemble_electrostatic") in names:
        return "latent charges"
    if any(where in ("solver", "charges") for where, _ in names):
        return "long-range"
    if any(name == "nep" for _, name in names):
        return "NEP"
    if ("readout", "moe") in names:
        return "MoE"
    return "composite"


def option_names(group: str) -> list[str]:
    """Options of the config group ``conf/model/<group>/`` (e.g. solver, charges)."""
    root = resources.files("mlip_plugins.conf") / "model" / group
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml")) if root.is_dir() else []


@dataclass
class ModelCase:
    label: str
    family: str
    system: str
    overrides: list = field(default_factory=list)


def model_cases() -> list[ModelCase]:
    """Every model preset; for presets with charges and a solver, also every other option of
    the ``model/charges`` and ``model/solver`` config groups."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    cases = []
    with initialize_config_module("mlip_plugins.conf", version_base=None):
        for preset in preset_names():
            variants = [(preset, [f"model={preset}"])]
            energy = OmegaConf.to_container(compose("train", overrides=[f"model={preset}"]).model.energy, resolve=False)
            inner = energy.get("model", {}) if isinstance(energy, dict) else {}
            for group in ("charges", "solver"):
                current = (inner.get(group) or {}).get("name") if isinstance(inner, dict) else None
                if current is None:
                    continue
                variants += [(f"{preset}/{group}={option}", [f"model={preset}", f"model/{group}={option}"])
                             for option in option_names(group) if option != current]
            for label, overrides in variants:
                try:
                    energy = OmegaConf.to_container(compose("train", overrides=overrides).model.energy, resolve=False)
                except Exception:  # noqa: BLE001 - the preset does not select this group from its defaults list
                    continue
                ionic = any(where in ("charges", "solver") for where, _ in _plugin_names(energy))
                cases.append(ModelCase(label, family_of(energy), "NaCl" if ionic else "CuAu", overrides))
    return cases


# ----------------------------------------------------------------------------- training
def train(case: ModelCase, data_path: Path, run_dir: Path, epochs: int, seed: int = 0) -> dict:
    """Train ``case`` briefly with the Hydra app's ``run_training``; returns its result dict."""
    from hydra import compose, initialize_config_module
    from omegaconf import open_dict

    from lightning_modules.train import run_training

    overrides = [
        *case.overrides, "model.elements=auto", f"data.path={data_path}", f"run_dir={run_dir}",
        f"trainer.max_epochs={max(epochs, 1)}", "trainer.enable_progress_bar=false", "logger=[]", "data.batch_size=4",
        "data.val_fraction=0.1", "data.test_fraction=0.0", "scheduler.warmup_steps=10", f"seed={seed}",
        "trainer.enable_model_summary=false",
    ]
    with initialize_config_module("mlip_plugins.conf", version_base=None):
        cfg = compose("train", overrides=overrides)
    if epochs == 0:  # untrained: E0 fitted, weights as initialised
        with open_dict(cfg):
            cfg.trainer.max_steps = 0
    with contextlib.redirect_stdout(io.StringIO()):
        return run_training(cfg)


# ----------------------------------------------------------------------------- MD
@dataclass
class MDResult:
    drift: float              # eV/atom/ps, slope of the linear fit
    fluctuation: float        # eV/atom, RMS of E_tot about the fit
    max_excursion: float      # eV/atom, max |E_tot(t) - E_tot(0)|
    temperature: float        # K, mean over the run
    ms_per_step: float
    min_distance: float = float("nan")  # Å, smallest interatomic distance seen (a collapse check)
    times: list = field(default_factory=list)
    energies: list = field(default_factory=list)


def min_distance(atoms: Atoms, search: float = 3.0) -> float:
    """Smallest interatomic distance (periodic images included)."""
    edges, shifts = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, search)
    if edges.shape[1] == 0:
        return search
    vectors = atoms.positions[edges[0]] - atoms.positions[edges[1]] + shifts @ atoms.cell.array
    return float(np.linalg.norm(vectors, axis=1).min())


def run_nve(atoms: Atoms, calc: Calculator, steps: int, dt_fs: float = 1.0, temperature: float = TEMPERATURE,
            seed: int = 0, sample_every: int = 10) -> MDResult:
    """Velocity-Verlet NVE from Maxwell-Boltzmann velocities at 2 x ``temperature``."""
    atoms = atoms.copy()
    atoms.calc = calc
    MaxwellBoltzmannDistribution(atoms, temperature_K=2 * temperature, rng=np.random.default_rng(seed))
    Stationary(atoms)
    n = len(atoms)
    times, energies, temps, closest = [], [], [], []

    def sample() -> None:
        epot, ekin = atoms.get_potential_energy(), atoms.get_kinetic_energy()
        times.append(dyn.get_time() / (1000 * units.fs))
        energies.append((epot + ekin) / n)
        temps.append(ekin / (1.5 * n * units.kB))
        closest.append(min_distance(atoms))

    dyn = VelocityVerlet(atoms, timestep=dt_fs * units.fs)
    dyn.attach(sample, interval=sample_every)
    start = time.perf_counter()
    dyn.run(steps)
    elapsed = time.perf_counter() - start
    result = summarize(np.array(times), np.array(energies), float(np.mean(temps)), 1e3 * elapsed / max(steps, 1))
    result.min_distance = float(np.min(closest))
    return result


def summarize(times: np.ndarray, energies: np.ndarray, temperature: float, ms_per_step: float) -> MDResult:
    """Drift (linear fit), fluctuation about it and the largest excursion of E_tot per atom."""
    if not np.all(np.isfinite(energies)):
        return MDResult(float("nan"), float("nan"), float("nan"), temperature, ms_per_step, times=times.tolist(),
                        energies=energies.tolist())
    slope, intercept = np.polyfit(times, energies, 1)
    residual = energies - (slope * times + intercept)
    return MDResult(float(slope), float(np.sqrt(np.mean(residual**2))), float(np.max(np.abs(energies - energies[0]))),
                    temperature, ms_per_step, times=times.tolist(), energies=energies.tolist())


# ----------------------------------------------------------------------------- report
def _fmt(value: float, spec: str = ".1e") -> str:
    return "nan" if value is None or not np.isfinite(value) else format(value, spec)


def print_table(rows: list[dict]) -> None:
    head = (f"{'model (peer)':34s} {'family':15s} {'system':7s} {'N':>4s} {'params':>6s} {'epochs':>6s} {'F RMSE':>7s} "
            f"{'<T> K':>6s} {'d_min':>5s} {'dE rms':>8s} {'drift eV/atom/ps':>16s} {'goal':>7s} {'ratio':>7s} {'ms/step':>8s}")
    print(head)
    print("-" * len(head))
    for r in rows:
        if r.get("error"):
            print(f"{r['label']:34s} {r['family']:15s} {r['system']:7s}  n/a: {r['error'][:110]}")
            continue
        ratio = abs(r["drift"]) / GOAL if np.isfinite(r["drift"]) else float("nan")
        flag = "  (unstable: atoms collapsed)" if r.get("unstable") else ""
        print(f"{r['label']:34s} {r['family']:15s} {r['system']:7s} {r['atoms']:4d} {r.get('params') or '-':>6} "
              f"{r.get('epochs', '-'):>6} {_fmt(r.get('force_rmse'), '.3f') if r.get('force_rmse') is not None else '-':>7s} "
              f"{r['temperature']:6.0f} {r['min_distance']:5.2f} {_fmt(r['fluctuation']):>8s} {_fmt(r['drift'], '+.2e'):>16s} "
              f"{GOAL:7.0e} {_fmt(ratio, '.2f'):>7s} {r['ms_per_step']:8.1f}{flag}")
    print(f"\ndrift: slope of a linear fit of E_tot/N over the run; dE rms: fluctuation about the fit (eV/atom); "
          f"ratio: |drift| / goal ({GOAL:.0e} eV/atom/ps); F RMSE: validation force error after the brief training (eV/Å); "
          f"d_min: smallest interatomic distance during the run (Å); epochs: training epochs (retrained {RETRAIN_FACTOR}x "
          f"longer when F RMSE > {RETRAIN_ABOVE} eV/Å)")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharex=True)
    for ax, system in zip(axes, SYSTEMS):
        for r in rows:
            if r["system"] == system and not r.get("error") and r["energies"]:
                e = np.array(r["energies"])
                ax.plot(r["times"], 1e3 * (e - e[0]), lw=1, label=r["label"], ls="--" if r["peer"] else "-")
        ax.set_title(SYSTEMS[system].name)
        ax.set_xlabel("time (ps)")
        ax.set_ylabel("E_tot - E_tot(0) (meV/atom)")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="*", default=None, help="labels or glob patterns (default: all)")
    parser.add_argument("--steps", type=int, default=2000, help="MD steps of 1 fs (default 2000 = 2 ps)")
    parser.add_argument("--dt", type=float, default=1.0, help="time step in fs")
    parser.add_argument("--epochs", type=int, default=12, help="training epochs per model (0: untrained, E0 fitted)")
    parser.add_argument("--structures", type=int, default=40, help="reference structures per system")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-peers", action="store_true", help="skip the reference-potential MD rows")
    parser.add_argument("--list", action="store_true", help="list the models and exit")
    parser.add_argument("--out", default="outputs/nve_drift")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")

    import torch

    torch.set_num_threads(args.threads)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("mlip_plugins").setLevel(logging.ERROR)
    os.environ.setdefault("MLIP_PLUGINS_CACHE", tempfile.mkdtemp(prefix="nve_cache_"))

    cases = model_cases()
    if args.models:
        cases = [c for c in cases if any(fnmatch.fnmatch(c.label, p) for p in args.models)]
    if args.list:
        for c in cases:
            print(f"{c.label:36s} {c.family:15s} {c.system}")
        return []
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="nve_drift_"))
    from mlip_plugins.calculator import MLIPCalculator

    rows: list[dict] = []
    systems_used = sorted({c.system for c in cases}, key=list(SYSTEMS).index)
    data_paths = {}
    for key in systems_used:
        system = SYSTEMS[key]
        data_paths[key] = work / f"{key}.xyz"
        write(data_paths[key], reference_dataset(system, args.structures, seed=1), format="extxyz")
        if not args.no_peers:
            atoms = system.build()
            result = run_nve(atoms, system.reference(), args.steps, args.dt)
            rows.append({"label": f"{system.reference.__name__} (reference)", "family": "peer", "system": key, "peer": True,
                         "atoms": len(atoms), "params": None, "force_rmse": None, **asdict(result)})
            print_row_progress(rows[-1])
    for case in cases:
        system = SYSTEMS[case.system]
        row = {"label": case.label, "family": case.family, "system": case.system, "peer": False}
        try:
            run_dir = work / "".join(c if c.isalnum() else "_" for c in case.label)
            epochs = args.epochs
            trained = train(case, data_paths[case.system], run_dir, epochs)
            if args.epochs and trained.get("metrics", {}).get("forces_rmse", 0.0) > RETRAIN_ABOVE:
                epochs = RETRAIN_FACTOR * args.epochs  # too rough to be a bound solid: train longer, from scratch
                trained = train(case, data_paths[case.system], run_dir.with_name(run_dir.name + "_long"), epochs)
            calc = MLIPCalculator.from_file(trained["last_ckpt"], dtype="float64")
            atoms = system.build()
            result = run_nve(atoms, calc, args.steps, args.dt)
            metrics = trained.get("metrics", {})
            row.update(atoms=len(atoms), params=int(metrics.get("parameters", {}).get("total", 0)) or None,
                       force_rmse=metrics.get("forces_rmse"), epochs=epochs,
                       unstable=bool(result.min_distance < COLLAPSE * min_distance(atoms)), **asdict(result))
        except Exception as exc:  # noqa: BLE001 - one family failing must not hide the others
            row.update(error=f"{type(exc).__name__}: {exc}".replace("\n", " "), energies=[], times=[])
        rows.append(row)
        print_row_progress(row)
    print()
    print(f"NVE, velocity Verlet, dt = {args.dt} fs, {args.steps} steps ({args.steps * args.dt / 1000:g} ps), "
          f"float64 through MLIPCalculator, start at 2 x {TEMPERATURE:g} K, training epochs = {args.epochs}")
    print_table(rows)
    (out / "nve_drift.json").write_text(json.dumps({"settings": vars(args), "goal": GOAL, "rows": rows}, indent=1))
    plot(rows, out / "nve_drift.png")
    print(f"\nwrote {out / 'nve_drift.json'} and {out / 'nve_drift.png'}")
    return rows


def print_row_progress(row: dict) -> None:
    if row.get("error"):
        print(f"[nve] {row['label']}: error {row['error'][:200]}", file=sys.stderr, flush=True)
    else:
        print(f"[nve] {row['label']}: drift {row['drift']:+.2e} eV/atom/ps, <T> {row['temperature']:.0f} K, "
              f"{row['ms_per_step']:.1f} ms/step", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
