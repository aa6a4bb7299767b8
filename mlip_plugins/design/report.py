"""Outputs of the design loop: candidate table (CSV, markdown), Pareto plot, best config as YAML."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from mlip_plugins.design.loop import TEST_COLUMNS, AdaptiveDesign, Trial
from mlip_plugins.plotting import save_figure

COLUMNS = [
    "id", "parent", "move", "model", "params", "score", "energy_rmse_meV_atom", "forces_rmse_meV_A", "stress_rmse_meV_A3",
    "eos_rmse_meV_atom", "bulk_modulus_rel_error", *(f"test_{key}_{unit}" for key, unit in TEST_COLUMNS), "condition_number", "decades", "n_sloppy", "sloppy_ratio",
    "effective_dimension", "term_sloppy_fractions", "seconds", "status",
]


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.3g}"
        return f"{value:.4g}"
    return str(value)


def write_tables(design: AdaptiveDesign, directory: Path) -> tuple[Path, Path]:
    """``candidates.csv`` and ``candidates.md`` (Pareto-optimal rows marked, best in bold)."""
    directory.mkdir(parents=True, exist_ok=True)
    rows = [t.row() for t in design.trials]
    csv_path = directory / "candidates.csv"
    with open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(row.get(k)) for k in COLUMNS})
    pareto = {t.id for t in design.pareto_front()}
    try:
        best = design.best().id
    except RuntimeError:
        best = None
    shown = ["id", "move", "model", "params", "score", "energy_rmse_meV_atom", "forces_rmse_meV_A", "stress_rmse_meV_A3",
             "eos_rmse_meV_atom", "test_energy_mae_meV_atom", "test_forces_mae_meV_A", "condition_number", "n_sloppy", "sloppy_ratio", "effective_dimension", "seconds"]
    shown = [c for c in shown if any(r.get(c) is not None for r in rows)]
    header = {"energy_rmse_meV_atom": "E RMSE (meV/atom)", "forces_rmse_meV_A": "F RMSE (meV/Å)",
              "stress_rmse_meV_A3": "stress RMSE (meV/Å³)", "eos_rmse_meV_atom": "EOS RMSE (meV/atom)",
              "test_energy_mae_meV_atom": "test E MAE (meV/atom)", "test_forces_mae_meV_A": "test F MAE (meV/Å)",
              "condition_number": "cond(FIM)", "n_sloppy": "sloppy", "sloppy_ratio": "sloppy/P",
              "effective_dimension": "d_eff", "seconds": "s"}
    lines = ["| " + " | ".join(header.get(c, c) for c in shown) + " | Pareto |",
             "|" + "---|" * (len(shown) + 1)]
    for row in rows:
        cells = [_cell(row.get(c)).replace("|", "\\|") for c in shown]
        if row["status"] != "ok":
            cells[shown.index("model")] += f" ({row['status']})"
        if row["id"] == best:
            cells = [f"**{c}**" if c else c for c in cells]
        lines.append("| " + " | ".join(cells) + f" | {'yes' if row['id'] in pareto else ''} |")
    md_path = directory / "candidates.md"
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path


def pareto_plot(design: AdaptiveDesign, path: Path) -> Path:
    """Error against parameter count, coloured by the fraction of sloppy directions, with the front."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    ok = [t for t in design.trials if t.status == "ok" and math.isfinite(t.score)]
    panels = [("score", "score (error / start error)", lambda t: t.score),
              ("forces_rmse", "force RMSE (meV/Å)", lambda t: 1000 * t.errors.get("forces_rmse", math.nan)),
              ("energy_rmse", "energy RMSE (meV/atom)", lambda t: 1000 * t.errors.get("energy_rmse", math.nan))]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), constrained_layout=True)
    front = sorted(design.pareto_front(), key=lambda t: t.n_params)
    try:
        best = design.best()
    except RuntimeError:
        best = None
    colours = [t.fisher.get("sloppy_ratio") if t.fisher.get("sloppy_ratio") is not None else math.nan for t in ok]
    scatter = None
    for ax, (_, label, value) in zip(axes, panels):
        xs = [t.n_params for t in ok]
        ys = [value(t) for t in ok]
        scatter = ax.scatter(xs, ys, c=colours, cmap="viridis", vmin=0, vmax=1, s=50, edgecolors="k", zorder=3)
        for t, x, y in zip(ok, xs, ys):
            ax.annotate(str(t.id), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        if label.startswith("score") and front:
            ax.step([t.n_params for t in front], [t.score for t in front], where="post", color="tab:red", lw=1, label="Pareto front")
        if best is not None:
            ax.scatter([best.n_params], [value(best)], marker="*", s=250, facecolors="none", edgecolors="tab:red", zorder=4,
                       label=f"best: {best.description}")
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="best", framealpha=0.6)
    if scatter is not None:
        fig.colorbar(scatter, ax=axes, label="sloppy directions / parameters", shrink=0.85)
    fig.suptitle("Adaptive design: candidates (numbers = trial id)", fontsize=10)
    return save_figure(fig, path, dpi=110)


def write_best_config(design: AdaptiveDesign, directory: Path, name: str = "designed") -> tuple[Path, Path]:
    """The best candidate as a ``conf/model``-style YAML (keys elements, cutoff, energy).

    Written twice: ``best_model.yaml`` and ``conf/model/<name>.yaml``, so that
    ``mlip-train --config-dir <directory>/conf model=<name>`` trains it directly.
    """
    import yaml
    from ase.data import chemical_symbols

    best: Trial = design.best()
    elements = [chemical_symbols[e] if isinstance(e, int) else e for e in design.elements]
    config = {"elements": elements, "cutoff": design.cutoff, "energy": best.spec}
    errors = ", ".join(f"{k} {v:.4g}" for k, v in best.errors.items() if k.endswith("rmse"))
    header = (f"# Best configuration found by mlip-design (trial {best.id}: {best.description}).\n"
              f"# {best.n_params} parameters; validation {errors}; FIM sloppy directions {best.fisher.get('n_sloppy')}.\n"
              f"# Train it with: mlip-train --config-dir {directory.resolve() / 'conf'} model={name}\n")
    text = header + yaml.safe_dump(config, sort_keys=False, default_flow_style=None)
    paths = (directory / "best_model.yaml", directory / "conf" / "model" / f"{name}.yaml")
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return paths


def write_all(design: AdaptiveDesign, directory: str | Path) -> dict[str, Path]:
    """Tables, Pareto plot, best YAML, ``design.json`` (every trial) and per-trial Fisher JSON."""
    directory = Path(directory)
    csv_path, md_path = write_tables(design, directory)
    files = {"csv": csv_path, "markdown": md_path, "pareto": pareto_plot(design, directory / "pareto.png")}
    files["best_yaml"], files["hydra_model"] = write_best_config(design, directory)
    files["json"] = directory / "design.json"
    files["json"].write_text(json.dumps(design.summary(), indent=1, default=str))
    fisher_dir = directory / "fisher"
    fisher_dir.mkdir(exist_ok=True)
    for trial_id, report in design.reports.items():
        (fisher_dir / f"trial{trial_id:02d}.json").write_text(json.dumps(report, default=str))
    return files
