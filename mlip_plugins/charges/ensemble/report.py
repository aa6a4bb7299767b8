"""Per-atom state-weight reports: which atom is how ionic, and why.

:class:`StateWeights` holds one structure's solved ensemble as NumPy arrays. Its ``table()``
lists, per atom, the charge, the weight of each state and the grand-potential cost of each
state, Omega_ik = E_ik + mu q_k - min_k(...) (eV): the weights are softmax(-Omega / T), so
the cost column says why a state is (not) occupied. The state energy is split into the
measured free-atom value, the ion-pair stabilisation prior and the learned correction.
``plot()`` draws stacked bars of the weights and the charges.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from ase.data import chemical_symbols

from mlip_plugins.charges.ensemble.atomic_data import STATE_NAMES
from mlip_plugins.plotting import save_figure


@dataclass
class StateWeights:
    """One structure's ensemble (N atoms, K states), in eV and e."""

    symbols: list[str]
    state_charges: np.ndarray  # [K]
    weights: np.ndarray  # [N, K]
    charges: np.ndarray  # [N]
    reference_energies: np.ndarray  # [N, K]
    stabilisation: np.ndarray  # [N, 2] ion-pair prior (S^+ for cations, S^- for anions), eV
    corrections: np.ndarray  # [N, K]
    mask: np.ndarray  # [N, K]
    temperature: np.ndarray  # [N]
    chemical_potential: float
    total_charge: float

    @property
    def state_names(self) -> list[str]:
        return [STATE_NAMES[int(q)] for q in self.state_charges]

    @property
    def state_energies(self) -> np.ndarray:
        """[N, K] E_ik = reference - q_k^2 S_i^(sign q_k) + correction (prior scale folded into S)."""
        per_state = np.where(self.state_charges[None, :] > 0, self.stabilisation[:, :1], self.stabilisation[:, 1:])
        return self.reference_energies - per_state * self.state_charges[None, :] ** 2 + self.corrections

    @property
    def grand_costs(self) -> np.ndarray:
        """[N, K] Omega_ik - min_k Omega_ik with Omega_ik = E_ik + mu q_k (NaN for missing states)."""
        omega = self.state_energies + self.chemical_potential * self.state_charges[None, :]
        omega = np.where(self.mask, omega, np.nan)
        return omega - np.nanmin(omega, axis=1, keepdims=True)

    def table(self) -> str:
        """A plain-text table: charge, weights and grand-potential costs per atom."""
        names = self.state_names
        head = ["atom", "q (e)"] + [f"w[{n}]" for n in names] + [f"cost[{n}] eV" for n in names] + ["S+ eV", "S- eV", "T eV"]
        rows = []
        costs = self.grand_costs
        for i, symbol in enumerate(self.symbols):
            row = [f"{i}:{symbol}", f"{self.charges[i]:+.4f}"]
            row += [f"{w:.4f}" if m else "-" for w, m in zip(self.weights[i], self.mask[i])]
            row += [f"{c:.3f}" if m else "-" for c, m in zip(costs[i], self.mask[i])]
            row += [f"{self.stabilisation[i, 0]:.3f}", f"{self.stabilisation[i, 1]:.3f}", f"{self.temperature[i]:.3f}"]
            rows.append(row)
        widths = [max(len(h), *(len(r[c]) for r in rows)) for c, h in enumerate(head)]
        lines = ["  ".join(h.rjust(w) for h, w in zip(head, widths))]
        lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in rows]
        lines.append(
            f"mu = {self.chemical_potential:.4f} eV; total charge {self.charges.sum():+.6f} e "
            f"(target {self.total_charge:+g}); cost = E_k + mu q_k - min, weight ~ exp(-cost / T); "
            f"E_k = measured state energy - q_k^2 S(+ for cations, - for anions: ion-pair prior) + learned correction"
        )
        return "\n".join(lines)

    def most_ionic(self) -> int:
        """Index of the atom with the largest |q|."""
        return int(np.argmax(np.abs(self.charges)))

    def plot(self, path: str | Path, title: str | None = None) -> Path:
        """Stacked bars of the state weights per atom (top) and the charges (bottom); returns the path."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        n = len(self.symbols)
        fig, (ax_w, ax_q) = plt.subplots(2, 1, figsize=(max(4.0, 0.5 * n + 2), 5), sharex=True, height_ratios=[2, 1])
        x = np.arange(n)
        bottom = np.zeros(n)
        colours = {2: "#7b3294", 1: "#d7191c", 0: "#bababa", -1: "#2c7bb6"}
        for k, name in enumerate(self.state_names):
            ax_w.bar(x, self.weights[:, k], bottom=bottom, label=f"{name} (q={int(self.state_charges[k]):+d})", color=colours[int(self.state_charges[k])])
            bottom += self.weights[:, k]
        ax_w.set_ylabel("state weight d_ik")
        ax_w.set_ylim(0, 1)
        ax_w.legend(fontsize=7, loc="upper right")
        ax_w.set_title(title or f"atomic-state ensemble, mu = {self.chemical_potential:.2f} eV", fontsize=9)
        ax_q.bar(x, self.charges, color=["#d7191c" if q > 0 else "#2c7bb6" for q in self.charges])
        ax_q.axhline(0, color="k", lw=0.5)
        ax_q.set_ylabel("charge (e)")
        ax_q.set_xticks(x, [f"{i}:{s}" for i, s in enumerate(self.symbols)], rotation=90 if n > 12 else 0)
        fig.tight_layout()
        return save_figure(fig, path, dpi=120)


def state_weights_of(output, graph, structure: int = 0) -> StateWeights:
    """Extract structure ``structure`` of a batch from an :class:`~mlip_plugins.charges.ensemble.charge_model.EnsembleOutput`."""
    select = (graph.batch == structure).nonzero().view(-1)

    def arr(t: torch.Tensor) -> np.ndarray:
        return t.detach().to(torch.float64).cpu().numpy()

    result = output.result
    return StateWeights(
        symbols=[chemical_symbols[int(z)] for z in graph.z[select]],
        state_charges=arr(result.state_charges),
        weights=arr(result.weights[select]),
        charges=arr(result.charges[select]),
        reference_energies=arr(output.reference_energies[select]),
        stabilisation=arr(output.stabilisation[select]),
        corrections=arr(output.corrections[select]),
        mask=result.mask[select].cpu().numpy(),
        temperature=arr(result.temperature[select]),
        chemical_potential=float(result.chemical_potential[structure]),
        total_charge=float(graph.total_charge[structure]),
    )
