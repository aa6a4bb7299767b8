"""Predict on a list of graphs, compute error metrics, print a table and draw parity plots."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from torch_geometric.loader import DataLoader

from mlip_plugins import keys
from mlip_plugins.targets import ErrorMetrics, residuals
from mlip_plugins.plotting import save_figure
from mlip_plugins.atomic_files import atomic_write_text


#: the targets evaluation reports (charges have no parity plot of their own yet; the dipole, per
#: atom as its loss term, of a TNEP or a charge model where the data carry ``dipole`` labels)
EVALUATED = (keys.ENERGY, keys.FORCES, keys.STRESS, keys.DIPOLE)


def predict(potential, graphs: list, batch_size: int = 16, stress: bool = True) -> dict[str, np.ndarray]:
    """Labels and predictions (energy per atom, force components, stress) for labelled entries,
    from :func:`mlip_plugins.targets.residuals`; ``<target>_structure``: the index in ``graphs``
    of each entry's structure; ``natoms`` of each labelled energy."""
    potential.eval()
    dtype = potential.e0.dtype
    device = potential.e0.device
    collected: dict[str, list] = {f"{k}_{part}": [] for k in EVALUATED for part in ("pred", "true", "structure")}
    collected["natoms"] = []
    offset = 0
    for batch in DataLoader(graphs, batch_size=batch_size):
        batch = batch.to(device)
        batch.pos = batch.pos.to(dtype)
        want_stress = stress and bool(batch.has_stress.any())
        out = potential(batch, compute_forces=True, compute_stress=want_stress)
        targets = residuals(batch, out)
        for key in EVALUATED:
            if key in targets:
                guess, true = targets[key].labelled()
                collected[f"{key}_pred"].append(guess.detach().cpu().numpy().reshape(-1))
                collected[f"{key}_true"].append(true.detach().cpu().numpy().reshape(-1))
                structure = targets[key].structure[targets[key].mask] + offset
                collected[f"{key}_structure"].append(structure.cpu().numpy().reshape(-1))
        natoms = torch.bincount(batch.batch, minlength=batch.num_graphs)
        collected["natoms"].append(natoms[targets[keys.ENERGY].mask].cpu().numpy())
        offset += batch.num_graphs
    return {k: np.concatenate(v) if v else np.zeros(0) for k, v in collected.items()}


def select_structures(pred: dict[str, np.ndarray], structures) -> dict[str, np.ndarray]:
    """The entries of ``pred`` (from :func:`predict`) that belong to the structures with these
    indices: the predictions of a subset without evaluating the model again."""
    chosen = np.asarray(list(structures), dtype=np.int64)
    out = {}
    for key in EVALUATED:
        keep = np.isin(pred[f"{key}_structure"], chosen)
        out.update({f"{key}_{part}": pred[f"{key}_{part}"][keep] for part in ("pred", "true", "structure")})
    out["natoms"] = pred["natoms"][np.isin(pred[f"{keys.ENERGY}_structure"], chosen)]
    return out


def metrics_from_predictions(pred: dict[str, np.ndarray]) -> dict[str, float]:
    """RMSE and MAE per target (energy per atom in eV/atom, forces eV/Å, stress eV/Å³), computed
    by the same :class:`~mlip_plugins.targets.ErrorMetrics` the training module logs; and
    ``energy_structure_mae`` / ``energy_structure_rmse``, the error of each structure's total
    energy in eV (:func:`structure_energy_errors`)."""
    metrics = ErrorMetrics(EVALUATED, sync=False)
    for key in EVALUATED:
        metrics.update_errors(key, torch.from_numpy(np.asarray(pred[f"{key}_pred"] - pred[f"{key}_true"], dtype=np.float64)))
    computed = metrics.compute()
    result: dict[str, float] = {}
    for key in EVALUATED:
        if f"{key}_rmse" in computed:
            result.update({f"{key}_rmse": float(computed[f"{key}_rmse"]), f"{key}_mae": float(computed[f"{key}_mae"]),
                           f"{key}_count": metrics.counts[key]})
    if f"{keys.ENERGY}_rmse" in result:
        total = structure_energy_errors(pred)
        result.update({"energy_structure_mae": float(np.abs(total).mean()),
                       "energy_structure_rmse": float(np.sqrt(np.mean(total ** 2))),
                       "energy_structure_count": int(total.size)})
    return result


def structure_energy_errors(pred: dict[str, np.ndarray]) -> np.ndarray:
    """Predicted minus reference total energy (eV) of each structure with an energy label.

    Benchmarks that score total energies per structure (JARVIS-Leaderboard's mlearn tasks: the
    MAE of the total energies, in eV) weigh a structure's error by its size, which the per-atom
    metric does not; this is the number to set beside theirs."""
    per_atom = np.asarray(pred[f"{keys.ENERGY}_pred"] - pred[f"{keys.ENERGY}_true"], dtype=np.float64)
    return per_atom * np.asarray(pred["natoms"], dtype=np.float64)


_LABELS = {
    "energy": ("E/atom", "meV/atom", 1000.0),
    "energy_structure": ("E/struct", "meV", 1000.0),  # the total energy of each structure
    "forces": ("F", "meV/Å", 1000.0),
    "stress": ("stress", "meV/Å³", 1000.0),
    "dipole": ("dipole/at", "me·Å/atom", 1000.0),
}


def format_table(metrics: dict[str, float], title: str) -> str:
    """A plain-text table of RMSE and MAE per target."""
    lines = [title, f"{'quantity':<10} {'unit':<10} {'RMSE':>10} {'MAE':>10} {'n':>8}"]
    for key, (label, unit, factor) in _LABELS.items():
        if f"{key}_rmse" in metrics:
            lines.append(
                f"{label:<10} {unit:<10} {metrics[f'{key}_rmse'] * factor:>10.3f} "
                f"{metrics[f'{key}_mae'] * factor:>10.3f} {metrics[f'{key}_count']:>8d}"
            )
    return "\n".join(lines)


def parity_plot(pred: dict[str, np.ndarray], path: str | os.PathLike, title: str = "") -> Path | None:
    """Predicted vs reference energy per atom and force components, as a PNG (None, and no file,
    when nothing is labelled: a dipole / polarizability model has no energies)."""
    keys = [k for k in ("energy", "forces", "stress") if pred[f"{k}_true"].size]
    if not keys:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        label, unit, _ = _LABELS[key]
        true, guess = pred[f"{key}_true"], pred[f"{key}_pred"]
        ax.scatter(true, guess, s=4, alpha=0.5)
        lo, hi = float(min(true.min(), guess.min())), float(max(true.max(), guess.max()))
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        rmse = float(np.sqrt(np.mean((true - guess) ** 2)))
        base_unit = unit.replace("meV", "eV")
        ax.set_xlabel(f"reference {label} ({base_unit})")
        ax.set_ylabel(f"predicted {label} ({base_unit})")
        ax.set_title(f"{label}: RMSE {rmse * 1000:.2f} {unit}")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)


def write_json(data: dict, path: str | os.PathLike) -> None:
    """Write JSON atomically (:func:`mlip_plugins.atomic_files.atomic_write_text`)."""
    atomic_write_text(json.dumps(data, indent=2), path)
