"""Linearised (Laplace / delta-method) uncertainty from the Fisher information of a fitted model.

Noise model: every label is the model output plus Gaussian noise whose variance depends on
the property, σ²_E (energy per atom), σ²_F (force component), σ²_S (stress component),
estimated from the training residuals. The Fisher information is then
F = Σ_m g_m g_mᵀ / σ²_{kind(m)} (g_m = ∂y_m/∂θ) and the parameter covariance is the
regularised inverse C = (F + α·1)⁻¹, with α = ``ridge``·λ_max(F) a weak Gaussian prior that
keeps directions the data never constrain finite. A prediction y(θ) has variance g C gᵀ.

C is stored as the eigenpairs (λ_k, v_k) of F with λ_k above ``keep``·α; the rest of
parameter space is treated as unconstrained (variance 1/α), which changes no variance by
more than a fraction ``keep``:

    var(y) = Σ_k (g·v_k)² / (λ_k + α) + (‖g‖² - Σ_k (g·v_k)²) / α.

Usage::

    unc = FisherUncertainty.fit(potential, train_graphs)       # float64 analysis of a copy
    unc.calibrate(potential, val_graphs)                         # optional: rescale std to the errors
    std = unc.predict_std(potential, graph_or_batch)             # energy_std [B], forces_std [N, 3], ...
    unc.save("uncertainty.pt"); unc = FisherUncertainty.load("uncertainty.pt")
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mlip_plugins.atomic_files import atomic_torch_save
from mlip_plugins.checkpoint import CheckpointError, load_torch_file
from mlip_plugins.fim.fisher import FisherWeights, compute_jacobian, float64_copy
from mlip_plugins.fim.parameters import ParameterIndex

FORMAT = "mlip-plugins/fisher-uncertainty-v1"
_KIND_NAMES = ("energy", "forces", "stress")


def _as_graph_list(data) -> list:
    if isinstance(data, (list, tuple)):
        return list(data)
    if hasattr(data, "to_data_list") and hasattr(data, "num_graphs") and getattr(data, "batch", None) is not None:
        return data.to_data_list()
    return [data]


def _subsample(graphs: Sequence, max_structures: int | None) -> list:
    graphs = list(graphs)
    if max_structures is None or len(graphs) <= max_structures:
        return graphs
    picks = np.linspace(0, len(graphs) - 1, max_structures).round().astype(int)
    return [graphs[i] for i in sorted(set(picks.tolist()))]


class FisherUncertainty:
    """Parameter covariance of a fitted potential and its propagation to energies and forces.

    Build it with :meth:`fit`; see the module docstring for the model.

    Attributes:
        eigenvalues: [r] kept eigenvalues of the noise-weighted FIM (descending).
        eigenvectors: [P, r] their eigenvectors.
        alpha: ridge (prior precision) added to the FIM.
        noise: residual variance per property (σ²_E per atom, σ²_F, σ²_S).
        scale: calibration factor per property (multiplies the predicted std; 1 by default).
        names, shapes: the parameter layout the covariance refers to.
    """

    def __init__(self, eigenvalues: torch.Tensor, eigenvectors: torch.Tensor, alpha: float, noise: dict,
                 names: list[str], shapes: list[tuple[int, ...]], scale: dict | None = None, info: dict | None = None):
        self.eigenvalues = eigenvalues.to(torch.float64)
        self.eigenvectors = eigenvectors.to(torch.float64)
        self.alpha = float(alpha)
        self.noise = {k: float(v) for k, v in noise.items()}
        self.names = list(names)
        self.shapes = [tuple(s) for s in shapes]
        self.scale = {"energy": 1.0, "forces": 1.0, "stress": 1.0, **(scale or {})}
        self.info = dict(info or {})

    # -- fitting -----------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        potential: nn.Module,
        graphs: Sequence,
        ridge: float = 1e-4,
        keep: float = 1e-3,
        properties: Sequence[str] = ("energy", "forces"),
        noise: dict | None = None,
        max_structures: int | None = 64,
        max_atoms: int = 1,
    ) -> "FisherUncertainty":
        """Fit the covariance on (a subsample of) the training ``graphs``.

        Args:
            ridge: α / λ_max of the noise-weighted FIM (prior precision, relative). On the
                default model and dataset (benchmarks/fim_uncertainty.py) a larger ridge ranks
                force errors better (Spearman 0.39 at 1e-8, 0.42 at 1e-6, 0.47 at 1e-4, 0.54 at
                1e-2) while energy ranking is weak at any ridge; 1e-4 is the compromise.
            keep: eigenpairs with λ < keep·α are folded into the unconstrained part.
            properties: labelled properties whose residuals define the FIM.
            noise: fixed noise variances per property instead of the training residuals.
            max_structures: evenly spaced subsample of ``graphs`` (memory ~ P x observations).
        """
        graphs = _subsample(graphs, max_structures)
        unit = FisherWeights(**{k: (1.0 if k in properties else 0.0) for k in _KIND_NAMES}, labelled_only=True)
        model = float64_copy(potential)
        jac = compute_jacobian(model, graphs, unit, max_atoms=max_atoms)
        if jac.matrix.shape[0] == 0:
            raise ValueError("uncertainty fit: no labelled observables in the given structures")
        # J rows carry sqrt(structure weight); residuals likewise
        variances = dict(noise or {})
        for code, kind in enumerate(_KIND_NAMES):
            rows = jac.kinds == code
            if kind not in variances and bool(rows.any()):  # mean squared (weighted) residual
                variances[kind] = max(float(jac.residuals[rows].pow(2).mean()), 1e-12)
        inv_sigma = torch.tensor([1.0 / math.sqrt(variances.get(k, 1.0)) for k in _KIND_NAMES], dtype=torch.float64)
        J = jac.matrix.to(torch.float64).cpu() * inv_sigma[jac.kinds.cpu()].unsqueeze(1)
        M, P = J.shape
        if P <= M:
            lam, V = torch.linalg.eigh(J.T @ J)
            lam, V = lam.flip(0).clamp(min=0.0), V.flip(1)
        else:
            _, S, Vh = torch.linalg.svd(J, full_matrices=False)
            lam, V = S.pow(2), Vh.T
        lam_max = float(lam[0]) if lam.numel() else 1.0
        alpha = max(ridge * lam_max, 1e-300)
        kept = lam > keep * alpha
        info = {"n_observations": M, "n_params": P, "n_structures": len(graphs), "ridge": ridge, "keep": keep,
                "lambda_max": lam_max, "rank_kept": int(kept.sum()), "properties": list(properties)}
        return cls(lam[kept].clone(), V[:, kept].clone(), alpha, variances, jac.index.names,
                   jac.index.shapes, info=info)

    def with_ridge(self, ridge: float) -> "FisherUncertainty":
        """A copy with prior precision α = ``ridge``·λ_max (the eigenpairs are reused, so a
        ridge well below the fitted one keeps its accuracy only if fitted with small ``keep``)."""
        alpha = max(ridge * float(self.info.get("lambda_max", 1.0)), 1e-300)
        info = {**self.info, "ridge": ridge}
        return FisherUncertainty(self.eigenvalues, self.eigenvectors, alpha, self.noise, self.names, self.shapes,
                                 scale=dict(self.scale), info=info)

    # -- prediction --------------------------------------------------------------------
    def _check_layout(self, index: ParameterIndex) -> None:
        if index.names != self.names or [tuple(s) for s in index.shapes] != self.shapes:
            raise ValueError("uncertainty: the potential's trainable parameters differ from those the covariance "
                             f"was fitted for ({index.size} vs {sum(math.prod(s) for s in self.shapes)} parameters)")

    def variance_of_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """[M] g C gᵀ for output gradients ``rows`` [M, P]."""
        rows = rows.to(device=self.eigenvectors.device, dtype=torch.float64)
        projections = rows @ self.eigenvectors  # [M, r]
        captured = projections.pow(2)
        stiff = (captured / (self.eigenvalues + self.alpha)).sum(1)
        rest = (rows.pow(2).sum(1) - captured.sum(1)).clamp(min=0.0) / self.alpha
        return stiff + rest

    def predict_std(self, potential: nn.Module, data, stress: bool = False, max_atoms: int = 1) -> dict[str, torch.Tensor]:
        """Standard deviations of the predictions for a graph, a PyG batch or a list of graphs.

        Returns (float64 tensors, on the CPU):
            ``energy_std`` [B] total energy (eV), ``energy_per_atom_std`` [B] (eV/atom),
            ``forces_std`` [N, 3] per component (eV/Å), ``forces_std_atom`` [N] the norm
            sqrt(Σ_c var) per atom, and with ``stress=True`` ``stress_std`` [B, 6] (Voigt,
            zeros for non-periodic structures).
        """
        graphs = _as_graph_list(data)
        model = float64_copy(potential)
        weights = FisherWeights(energy=1.0, forces=1.0, stress=1.0 if stress else 0.0, labelled_only=False)
        jac = compute_jacobian(model, graphs, weights, max_atoms=max_atoms)
        self._check_layout(jac.index)
        var = self.variance_of_rows(jac.matrix).cpu()
        jac.kinds, jac.structure = jac.kinds.cpu(), jac.structure.cpu()
        natoms = torch.tensor([int(g.num_nodes) for g in graphs], dtype=torch.float64)
        energy_rows = jac.kinds == 0
        per_atom = torch.zeros(len(graphs), dtype=torch.float64)
        per_atom[jac.structure[energy_rows]] = var[energy_rows].sqrt() * self.scale["energy"]
        force_rows = jac.kinds == 1
        forces = var[force_rows].sqrt().view(-1, 3) * self.scale["forces"]
        result = {
            "energy_std": per_atom * natoms,
            "energy_per_atom_std": per_atom,
            "forces_std": forces,
            "forces_std_atom": forces.pow(2).sum(1).sqrt(),
        }
        if stress:
            stress_std = torch.zeros(len(graphs), 6, dtype=torch.float64)
            rows = jac.kinds == 2
            if bool(rows.any()):
                stress_std[jac.structure[rows]] = var[rows].sqrt().view(-1, 6) * self.scale["stress"]
            result["stress_std"] = stress_std
        return result

    # -- calibration and assessment ----------------------------------------------------
    def errors_and_std(self, potential: nn.Module, graphs: Sequence) -> dict[str, np.ndarray]:
        """Absolute errors and predicted std on labelled ``graphs``: energy per atom and per-atom force norms."""
        from torch_geometric.data import Batch

        energy_err, energy_std, force_err, force_std = [], [], [], []
        model = float64_copy(potential)
        for graph in graphs:
            std = self.predict_std(model, graph)
            with torch.enable_grad():
                out = model(Batch.from_data_list([graph]).to(model.e0.device), compute_forces=True)
            n = int(graph.num_nodes)
            if bool(getattr(graph, "has_energy", torch.tensor([True])).item()):
                energy_err.append(abs(float(out["energy"][0].detach()) - float(graph.energy.view(-1)[0])) / n)
                energy_std.append(float(std["energy_per_atom_std"][0]))
            if bool(getattr(graph, "has_forces", torch.tensor([True])).item()):
                diff = (out["forces"].detach().cpu() - graph.forces.to(torch.float64)).norm(dim=1)
                force_err.append(diff.numpy())
                force_std.append(std["forces_std_atom"].numpy())
        cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0)  # noqa: E731
        return {"energy_error": np.array(energy_err), "energy_std": np.array(energy_std),
                "forces_error": cat(force_err), "forces_std": cat(force_std)}

    def calibrate(self, potential: nn.Module, graphs: Sequence) -> dict[str, float]:
        """Rescale the std per property so that mean(error² / std²) = 1 on held-out ``graphs``."""
        old = dict(self.scale)
        self.scale.update({"energy": 1.0, "forces": 1.0})
        data = self.errors_and_std(potential, graphs)
        for key, components in (("energy", 1), ("forces", 3)):
            err, std = data[f"{key}_error"], data[f"{key}_std"]
            ok = std > 0
            if ok.any():
                self.scale[key] = float(np.sqrt(np.mean(err[ok] ** 2 / std[ok] ** 2)))
            else:
                self.scale[key] = old.get(key, 1.0)
        return dict(self.scale)

    def assess(self, potential: nn.Module, graphs: Sequence) -> dict[str, float]:
        """How well the std ranks the actual errors on held-out ``graphs`` (Spearman ρ) and
        how well it is calibrated (fraction of errors within 1 and 2 predicted std)."""
        from scipy.stats import spearmanr

        data = self.errors_and_std(potential, graphs)
        result: dict[str, float] = {}
        for key in ("energy", "forces"):
            err, std = data[f"{key}_error"], data[f"{key}_std"]
            if err.size > 2:
                result[f"{key}_spearman"] = float(spearmanr(std, err).statistic)
                # energy: |error| vs 1 std (1 component); forces: error norm vs norm of the 3 std
                result[f"{key}_within_1std"] = float(np.mean(err <= std))
                result[f"{key}_within_2std"] = float(np.mean(err <= 2 * std))
                result[f"{key}_count"] = int(err.size)
        return result

    # -- persistence -------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "format": FORMAT,
            "eigenvalues": self.eigenvalues,
            "eigenvectors": self.eigenvectors,
            "alpha": torch.tensor(self.alpha, dtype=torch.float64),
            "noise": {k: torch.tensor(v, dtype=torch.float64) for k, v in self.noise.items()},
            "scale": {k: torch.tensor(v, dtype=torch.float64) for k, v in self.scale.items()},
            "names": list(self.names),
            "shapes": [list(s) for s in self.shapes],
            "info": {k: v for k, v in self.info.items() if isinstance(v, (int, float, str, list))},
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the covariance (tensors and plain containers only) atomically."""
        return atomic_torch_save(self.state_dict(), path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FisherUncertainty":
        """Read a file written by :meth:`save` (``weights_only`` loading: no pickled code)."""
        state = load_torch_file(path)
        if state.get("format") != FORMAT:
            raise CheckpointError(f"{path}: not a mlip-plugins uncertainty file (expected format {FORMAT})")
        return cls(
            state["eigenvalues"], state["eigenvectors"], float(state["alpha"]),
            {k: float(v) for k, v in state["noise"].items()}, state["names"], [tuple(s) for s in state["shapes"]],
            scale={k: float(v) for k, v in state["scale"].items()}, info=state.get("info"),
        )
