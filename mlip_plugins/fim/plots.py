"""Figures of a Fisher report: the eigenvalue spectrum and the attribution of modes to terms.

Matplotlib runs on the non-interactive Agg backend, so plots work on headless machines and
inside training runs.
"""

from __future__ import annotations

import math
from pathlib import Path

from mlip_plugins.fim.report import FisherReport
from mlip_plugins.plotting import save_figure


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _floor(report: FisherReport) -> float:
    lam_max = max(report.eigenvalues) if report.eigenvalues else 1.0
    return max(lam_max, 1e-300) * max(report.n_params, 1) * 2.2e-16


def plot_spectrum(report: FisherReport, path: str | Path, title: str | None = None) -> Path:
    """Sloppy-model spectrum: log10(λ/λ_max) as horizontal lines, and sorted on a log axis.

    Eigenvalues below the numerical floor (exact zeros included) are drawn at the floor.
    """
    plt = _pyplot()
    lam = [max(x, 0.0) for x in report.eigenvalues]
    lam_max = max(lam) if lam and max(lam) > 0 else 1.0
    floor = _floor(report)
    rel = [math.log10(max(x, floor) / lam_max) for x in lam]
    threshold = report.settings.get("sloppy_threshold")
    fig, (ax_lines, ax_sorted) = plt.subplots(1, 2, figsize=(8, 4), gridspec_kw={"width_ratios": [1, 3]})
    for value in rel:
        ax_lines.axhline(value, color="tab:blue", lw=0.6, alpha=0.7)
    ax_lines.set_xticks([])
    ax_lines.set_ylabel("log10(λ / λ_max)")
    ax_lines.set_ylim(min(rel + [-1]) - 0.5, 0.5)
    ax_sorted.semilogy(range(1, len(lam) + 1), [max(x, floor) for x in lam], ".", ms=3)
    if threshold:
        for ax, value in ((ax_lines, math.log10(threshold)), (ax_sorted, None)):
            if value is not None:
                ax.axhline(value, color="tab:red", ls="--", lw=1)
        ax_sorted.axhline(threshold * lam_max, color="tab:red", ls="--", lw=1, label=f"sloppy threshold {threshold:g}·λ_max")
        ax_sorted.legend(loc="upper right", fontsize=8)
    ax_sorted.set_xlabel("mode (stiffest first)")
    ax_sorted.set_ylabel("FIM eigenvalue")
    m = report.metrics
    decades = m.get("decades") if m.get("decades") is not None else m.get("decades_top_k")
    summary = f"P={report.n_params}, sloppy={m.get('n_sloppy', '-')}"
    if decades is not None:
        summary += f", spread {decades:.1f} decades"
    fig.suptitle(title or f"Fisher information spectrum ({report.method}): {summary}", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def plot_attribution(report: FisherReport, path: str | Path, title: str | None = None) -> Path:
    """Left: term shares of the stiffest and sloppiest modes (stacked bars).
    Right: per term, the share of stiff modes, of the sloppy subspace and the sloppy fraction."""
    plt = _pyplot()
    terms = [t.name for t in report.terms]
    modes = [("S", m) for m in report.stiff_modes] + [("s", m) for m in report.sloppy_modes]
    colors = plt.get_cmap("tab10")
    fig, (ax_modes, ax_terms) = plt.subplots(1, 2, figsize=(10, 4))
    if modes:
        bottoms = [0.0] * len(modes)
        for k, term in enumerate(terms):
            heights = [m["term_shares"].get(term, 0.0) for _, m in modes]
            ax_modes.bar(range(len(modes)), heights, bottom=bottoms, color=colors(k % 10), label=term)
            bottoms = [b + h for b, h in zip(bottoms, heights)]
        ax_modes.set_xticks(range(len(modes)))
        ax_modes.set_xticklabels([f"{tag}{i}\n{m['eigenvalue']:.1e}" for i, (tag, m) in enumerate(modes)], fontsize=6)
        ax_modes.set_ylabel("share of mode")
        ax_modes.set_title("stiff (S) and sloppy (s) modes", fontsize=9)
        ax_modes.legend(fontsize=7)
    width = 0.27
    x = list(range(len(terms)))
    series = [
        ("stiff share", [t.stiff_share for t in report.terms]),
        ("sloppy share", [t.sloppy_share or 0.0 for t in report.terms]),
        ("sloppy fraction", [t.sloppy_fraction or 0.0 for t in report.terms]),
    ]
    for k, (label, values) in enumerate(series):
        ax_terms.bar([xi + (k - 1) * width for xi in x], values, width, label=label)
    ax_terms.set_xticks(x)
    ax_terms.set_xticklabels([f"{t.name}\n({t.n_params})" for t in report.terms], fontsize=8)
    ax_terms.set_ylim(0, 1.05)
    ax_terms.set_title("per term", fontsize=9)
    ax_terms.legend(fontsize=7)
    fig.suptitle(title or "Attribution of Fisher modes to terms", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def save_report(report: FisherReport, directory: str | Path, stem: str = "fisher") -> dict[str, Path]:
    """Write ``<stem>.json``, ``<stem>_spectrum.png`` and ``<stem>_attribution.png`` into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    return {
        "json": report.save_json(directory / f"{stem}.json"),
        "spectrum": plot_spectrum(report, directory / f"{stem}_spectrum.png"),
        "attribution": plot_attribution(report, directory / f"{stem}_attribution.png"),
    }
