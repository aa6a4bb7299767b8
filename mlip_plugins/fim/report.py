"""Sloppiness report of a model on a probe set: spectrum, conditioning, and who is stiff or sloppy.

Metrics (λ the FIM eigenvalues, largest first; P parameters):

* ``condition_number`` λ_max / λ_min, with λ_min floored at the numerical noise level
  ``λ_max · P · ε_float64`` (so a singular FIM reads as ~1e13-1e16, never inf);
  ``decades`` = log10 of it; ``decades_resolved`` uses the smallest eigenvalue above the floor;
* ``n_sloppy``: eigenvalues with λ/λ_max below ``sloppy_threshold`` (including the exactly
  zero ones when there are fewer observations than parameters); ``n_null``: below the floor;
* ``effective_dimension`` Σ λ/(λ + α) with α = ``sloppy_threshold``·λ_max (a smooth count of
  the stiff directions) and ``participation_ratio`` (Σλ)²/Σλ².

Attribution: for a unit eigenvector v, the share of group g is Σ_{a∈g} v_a². Per term (and per
parameter group) the report gives the share of the stiffest modes, the share of the sloppy
subspace, and ``sloppy_fraction``: the fraction of the group's own parameter space that lies
in the sloppy subspace (1.0: every parameter of the term is sloppy, a removal candidate).
These need only the stiff eigenvectors, because all eigenvectors together carry |g| per group.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from mlip_plugins.fim.fisher import FisherOperator, FisherWeights, compute_jacobian, count_observables, float64_copy
from mlip_plugins.fim.lanczos import lanczos_topk
from mlip_plugins.fim.parameters import ParameterIndex
from mlip_plugins.atomic_files import atomic_write_text

EPS64 = torch.finfo(torch.float64).eps


@dataclass
class GroupAttribution:
    """How one term (or parameter group) takes part in the stiff and sloppy directions."""

    name: str
    n_params: int
    stiff_share: float  # share of the top ``n_modes`` stiffest modes carried by the group
    sloppy_share: float | None  # share of the sloppy subspace carried by the group
    sloppy_fraction: float | None  # fraction of the group's own dimensions that are sloppy
    information_share: float  # tr(I_gg) / tr(I): the group's part of the total information


@dataclass
class FisherReport:
    """Spectrum, metrics and attribution; serialisable to JSON with :meth:`to_dict`."""

    method: str
    n_params: int
    n_observations: int
    n_structures: int
    eigenvalues: list[float]
    metrics: dict[str, float | int | None]
    terms: list[GroupAttribution]
    groups: list[GroupAttribution]
    stiff_modes: list[dict]
    sloppy_modes: list[dict]
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def save_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write_text(json.dumps(self.to_dict(), indent=1, default=_json_default), path)

    def scalars(self, prefix: str = "fim/") -> dict[str, float]:
        """Finite scalar metrics for a logger."""
        result = {}
        for key, value in self.metrics.items():
            if isinstance(value, (int, float)) and value is not None and math.isfinite(float(value)):
                result[prefix + key] = float(value)
        for term in self.terms:
            if term.sloppy_fraction is not None:
                result[f"{prefix}sloppy_fraction/{term.name}"] = float(term.sloppy_fraction)
        return result

    def term(self, name: str) -> GroupAttribution:
        for t in self.terms:
            if t.name == name:
                return t
        raise KeyError(f"no term {name!r}; terms: {', '.join(t.name for t in self.terms)}")

    def format_table(self) -> str:
        """A plain-text summary: metrics, per-term attribution, extreme modes."""
        m = self.metrics
        lines = [f"Fisher information ({self.method}): {self.n_params} parameters, "
                 f"{self.n_observations} observations from {self.n_structures} structures"]
        rows = [
            ("lambda_max", m.get("lambda_max")), ("lambda_min", m.get("lambda_min")),
            ("condition number", m.get("condition_number")), ("spread (decades)", m.get("decades")),
            ("resolved spread (decades)", m.get("decades_resolved")),
            (f"sloppy directions (< {self.settings.get('sloppy_threshold', 0):g} lambda_max)", m.get("n_sloppy")),
            ("null directions", m.get("n_null")), ("effective dimension", m.get("effective_dimension")),
            ("participation ratio", m.get("participation_ratio")), ("unconstrained parameters", m.get("n_unconstrained")),
        ]
        width = max(len(r[0]) for r in rows)
        for label, value in rows:
            lines.append(f"  {label:<{width}}  {_fmt(value)}")
        lines.append("")
        header = f"  {'term':<20} {'params':>7} {'stiff share':>12} {'sloppy share':>13} {'sloppy frac':>12} {'info share':>11}"
        lines.append(header)
        lines.append("  " + "-" * (len(header) - 2))
        for t in self.terms:
            lines.append(f"  {t.name:<20} {t.n_params:>7d} {_fmt(t.stiff_share):>12} {_fmt(t.sloppy_share):>13} "
                         f"{_fmt(t.sloppy_fraction):>12} {_fmt(t.information_share):>11}")
        if self.stiff_modes:
            lines.append("")
            lines.append("  stiffest modes: " + "; ".join(
                f"{mode['eigenvalue']:.3g} ({mode['dominant_group']})" for mode in self.stiff_modes[:5]))
        if self.sloppy_modes:
            lines.append("  sloppiest modes: " + "; ".join(
                f"{mode['eigenvalue']:.3g} ({mode['dominant_group']})" for mode in self.sloppy_modes[:5]))
        return "\n".join(lines)


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    value = float(value)
    if not math.isfinite(value):
        return str(value)
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
        return f"{value:.3e}"
    return f"{value:.4g}"


def _json_default(value):
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    raise TypeError(type(value).__name__)


def _shares(vectors: torch.Tensor, codes: torch.Tensor, n_groups: int) -> torch.Tensor:
    """[n_groups, k] Σ_{a∈g} v_a² for every column of ``vectors`` [P, k]."""
    sq = vectors.pow(2)
    out = torch.zeros(n_groups, vectors.shape[1], dtype=vectors.dtype)
    return out.index_add_(0, codes, sq)


def _mode_summary(value: float, vector: torch.Tensor, index: ParameterIndex, top: int = 3) -> dict:
    terms, term_codes = index.term_index()
    groups, group_codes = index.group_index()
    term_share = _shares(vector[:, None], term_codes, len(terms))[:, 0]
    group_share = _shares(vector[:, None], group_codes, len(groups))[:, 0]
    order = torch.argsort(group_share, descending=True)
    coords = torch.argsort(vector.abs(), descending=True)[:top]
    return {
        "eigenvalue": float(value),
        "term_shares": {terms[i]: round(float(term_share[i]), 6) for i in range(len(terms))},
        "dominant_group": groups[int(order[0])],
        "group_shares": {groups[int(i)]: round(float(group_share[i]), 6) for i in order[:top] if float(group_share[i]) > 1e-6},
        "top_coordinates": {index.coordinate_name(int(c)): round(float(vector[c]), 6) for c in coords},
    }


def _attribution(
    labels: list[str], codes: torch.Tensor, stiff_vectors: torch.Tensor, top_vectors: torch.Tensor,
    n_sloppy: int | None, diagonal: torch.Tensor,
) -> list[GroupAttribution]:
    n = len(labels)
    sizes = torch.bincount(codes, minlength=n).to(torch.float64)
    stiff_captured = _shares(stiff_vectors, codes, n).sum(1) if stiff_vectors.shape[1] else torch.zeros(n, dtype=torch.float64)
    top_share = _shares(top_vectors, codes, n).mean(1) if top_vectors.shape[1] else torch.zeros(n, dtype=torch.float64)
    info = torch.zeros(n, dtype=torch.float64).index_add_(0, codes, diagonal)
    info = info / max(float(info.sum()), 1e-300)
    result = []
    for g, label in enumerate(labels):
        size = float(sizes[g])
        sloppy_dims = max(size - float(stiff_captured[g]), 0.0)
        result.append(GroupAttribution(
            name=label, n_params=int(size), stiff_share=float(top_share[g]),
            sloppy_share=(sloppy_dims / n_sloppy if n_sloppy else 0.0) if n_sloppy is not None else None,
            sloppy_fraction=min(1.0, sloppy_dims / size) if size and n_sloppy is not None else None,
            information_share=float(info[g]),
        ))
    return result


def spectrum_metrics(eigenvalues: torch.Tensor, n_params: int, sloppy_threshold: float) -> dict:
    """Metrics of a full spectrum (descending, length P; missing eigenvalues are zeros)."""
    lam = eigenvalues.clamp(min=0.0)
    lam_max = float(lam[0]) if lam.numel() else 0.0
    if lam_max <= 0:
        return {"lambda_max": 0.0, "lambda_min": 0.0, "condition_number": None, "decades": None, "decades_resolved": None,
                "n_sloppy": n_params, "n_null": n_params, "effective_dimension": 0.0, "participation_ratio": 0.0, "trace": 0.0}
    floor = lam_max * max(n_params, 1) * EPS64
    above = lam[lam > floor]
    lam_min = float(lam[-1])
    alpha = sloppy_threshold * lam_max
    return {
        "lambda_max": lam_max,
        "lambda_min": lam_min,
        "condition_number": lam_max / max(lam_min, floor),
        "decades": math.log10(lam_max / max(lam_min, floor)),
        "decades_resolved": math.log10(lam_max / float(above[-1])),
        "n_sloppy": int((lam < sloppy_threshold * lam_max).sum()),
        "n_null": int((lam <= floor).sum()),
        "effective_dimension": float((lam / (lam + alpha)).sum()),
        "participation_ratio": float(lam.sum() ** 2 / (lam.pow(2).sum())),
        "trace": float(lam.sum()),
    }


def _exact(potential, graphs, weights, sloppy_threshold, n_modes, max_atoms):
    jac = compute_jacobian(potential, graphs, weights, max_atoms=max_atoms)
    J = jac.matrix.to(torch.float64).cpu()
    M, P = J.shape
    if M >= P:
        lam, V = torch.linalg.eigh(J.T @ J)
        lam, V = lam.flip(0), V.flip(1)
    else:  # fewer observations than parameters: the SVD gives the M non-trivial directions
        _, S, Vh = torch.linalg.svd(J, full_matrices=False)
        lam = torch.cat([S.pow(2), torch.zeros(P - S.numel(), dtype=torch.float64)])
        V = Vh.T
    diagonal = J.pow(2).sum(0)
    metrics = spectrum_metrics(lam, P, sloppy_threshold)
    lam_max = float(lam[0]) if P else 0.0
    stiff = int((lam[: V.shape[1]] >= sloppy_threshold * lam_max).sum()) if lam_max > 0 else 0
    stiff_vectors = V[:, :stiff]
    top_vectors = V[:, : min(n_modes, V.shape[1])]
    sloppy_cols = list(range(stiff, V.shape[1]))[-n_modes:][::-1]  # the sloppiest computed directions, sloppiest first
    return jac.index, lam, V, metrics, stiff_vectors, top_vectors, sloppy_cols, diagonal, M


def _matrix_free(potential, graphs, weights, sloppy_threshold, n_modes, max_atoms, top_k, seed):
    op = FisherOperator(potential, graphs, weights, max_atoms=max_atoms)
    P = op.size
    result = lanczos_topk(op.matvec, P, top_k, seed=seed, dtype=potential.e0.dtype, device=potential.e0.device)
    lam = result.eigenvalues.to(torch.float64).cpu().clamp(min=0.0)
    V = result.eigenvectors.to(torch.float64).cpu()
    trace, trace_sq = op.hutchinson(num_probes=8, seed=seed)
    lam_max = float(lam[0]) if lam.numel() else 0.0
    stiff_mask = lam >= sloppy_threshold * lam_max
    all_stiff_found = bool(lam.numel() < top_k or not stiff_mask.all())
    n_stiff = int(stiff_mask.sum())
    # diagonal of I (information per parameter) by Hutchinson is noisy; use the Ritz reconstruction
    diagonal = (V.pow(2) * lam).sum(1)
    metrics = {
        "lambda_max": lam_max,
        "lambda_k": float(lam[-1]) if lam.numel() else 0.0,
        "top_k": int(lam.numel()),
        "decades_top_k": math.log10(lam_max / float(lam[-1])) if lam.numel() and float(lam[-1]) > 0 else None,
        "n_sloppy": (P - n_stiff) if all_stiff_found else None,
        "n_sloppy_upper_bound": P - n_stiff,
        "effective_dimension_lower_bound": float((lam / (lam + sloppy_threshold * lam_max)).sum()) if lam_max > 0 else 0.0,
        "participation_ratio": trace**2 / trace_sq if trace_sq > 0 else 0.0,
        "trace": trace,
        "lanczos_iterations": result.iterations,
        "lanczos_converged": int(result.converged),
        "matvecs": op.matvec_count,
    }
    stiff_vectors = V[:, :n_stiff]
    top_vectors = V[:, : min(n_modes, V.shape[1])]
    return op.index, lam, V, metrics, stiff_vectors, top_vectors, [], diagonal, op.num_observables, all_stiff_found


def analyse(
    potential: nn.Module,
    graphs: Sequence,
    weights: FisherWeights | dict | None = None,
    method: str = "auto",
    sloppy_threshold: float = 1e-6,
    n_modes: int = 5,
    top_k: int = 20,
    max_exact_params: int = 20000,
    max_exact_entries: int = 150_000_000,
    max_atoms: int | None = None,
    seed: int = 0,
    copy: bool = True,
) -> FisherReport:
    """Fisher-information report of ``potential`` on the probe ``graphs``.

    Args:
        weights: residual weights (:class:`FisherWeights` or a dict of its fields).
        method: ``"exact"`` (J formed, full spectrum), ``"lanczos"`` (matrix-free top-k) or
            ``"auto"`` (exact while P <= ``max_exact_params`` and M·P <= ``max_exact_entries``).
        sloppy_threshold: a direction is sloppy when λ/λ_max is below this.
        n_modes: number of stiffest/sloppiest modes described (and used for ``stiff_share``).
        top_k: eigenpairs computed by the matrix-free method.
        max_atoms: chunk size in atoms (default: one structure per chunk for the exact
            Jacobian, 128 atoms for the matrix-free products).
        copy: analyse a float64 copy (default); False uses the model as given.
    """
    start = time.perf_counter()
    weights = FisherWeights.from_any(weights)
    model = float64_copy(potential) if copy else potential
    index = ParameterIndex.from_model(model)
    P = index.size
    M = count_observables(graphs, weights)
    if method == "auto":
        method = "exact" if P <= max_exact_params and M * P <= max_exact_entries else "lanczos"
    if method not in ("exact", "lanczos"):
        raise ValueError(f"method must be auto, exact or lanczos, got {method!r}")
    if P == 0:
        raise ValueError("the model has no trainable parameters")
    if method == "exact":
        index, lam, V, metrics, stiff_vectors, top_vectors, sloppy_cols, diagonal, M = _exact(
            model, graphs, weights, sloppy_threshold, n_modes, max_atoms or 1)
        n_sloppy = metrics["n_sloppy"]
    else:
        index, lam, V, metrics, stiff_vectors, top_vectors, sloppy_cols, diagonal, M, complete = _matrix_free(
            model, graphs, weights, sloppy_threshold, n_modes, max_atoms or 128, top_k, seed)
        n_sloppy = metrics["n_sloppy"] if complete else None
    metrics["n_unconstrained"] = int((diagonal <= float(diagonal.max()) * EPS64).sum()) if diagonal.numel() and float(diagonal.max()) > 0 else P
    terms, term_codes = index.term_index()
    groups, group_codes = index.group_index()
    report = FisherReport(
        method=method,
        n_params=P,
        n_observations=int(M),
        n_structures=len(graphs),
        eigenvalues=[float(x) for x in lam],
        metrics=metrics,
        terms=_attribution(terms, term_codes, stiff_vectors, top_vectors, n_sloppy, diagonal),
        groups=_attribution(groups, group_codes, stiff_vectors, top_vectors, n_sloppy, diagonal),
        stiff_modes=[_mode_summary(float(lam[k]), V[:, k], index) for k in range(top_vectors.shape[1])],
        sloppy_modes=[_mode_summary(float(lam[k]), V[:, k], index) for k in sloppy_cols],
        settings={"weights": asdict(weights), "sloppy_threshold": sloppy_threshold, "n_modes": n_modes,
                  "top_k": top_k if method == "lanczos" else None},
    )
    report.metrics["seconds"] = time.perf_counter() - start
    return report
