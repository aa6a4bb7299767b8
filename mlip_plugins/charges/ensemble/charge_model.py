"""The ``ensemble`` charge model: atomic-state ensemble charges with chemical-potential equalisation.

Plugin of group ``mlip_plugins.charge_models``: ``EnsembleChargeModel(in_dim, num_species, **cfg)``,
``forward(features [N, D], graph) -> {"charges": [N], "state_weights": [N, K], "ensemble_energy": [N]}``
whose charges sum per structure to ``graph.total_charge`` exactly. State energies per atom (eV, relative to the neutral atom):

    E_ik = E_k^ref(Z_i)             measured IP / EA (:mod:`mlip_plugins.charges.ensemble.atomic_data`)
         - q_k^2 S_i^(sign q_k)     ion-pair stabilisation prior (:mod:`.ion_pair_prior`)
         + Delta_k(x_i) - Delta_k(0) learned, environment-dependent correction (per element MLP
                                    of the descriptor features x_i, zero for an isolated atom)

and the weights are the grand-canonical occupations at a learnable per-element electronic
temperature (:mod:`mlip_plugins.charges.ensemble.ensemble`). With zero corrections (the initial state,
or ``in_dim=0``) the model gives the physics-only charges of
:func:`mlip_plugins.charges.ensemble.ensemble_charges`.

Besides the charges, :meth:`EnsembleChargeModel.ensemble` returns the weights (a latent
embedding of K interpretable numbers per atom, for a readout) and :meth:`ensemble_energy` the
per-atom ensemble free energy sum_k d_ik (E_k^ref + Delta_ik) + T_i sum_k d_ik ln d_ik (the
cost of ionising the atoms; the Coulomb energy of the charges is the long-range solver's).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from mlip_plugins.graph import AtomicGraph
from mlip_plugins.charges.ensemble.atomic_data import (
    ATOMIC_STATE_DATA,
    DEFAULT_STATE_CHARGES,
    STATE_NAMES,
    check_state_charges,
    electron_affinity,
    ionisation_energy,
    state_table,
)
from mlip_plugins.charges.ensemble.ensemble import EnsembleResult, solve_ensemble
from mlip_plugins.charges.ensemble.ion_pair_prior import ion_pair_stabilisation
from mlip_plugins.nn import MLP

MAX_Z = max(ATOMIC_STATE_DATA)


@dataclass
class EnsembleOutput:
    """What the ensemble charge model computes for a batch (N atoms, K states)."""

    result: EnsembleResult
    reference_energies: torch.Tensor  # [N, K] measured free-atom state energies
    stabilisation: torch.Tensor  # [N, 2] ion-pair prior (S_i^+, S_i^-) in eV, times the prior scale
    corrections: torch.Tensor  # [N, K] learned environment corrections (eV)

    @property
    def charges(self) -> torch.Tensor:
        return self.result.charges

    @property
    def weights(self) -> torch.Tensor:
        return self.result.weights

    def energy(self) -> torch.Tensor:
        """[N] ensemble free energy with the intrinsic state energies (reference + learned)."""
        return self.result.free_energy(self.reference_energies + self.corrections)


def _conformance_spec(ref: str, config: dict) -> dict:
    descriptor = {"name": "radial", "n_max": 4, "basis_size": 5}
    return {"model": {"name": "electrostatic", "descriptor": descriptor, "readout": {"name": "linear"},
                      "charges": {"name": ref, **config}, "solver": {"name": "ewald"}}}


class EnsembleChargeModel(nn.Module):
    """Charges from atomic-state ensembles (cation / neutral / anion ...) and one mu per structure.

    Args:
        in_dim: feature dimension D of the descriptor (0: physics-only, no learned corrections).
        num_species: number of elements of the model (per-element temperature and corrections).
        states: state charges q_k = Z - N_k; any distinct subset of (2, 1, 0, -1) containing 0.
        temperature: initial electronic temperature of an isolated atom, T_i^0 (eV).
        temperature_range: (min, max) the learned T_i^0 is confined to (eV). The upper
            bound keeps dissociated atoms neutral: the residual charge of a dissociated pair is
            about exp(-(IP_A - EA_B) / (2T)) (NaCl: 6e-3 e at T = 0.15 eV).
        learn_temperature: make the per-element temperatures (T^0 and alpha) trainable.
        coupling_temperature: initial alpha (dimensionless) of the environment part of the
            temperature, T_i = T_i^0 + alpha_{Z_i} C_i with C_i = S_i^+ + S_i^- the ion-pair
            coupling of the prior (eV). Bonded atoms mix their states (fractional charges, the
            strongly interacting regime of Valone and Atlas) while an isolated atom keeps T^0;
            it also keeps the weights of condensed phases off saturation, so they can learn.
        hidden: hidden widths of the per-element correction MLP.
        activation: its activation.
        prior_scale: multiplier of the ion-pair stabilisation prior (0 switches it off).
        prior_cutoff: distance (Å) beyond which the prior vanishes; clamped to ``cutoff``. It must
            not exceed the cutoff of the graph's neighbour list (the prior would be truncated
            there): pass ``cutoff`` where the caller knows it.
        prior_switch_width: width (Å) of the smooth switch ending at ``prior_cutoff``.
        prior_pair_width: width (eV) of the soft step that decides whether a neighbour's ion pair
            is bound (Coulomb energy above IP - EA) and so stabilises the ion.
        cutoff: the graph's cutoff, if the caller knows it (the prior never reaches beyond it).
        max_solver_steps, newton_steps: chemical-potential solver settings (see ``solve_ensemble``).
    """

    conformance_elements = ("Na", "Cl")
    conformance_config = {"prior_cutoff": 4.0, "temperature": 0.12}
    conformance_energy_spec = classmethod(lambda cls, ref, config: _conformance_spec(ref, config))

    def __init__(
        self,
        in_dim: int,
        num_species: int,
        states: Sequence[int] = DEFAULT_STATE_CHARGES,
        temperature: float = 0.1,
        temperature_range: Sequence[float] = (0.02, 0.15),
        learn_temperature: bool = True,
        coupling_temperature: float = 0.1,
        hidden: Sequence[int] = (32,),
        activation_name: str = "silu",
        prior_scale: float = 1.0,
        prior_cutoff: float = 4.0,
        prior_switch_width: float = 1.0,
        prior_pair_width: float = 1.0,
        cutoff: float | None = None,
        max_solver_steps: int = 200,
        newton_steps: int = 2,
        **kwargs,
    ):
        super().__init__()
        activation_name = kwargs.pop("activation", activation_name)
        if kwargs:
            raise TypeError(f"EnsembleChargeModel got unexpected options: {', '.join(sorted(kwargs))}")
        self.state_charges = check_state_charges(states)
        self.in_dim = int(in_dim)
        self.num_species = int(num_species)
        t_min, t_max = (float(v) for v in temperature_range)
        if not 0 < t_min < t_max:
            raise ValueError(f"temperature_range must satisfy 0 < min < max, got {temperature_range}")
        if not t_min < float(temperature) < t_max:
            raise ValueError(f"temperature {temperature} must lie strictly inside temperature_range {temperature_range}")
        self.t_min, self.t_max = t_min, t_max
        fraction = (float(temperature) - t_min) / (t_max - t_min)
        raw = torch.full((self.num_species,), math.log(fraction / (1.0 - fraction)), dtype=torch.float64)
        if coupling_temperature < 0:
            raise ValueError(f"coupling_temperature must be >= 0, got {coupling_temperature}")
        # alpha = softplus(raw); a zero alpha is kept exactly zero (no environment temperature)
        self.use_coupling_temperature = coupling_temperature > 0
        alpha = max(float(coupling_temperature), 1e-12)
        alpha_raw = torch.full((self.num_species,), alpha + math.log(-math.expm1(-alpha)), dtype=torch.float64)
        if learn_temperature:
            self.temperature_raw = nn.Parameter(raw)
            self.coupling_raw = nn.Parameter(alpha_raw)
        else:
            self.register_buffer("temperature_raw", raw)
            self.register_buffer("coupling_raw", alpha_raw)
        self.prior_scale = float(prior_scale)
        self.prior_cutoff = float(prior_cutoff) if cutoff is None else min(float(prior_cutoff), float(cutoff))
        self.prior_switch_width = min(float(prior_switch_width), self.prior_cutoff)
        self.prior_pair_width = float(prior_pair_width)
        self.max_solver_steps = int(max_solver_steps)
        self.newton_steps = int(newton_steps)
        energies, mask = state_table(range(1, MAX_Z + 1), self.state_charges)
        # row 0 (Z = 0) is a placeholder so the table is indexed by atomic number
        self.register_buffer("reference_table", torch.cat([torch.zeros(1, len(self.state_charges), dtype=torch.float64), energies]), persistent=False)
        self.register_buffer("mask_table", torch.cat([torch.zeros(1, len(self.state_charges), dtype=torch.bool), mask]), persistent=False)
        ip = [0.0] + [ionisation_energy(z) for z in range(1, MAX_Z + 1)]
        ea = [0.0] + [electron_affinity(z) for z in range(1, MAX_Z + 1)]
        self.register_buffer("ionisation_table", torch.tensor(ip, dtype=torch.float64), persistent=False)
        self.register_buffer("affinity_table", torch.tensor(ea, dtype=torch.float64), persistent=False)
        self.charged_states = [k for k, q in enumerate(self.state_charges) if q != 0]
        if self.in_dim > 0:
            widths = [self.in_dim, *[int(h) for h in hidden], len(self.charged_states)]
            self.correction = MLP(widths, activation_name, num_species=self.num_species)
            nn.init.zeros_(self.correction.layers[-1].weight)
        else:
            self.correction = None

    # -- pieces -------------------------------------------------------------------------------
    @property
    def state_names(self) -> list[str]:
        return [STATE_NAMES[q] for q in self.state_charges]

    def temperature(self, species: torch.Tensor, coupling: torch.Tensor | None = None) -> torch.Tensor:
        """[N] electronic temperature T_i = T^0_{s_i} + alpha_{s_i} C_i of each atom (eV)."""
        t = self.t_min + (self.t_max - self.t_min) * torch.sigmoid(self.temperature_raw.to(torch.float64))
        t = t[species]
        if coupling is not None and self.use_coupling_temperature:
            alpha = nn.functional.softplus(self.coupling_raw.to(torch.float64))
            t = t + alpha[species] * coupling
        return t

    def corrections(self, features: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        """[N, K] learned state-energy corrections, zero for the neutral state and for isolated atoms."""
        n, k = species.shape[0], len(self.state_charges)
        out = torch.zeros(n, k, dtype=torch.float64, device=species.device)
        if self.correction is None:
            return out
        if features.shape[-1] != self.in_dim:
            raise ValueError(f"ensemble charge model expects {self.in_dim} features per atom, got {features.shape[-1]}")
        isolated = self.correction(
            features.new_zeros(self.num_species, self.in_dim), torch.arange(self.num_species, device=species.device)
        )
        delta = self.correction(features, species) - isolated[species]
        return out.index_copy(1, torch.tensor(self.charged_states, device=species.device), delta.to(torch.float64))

    def _check_elements(self, z: torch.Tensor) -> None:
        if not torch.compiler.is_compiling() and bool(((z < 1) | (z > MAX_Z)).any()):
            bad = sorted({int(v) for v in z[(z < 1) | (z > MAX_Z)]})
            raise ValueError(f"the ensemble charge model has measured state energies for Z=1..{MAX_Z} only, got Z={bad}")

    # -- public -------------------------------------------------------------------------------
    def ensemble(self, features: torch.Tensor, graph: AtomicGraph) -> EnsembleOutput:
        """Solve the ensemble for a batch; returns charges, weights, energies and their parts."""
        z = graph.z
        self._check_elements(z)
        reference = self.reference_table[z]
        mask = self.mask_table[z]
        charges_k = torch.tensor(self.state_charges, dtype=torch.float64, device=z.device)
        if self.prior_scale != 0.0:
            stabilisation = self.prior_scale * ion_pair_stabilisation(
                graph.edge_index,
                graph.edge_len,
                z,
                self.ionisation_table[z],
                self.affinity_table[z],
                graph.num_atoms,
                self.prior_cutoff,
                self.prior_switch_width,
                self.prior_pair_width,
            )
        else:
            stabilisation = torch.zeros(graph.num_atoms, 2, dtype=torch.float64, device=z.device)
        corrections = self.corrections(features, graph.species)
        # cations (q_k > 0) take S^+, anions S^-; the neutral state gets q_k^2 = 0
        per_state = torch.where(charges_k > 0, stabilisation[:, :1], stabilisation[:, 1:])
        energies = reference - per_state * charges_k**2 + corrections
        result = solve_ensemble(
            energies,
            charges_k,
            mask,
            self.temperature(graph.species, stabilisation.sum(-1) / self.prior_scale if self.prior_scale != 0.0 else None),
            graph.batch,
            graph.total_charge,
            graph.num_graphs,
            max_steps=self.max_solver_steps,
            newton_steps=self.newton_steps,
        )
        return EnsembleOutput(result=result, reference_energies=reference, stabilisation=stabilisation, corrections=corrections)

    def forward(self, features: torch.Tensor, graph: AtomicGraph) -> dict[str, torch.Tensor]:
        """``charges`` [N] with exact per-structure totals, plus ``state_weights`` [N, K] (the
        latent embedding) and ``ensemble_energy`` [N] (eV) as extras, in the dtype of positions.
        The ``electrostatic`` energy model passes the extras up to the Potential's output; the
        ``ensemble_electrostatic`` model also feeds the weights to its readout and adds the energy."""
        output = self.ensemble(features, graph)
        dtype = graph.pos.dtype
        return {
            "charges": output.charges.to(dtype),
            "state_weights": output.weights.to(dtype),
            "ensemble_energy": output.energy().to(dtype),
        }

    def extra_repr(self) -> str:
        return (
            f"states={list(self.state_charges)}, in_dim={self.in_dim}, temperature_range=({self.t_min}, {self.t_max}), "
            f"prior_scale={self.prior_scale}, prior_cutoff={self.prior_cutoff}"
        )
