"""Atomic-state ensemble charges against QEq and against learned latent charges.

Part A (physics only, no training): charges of LiH and NaCl dimers along dissociation from
the QEq reference (Mulliken chi, J = IP - EA) and from the untrained ensemble at several
electronic temperatures; a table of q(R) and the figure ``dissociation_physics.png``; the
per-atom state weights of a small charged NaCl cluster (``state_weights.png`` + table).

Part B (training): the ionic dataset of the long-range issue
(:func:`mlip_plugins.data.ionic_dataset.make_ionic_dataset`: rattled, strained, polarised
rock-salt NaCl cells, Buckingham + Ewald Coulomb of fixed charges +-0.8 e; 16-atom cells by
default to keep the run short on a shared CPU). Same radial descriptor (cutoff 4.5 Å) and per-element
MLP readout in every model; the models differ only in where charges come from:

* ``short-range``: no charges (descriptor + readout);
* ``latent``: ``electrostatic`` energy model, learned latent charges (MLP head, uniform
  total-charge correction);
* ``ensemble``: ``electrostatic`` energy model, ``ensemble`` charge model (measured IP/EA
  states + learned corrections, one chemical potential per structure);
* ``ensemble+latent``: ``ensemble_electrostatic``: ensemble charges, state weights fed to the
  readout, ensemble free energy added.

Each model is trained with the same plain torch loop in float32 (Adam lr 1e-2, cosine
schedule, per-atom energy + 10 x force MSE, E0 fitted by least squares to the residual of the
untrained model, energy scale 1 so that Coulomb energies stay physical); test errors are
measured on held-out structures, charges against the dataset's reference charges. Transfer: charges on a NaCl dimer pulled apart from 2 to 10 Å (no dimer is
in the training set; the physically right limit is two neutral atoms), figure
``dimer_transfer.png``.

    python benchmarks/latent_vs_learned_charges.py [--epochs 60] [--train 48] [--test 16] [--repeat 1,1,2]
        [--models short-range,latent,ensemble,ensemble+latent] [--out outputs/latent_vs_learned_charges]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from torch_geometric.data import Batch

from mlip_plugins.data.structures import LabelKeys, atoms_to_graph, extract_labels
from mlip_plugins.charges.ensemble import ensemble_charges_many, ensemble_state_weights, qeq_charges_of_atoms
from mlip_plugins.models import build_potential

CUTOFF = 4.5  # as in benchmarks/long_range_learning.py
DESCRIPTOR = {"name": "radial", "n_max": 8, "basis_size": 10}
READOUT = {"name": "mlp", "hidden": [32, 32]}


# ------------------------------------------------------------------------------ part A
def dimer(symbols: str, distance: float) -> Atoms:
    return Atoms(symbols, positions=[[0.0, 0.0, 0.0], [distance, 0.0, 0.0]])


def physics_part(out: Path) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    distances = np.linspace(1.2, 12.0, 217)
    temperatures = (0.05, 0.1, 0.15)
    curves: dict = {}
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, pair in zip(axes, ("LiH", "NaCl")):
        qeq = np.array([qeq_charges_of_atoms(dimer(pair, r))[0] for r in distances])
        ax.plot(distances, qeq, "k--", label="QEq (chi, J = IP - EA)")
        curves[(pair, "QEq")] = qeq
        for t in temperatures:
            q = np.array([c[0] for c in ensemble_charges_many([dimer(pair, r) for r in distances], temperature=t)])
            curves[(pair, f"ensemble T={t}")] = q
            ax.plot(distances, q, label=f"ensemble, T = {t} eV")
        ax.axhline(1.0, color="grey", lw=0.5)
        ax.axhline(0.0, color="grey", lw=0.5)
        ax.set_title(f"{pair} dimer: charge on {pair[:2] if pair == 'NaCl' else 'Li'}")
        ax.set_xlabel("R (Å)")
    axes[0].set_ylabel("q (e)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "dissociation_physics.png", dpi=120)
    plt.close(fig)

    print("\nPart A: charge on the metal atom of a dimer, physics only (no training)")
    header = f"{'dimer':6s} {'model':20s}" + "".join(f"{f'R={r:g}':>9s}" for r in (1.6, 2.4, 3.0, 4.0, 6.0, 10.0))
    print(header)
    table = {}
    for (pair, label), q in curves.items():
        values = [float(np.interp(r, distances, q)) for r in (1.6, 2.4, 3.0, 4.0, 6.0, 10.0)]
        table[f"{pair} {label}"] = values
        print(f"{pair:6s} {label:20s}" + "".join(f"{v:9.4f}" for v in values))

    # one structure, two fragments 15 Å apart: an ionic Na2Cl2 square and a Li-H pair at 2.15 Å
    # (half-way through its ionic/covalent switch); one chemical potential for both
    square = [[0, 0, 0], [2.5, 0, 0], [2.5, 2.5, 0], [0, 2.5, 0]]
    fragments = Atoms("NaClNaClLiH", positions=square + [[15.0, 0, 0], [17.15, 0, 0]])
    weights = ensemble_state_weights(fragments)
    print("\nState weights of Na2Cl2 + Li...H (2.15 Å), one structure (physics only, T = 0.1 eV):")
    print(weights.table())
    weights.plot(out / "state_weights.png", title="Na2Cl2 + LiH (2.15 Å): atomic-state weights (physics only)")
    return {"dimer_charges": table, "cluster_charges": weights.charges.tolist()}


# ------------------------------------------------------------------------------ part B
def model_spec(kind: str, elements: list[str]) -> dict:
    solver = {"name": "ewald", "accuracy": 1e-4}
    if kind == "short-range":
        energy = {"descriptor": DESCRIPTOR, "readout": READOUT, "name": "short"}
    elif kind == "latent":
        energy = {"model": {"name": "electrostatic", "descriptor": DESCRIPTOR, "readout": READOUT,
                            "charges": {"name": "latent", "hidden": [16]}, "solver": solver}}
    elif kind == "ensemble":
        energy = {"model": {"name": "electrostatic", "descriptor": DESCRIPTOR, "readout": READOUT,
                            "charges": {"name": "ensemble", "hidden": [16], "prior_cutoff": 4.0}, "solver": solver}}
    elif kind == "ensemble+latent":
        energy = {"model": {"name": "ensemble_electrostatic", "descriptor": DESCRIPTOR, "readout": READOUT,
                            "charges": {"hidden": [16], "prior_cutoff": 4.0}, "solver": solver}}
    else:
        raise ValueError(kind)
    return {"elements": elements, "cutoff": CUTOFF, "energy": energy}


def to_graphs(structures: list[Atoms]) -> list:
    keys = LabelKeys()
    graphs = []
    for k, atoms in enumerate(structures):
        labels = extract_labels(atoms, keys, f"structure {k}")
        graphs.append(atoms_to_graph(atoms, CUTOFF, labels))
    return graphs


def evaluate(potential, graphs, batch_size: int = 16) -> dict:
    e_err, f_err, q_err, q_pred, z_all, n_atoms = [], [], [], [], [], []
    for start in range(0, len(graphs), batch_size):
        batch = Batch.from_data_list(graphs[start : start + batch_size])
        out = potential(batch)
        n = torch.bincount(batch.batch).to(out["energy"].dtype)
        e_err.append(((out["energy"] - batch.energy) / n).detach())
        f_err.append((out["forces"] - batch.forces).detach().reshape(-1))
        if "charges" in out and getattr(batch, "charges", None) is not None:
            q_err.append((out["charges"] - batch.charges).detach())
            q_pred.append(out["charges"].detach())
            z_all.append(batch.z)
    e, f = torch.cat(e_err), torch.cat(f_err)
    result = {"energy_mae_meV_atom": 1000 * float(e.abs().mean()), "force_mae_meV_A": 1000 * float(f.abs().mean()),
              "force_rmse_meV_A": 1000 * float(f.pow(2).mean().sqrt())}
    if q_err:
        result["charge_mae_e"] = float(torch.cat(q_err).abs().mean())
        q, z = torch.cat(q_pred), torch.cat(z_all)
        for symbol, number in (("Na", 11), ("Cl", 17)):
            if bool((z == number).any()):
                result[f"q_{symbol}"] = float(q[z == number].mean())
    return result


def train(potential, train_graphs, epochs: int, lr: float = 1e-2, batch_size: int = 8, force_weight: float = 10.0, seed: int = 0) -> float:
    gen = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(potential.parameters(), lr=lr)
    steps = epochs * math.ceil(len(train_graphs) / batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps, eta_min=lr * 0.02)
    potential.train()
    start = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(train_graphs), generator=gen).tolist()
        for b in range(0, len(order), batch_size):
            batch = Batch.from_data_list([train_graphs[i] for i in order[b : b + batch_size]])
            out = potential(batch, create_graph=True)
            n = torch.bincount(batch.batch).to(out["energy"].dtype)
            loss = ((out["energy"] - batch.energy) / n).pow(2).mean() + force_weight * (out["forces"] - batch.forces).pow(2).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            scheduler.step()
    potential.eval()
    return time.perf_counter() - start


def initial_e0(potential, graphs, ridge: float = 1e-8) -> np.ndarray:
    """Least-squares E0 per element of the residual E_data - E_model (untrained model, E0 = 0):
    the same start for every model, whatever fixed physics (Coulomb, ionisation) it contains."""
    elements = potential.atomic_numbers
    counts = np.array([[int((g.z == z).sum()) for z in elements] for g in graphs], dtype=float)
    with torch.no_grad():
        potential.e0.zero_()
        batch = Batch.from_data_list(graphs)
        model_energy = potential(batch, compute_forces=False)["energy"].double().numpy()
    residual = np.array([float(g.energy) for g in graphs]) - model_energy
    return np.linalg.solve(counts.T @ counts + ridge * np.eye(len(elements)), counts.T @ residual)


def dimer_charges(potential, distances: np.ndarray) -> np.ndarray:
    graphs = [atoms_to_graph(dimer("NaCl", r), CUTOFF, {}) for r in distances]
    out = potential(Batch.from_data_list(graphs), compute_forces=False)
    if "charges" not in out:
        return np.full(len(distances), np.nan)
    return out["charges"].detach().numpy().reshape(-1, 2)[:, 0]


def training_part(out: Path, epochs: int, kinds: list[str], n_train: int, n_test: int, repeat: tuple) -> dict:
    from mlip_plugins.data.ionic_dataset import make_ionic_dataset  # the long-range issue's data

    structures = make_ionic_dataset(n_train + n_test, seed=0, repeats=(repeat,))
    graphs = to_graphs(structures)
    train_set, test = graphs[:n_train], graphs[n_train:]
    elements = sorted({s for a in structures for s in a.get_chemical_symbols()})
    results, transfer = {}, {}
    distances = np.linspace(2.0, 10.0, 81)
    for kind in kinds:
        torch.manual_seed(0)
        potential = build_potential(model_spec(kind, elements))
        with torch.no_grad():
            potential.e0.copy_(torch.as_tensor(initial_e0(potential, train_set), dtype=potential.e0.dtype))
        seconds = train(potential, train_set, epochs)
        results[kind] = {**evaluate(potential, test), "train_s": seconds}
        transfer[kind] = dimer_charges(potential, distances)
        print(f"  trained {kind:16s} in {seconds:6.1f} s: {results[kind]}", flush=True)
    return {"results": results, "transfer": transfer, "distances": distances, "n_train": len(train_set), "n_test": len(test)}


def report_training(part: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = part["results"]
    print(f"\nPart B: ionic dataset, {part['n_train']} training / {part['n_test']} test structures")
    print("reference charges: Na +0.8, Cl -0.8 (fixed-charge Buckingham + Ewald reference)")
    print(f"{'model':18s} {'E MAE meV/atom':>15s} {'F MAE meV/Å':>12s} {'F RMSE meV/Å':>13s} {'q MAE e':>9s} {'q(Na)':>8s} {'q(Cl)':>8s} {'train s':>8s}")
    for kind, r in results.items():
        nan = float("nan")
        print(f"{kind:18s} {r['energy_mae_meV_atom']:15.2f} {r['force_mae_meV_A']:12.1f} {r['force_rmse_meV_A']:13.1f} "
              f"{r.get('charge_mae_e', nan):9.4f} {r.get('q_Na', nan):8.4f} {r.get('q_Cl', nan):8.4f} {r['train_s']:8.1f}")
    if "latent" in results:
        print("\npeer = latent charges; ratio = model / peer")
        print(f"{'model':18s} {'figure':16s} {'value':>10s} {'peer':>10s} {'ratio':>7s}")
        for kind, r in results.items():
            if kind == "latent":
                continue
            for key in ("force_mae_meV_A", "energy_mae_meV_atom", "charge_mae_e"):
                if key in r and key in results["latent"]:
                    print(f"{kind:18s} {key:16s} {r[key]:10.4f} {results['latent'][key]:10.4f} {r[key] / results['latent'][key]:7.2f}")
    distances = part["distances"]
    print("\nTransfer: charge on Na in a NaCl dimer (not in training); physics: neutral atoms at large R")
    picks = (2.4, 4.0, 6.0, 10.0)
    print(f"{'model':18s}" + "".join(f"{f'R={r:g}':>9s}" for r in picks))
    fig, ax = plt.subplots(figsize=(6, 4))
    for kind, q in part["transfer"].items():
        if np.isnan(q).all():
            continue
        print(f"{kind:18s}" + "".join(f"{float(np.interp(r, distances, q)):9.4f}" for r in picks))
        ax.plot(distances, q, label=kind)
    physics = np.array([c[0] for c in ensemble_charges_many([dimer("NaCl", r) for r in distances], cutoff=4.0, switch_width=1.0)])
    print(f"{'physics ensemble':18s}" + "".join(f"{float(np.interp(r, distances, physics)):9.4f}" for r in picks))
    ax.plot(distances, physics, "k:", label="physics-only ensemble")
    ax.axvline(CUTOFF, color="grey", lw=0.5)
    ax.set_xlabel("R (Å)")
    ax.set_ylabel("q(Na) (e)")
    ax.set_title("NaCl dimer dissociation (not in training)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "dimer_transfer.png", dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--train", type=int, default=48)
    parser.add_argument("--test", type=int, default=16)
    parser.add_argument("--repeat", default="1,1,2", help="supercell of the 8-atom rock-salt cell (1,1,2: 16 atoms)")
    parser.add_argument("--out", default="outputs/latent_vs_learned_charges")
    parser.add_argument("--models", default="short-range,latent,ensemble,ensemble+latent")
    parser.add_argument("--skip-training", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"physics": physics_part(out)}
    if not args.skip_training:
        torch.set_default_dtype(torch.float32)  # the training default; the ensemble solves in float64 inside
        repeat = tuple(int(v) for v in args.repeat.split(","))
        part = training_part(out, args.epochs, args.models.split(","), args.train, args.test, repeat)
        report_training(part, out)
        summary["training"] = {"args": vars(args), "results": part["results"], "transfer": {k: v.tolist() for k, v in part["transfer"].items()},
                               "distances": part["distances"].tolist()}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"\nfigures and summary.json in {out}")


if __name__ == "__main__":
    main()
