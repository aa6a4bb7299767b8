"""Atomic-state ensembles with chemical-potential equalisation: weights, charges, free energy.

Each atom i is a mixture of free-atom states k (cation, neutral, anion, ...) with charges
q_k = Z_i - N_k and environment-dependent energies E_ik (eV, relative to the neutral atom).
The weights are the grand-canonical (Boltzmann-like) occupations at an electronic temperature
T_i and one electron chemical potential mu per structure:

    d_ik = exp(-(E_ik - mu N_k) / T_i) / sum_k' exp(-(E_ik' - mu N_k') / T_i)
         = softmax_k(-(E_ik + mu q_k) / T_i)           (the mu Z_i term cancels)

so d_ik >= 0, sum_k d_ik = 1 and q_i = sum_k d_ik q_k lies between the smallest and largest
state charge. mu is fixed by sum_{i in structure} q_i(mu) = Q (the structure's total charge).
These weights minimise the ensemble free energy

    A = sum_i [ sum_k d_ik E_ik + T_i sum_k d_ik ln d_ik ]   subject to sum_i q_i = Q,

i.e. they realise chemical-potential equalisation (Valone; Atlas, J. Phys. Chem. A 125, 3760
(2021)). Because dq_i/dmu = -Var_i(q)/T_i <= 0, the total charge is monotone in mu and the
root is unique: it is found without gradient (Newton steps safeguarded by a bisection
bracket), then refined by Newton steps that autograd records. Started at the converged root, each recorded step reproduces the
implicit-function-theorem derivative dmu/dtheta = -(dC/dtheta) / (dC/dmu); two steps make
first and second derivatives exact (what force training needs), at the cost of two softmaxes.
Everything runs in float64 internally, whatever the model's dtype.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mlip_plugins.errors import MLIPError
from mlip_plugins.nn import sum_per_structure


class InfeasibleChargeError(MLIPError, ValueError):
    """A structure's total charge lies outside what its atoms' states can carry."""


@dataclass
class EnsembleResult:
    """The solved ensemble of a batch (N atoms, K states, B structures).

    Attributes:
        weights: [N, K] state occupations d_ik (the latent embedding).
        charges: [N] q_i = sum_k d_ik q_k; per-structure sums equal the total charges.
        chemical_potential: [B] electron chemical potential mu (eV).
        state_energies: [N, K] energies E_ik that set the weights (eV; 0 where masked).
        temperature: [N] electronic temperature T_i (eV).
        state_charges: [K] q_k.
        mask: [N, K] bool, the states each atom has.
    """

    weights: torch.Tensor
    charges: torch.Tensor
    chemical_potential: torch.Tensor
    state_energies: torch.Tensor
    temperature: torch.Tensor
    state_charges: torch.Tensor
    mask: torch.Tensor

    def free_energy(self, energies: torch.Tensor | None = None) -> torch.Tensor:
        """[N] sum_k d_ik E_ik + T_i sum_k d_ik ln d_ik with ``energies`` (default: the state energies)."""
        energies = self.state_energies if energies is None else energies
        mask = self.mask & (self.weights > 0)
        internal = torch.where(mask, self.weights * energies, torch.zeros_like(self.weights)).sum(-1)
        log_w = torch.log(torch.where(mask, self.weights, torch.ones_like(self.weights)))
        entropy_term = (self.weights * log_w).sum(-1)
        return internal + self.temperature * entropy_term


def _occupations(energies, state_charges, mask, temperature, mu_atom):
    logits = -(energies + mu_atom.unsqueeze(-1) * state_charges) / temperature.unsqueeze(-1)
    logits = logits.masked_fill(~mask, float("-inf"))
    return torch.softmax(logits, dim=-1)


def _charge_and_slope(energies, state_charges, mask, temperature, mu_atom):
    weights = _occupations(energies, state_charges, mask, temperature, mu_atom)
    q = (weights * state_charges).sum(-1)
    # Var_i(q) as sum_k d_ik (q_k - q_i)^2: no cancellation when one state dominates
    variance = (weights * (state_charges - q.unsqueeze(-1)) ** 2).sum(-1)
    slope = -variance / temperature  # dq_i / dmu
    return weights, q, slope


def check_feasible(
    state_charges: torch.Tensor, mask: torch.Tensor, batch: torch.Tensor, total_charge: torch.Tensor, num_graphs: int
) -> None:
    """Raise if a total charge is outside (sum of lowest, sum of highest) state charges."""
    big = torch.finfo(torch.float64).max
    qk = state_charges.to(torch.float64).expand(mask.shape)
    q_max = torch.where(mask, qk, torch.full_like(qk, -big)).amax(-1)
    q_min = torch.where(mask, qk, torch.full_like(qk, big)).amin(-1)
    upper = sum_per_structure(q_max, batch, num_graphs)
    lower = sum_per_structure(q_min, batch, num_graphs)
    total = total_charge.to(torch.float64)
    bad = ((total > upper - 1e-9) | (total < lower + 1e-9)).nonzero().view(-1)
    if bad.numel():
        b = int(bad[0])
        raise InfeasibleChargeError(
            f"structure {b}: total charge {float(total[b]):g} e cannot be carried by its atomic states "
            f"(possible range strictly inside ({float(lower[b]):g}, {float(upper[b]):g}) e); add states "
            f"(e.g. the dication) or check the total charge"
        )


def _root_of_total_charge(energies, qk, mask, temperature, batch, total_charge, num_graphs, max_steps, tolerance):
    """mu per structure with sum q(mu) = Q: Newton steps kept inside a shrinking bisection bracket."""
    finite = torch.where(mask, energies, torch.zeros_like(energies))
    span = 2.0 * float(finite.abs().max()) + 60.0 * float(temperature.max()) + 10.0 if finite.numel() else 10.0
    lo = torch.full((num_graphs,), -span, dtype=torch.float64, device=energies.device)
    hi = torch.full((num_graphs,), span, dtype=torch.float64, device=energies.device)
    mu = torch.zeros(num_graphs, dtype=torch.float64, device=energies.device)
    for _ in range(max_steps):
        _, q, slope = _charge_and_slope(energies, qk, mask, temperature, mu[batch])
        excess = sum_per_structure(q, batch, num_graphs) - total_charge
        if float(excess.abs().max()) <= tolerance:
            break
        # the total charge decreases with mu: too much positive charge -> the root lies above mu
        lo = torch.where(excess > 0, mu, lo)
        hi = torch.where(excess > 0, hi, mu)
        derivative = sum_per_structure(slope, batch, num_graphs)
        newton = mu - excess / torch.where(derivative < 0, derivative, torch.full_like(derivative, -1e-300))
        inside = (newton > lo) & (newton < hi) & torch.isfinite(newton)
        mu = torch.where(inside, newton, 0.5 * (lo + hi))
    return mu


def solve_ensemble(
    state_energies: torch.Tensor,
    state_charges: Sequence[int] | torch.Tensor,
    mask: torch.Tensor,
    temperature: torch.Tensor,
    batch: torch.Tensor,
    total_charge: torch.Tensor,
    num_graphs: int,
    max_steps: int = 200,
    tolerance: float = 1e-12,
    newton_steps: int = 2,
    check: bool = True,
) -> EnsembleResult:
    """Solve sum_i q_i(mu) = Q per structure and return the differentiable ensemble.

    Args:
        state_energies: [N, K] E_ik in eV (any float dtype; the solve runs in float64).
        state_charges: K state charges q_k.
        mask: [N, K] bool, False for states an atom does not have.
        temperature: [N] electronic temperatures T_i > 0 (eV).
        batch: [N] structure index of each atom.
        total_charge: [B] total charge of each structure (e).
        num_graphs: B.
        max_steps: most gradient-free root-finding iterations (safeguarded Newton).
        tolerance: |sum_i q_i - Q| (e) at which the gradient-free search stops.
        newton_steps: recorded Newton steps from the root (2 gives exact 1st and 2nd derivatives).
        check: raise :class:`InfeasibleChargeError` for an impossible total charge.
    """
    energies = state_energies.to(torch.float64)
    temperature = temperature.to(torch.float64)
    total_charge = total_charge.to(torch.float64)
    qk = torch.as_tensor(state_charges, dtype=torch.float64, device=energies.device)
    if bool((temperature <= 0).any()):
        raise ValueError("electronic temperatures must be positive")
    if check and not torch.compiler.is_compiling():
        check_feasible(qk, mask, batch, total_charge, num_graphs)
    with torch.no_grad():
        mu = _root_of_total_charge(
            energies.detach(), qk, mask, temperature.detach(), batch, total_charge, num_graphs, max_steps, tolerance
        )
    # Recorded Newton steps on C(mu, theta) - C(mu0, theta0): the subtracted constant (the
    # solver's residual, ~1e-12) keeps the value at mu0 exactly, so a nearly flat C (every atom
    # frozen in one state) cannot throw mu away, while the derivatives are those of the root.
    tiny = 1e-100  # floor of |dC/dmu|: below it every charge is frozen to ~1e-100 and d(1/x) stays finite
    offset = None
    for _ in range(newton_steps):
        _, q, slope = _charge_and_slope(energies, qk, mask, temperature, mu[batch])
        residual = sum_per_structure(q, batch, num_graphs) - total_charge
        offset = residual.detach() if offset is None else offset
        derivative = sum_per_structure(slope, batch, num_graphs).clamp(max=-tiny)
        mu = mu - (residual - offset) / derivative
    weights = _occupations(energies, qk, mask, temperature, mu[batch])
    charges = (weights * qk).sum(-1)
    return EnsembleResult(
        weights=weights,
        charges=charges,
        chemical_potential=mu,
        state_energies=energies.masked_fill(~mask, 0.0),
        temperature=temperature,
        state_charges=qk,
        mask=mask,
    )
