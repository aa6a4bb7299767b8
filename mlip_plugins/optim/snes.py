"""Separable natural evolution strategy (SNES; Schaul et al. 2011) as GPUMD trains NEP.

The search distribution is a diagonal Gaussian N(mu, sigma^2) over a flat parameter vector.
Each generation:

    s_k ~ N(0, I),  z_k = mu + sigma * s_k                       k = 1..P (population)
    rank the z_k by fitness (lower is better); utility of rank k:
        u_k = max(0, ln(P/2 + 1) - ln k) / sum_j max(0, ln(P/2 + 1) - ln j) - 1/P
    mu    <- mu + sigma * sum_k u_k s_k                          (eta_mu = 1)
    sigma <- min(sigma * exp(eta_sigma * sum_k u_k (s_k^2 - 1)), 1)
    eta_sigma = (3 + ln(N / G)) / (5 sqrt(N / G)) / 2           (GPUMD's, N parameters, G elements)

**Per-group ranking (NEP4):** parameters may be split into groups, each ranked by its own
fitness column: GPUMD ranks the variables of element t (its network and the descriptor
coefficients of pairs centred on t) by the loss on structures that contain t, and the shared
output bias by the loss on all structures. :meth:`SNES.tell` takes fitness [P, G] and a
group index per parameter.

Pure torch on flat vectors; :func:`minimize` runs it on any ``loss(z) -> [G]`` function.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def rank_utilities(population: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """u_k for ranks k = 1..P (best first); they sum to zero."""
    ranks = torch.arange(1, population + 1, dtype=dtype, device=device)
    raw = torch.clamp(math.log(population / 2.0 + 1.0) - torch.log(ranks), min=0.0)
    return raw / raw.sum() - 1.0 / population


def default_eta_sigma(num_parameters: int, num_elements: int = 1) -> float:
    """GPUMD's step size of sigma: (3 + ln(N/G)) / (5 sqrt(N/G)) / 2."""
    n = max(1.0, num_parameters / max(1, num_elements))
    return (3.0 + math.log(n)) / (5.0 * math.sqrt(n)) / 2.0


class SNES:
    """SNES state (mu, sigma) with ask/tell, on flat vectors.

    Args:
        mu: initial mean [N] (copied).
        sigma0: initial standard deviation (scalar or [N]).
        population: samples per generation (P).
        eta_sigma: step size of sigma (default: GPUMD's, from N and ``num_elements``).
        groups: [N] long, the ranking group of every parameter (default: one group).
        num_elements: G in GPUMD's eta_sigma (the number of element types).
        seed: seed of the sampling generator (identical on every process for DDP).
    """

    def __init__(
        self,
        mu: torch.Tensor,
        sigma0: float | torch.Tensor = 0.1,
        population: int = 50,
        eta_sigma: float | None = None,
        groups: torch.Tensor | None = None,
        num_elements: int = 1,
        seed: int = 0,
    ):
        if population < 2:
            raise ValueError(f"SNES needs a population of at least 2, got {population}")
        self.mu = mu.detach().clone().reshape(-1)
        self.sigma = torch.broadcast_to(torch.as_tensor(sigma0, dtype=self.mu.dtype, device=self.mu.device), self.mu.shape).clone()
        self.population = int(population)
        self.eta_sigma = float(eta_sigma) if eta_sigma is not None else default_eta_sigma(self.mu.numel(), num_elements)
        if groups is None:
            groups = torch.zeros(self.mu.numel(), dtype=torch.long)
        groups = torch.as_tensor(groups, dtype=torch.long, device=self.mu.device).reshape(-1)
        if groups.shape != self.mu.shape:
            raise ValueError(f"groups: expected {self.mu.numel()} entries, got {groups.numel()}")
        self.groups = groups
        self.num_groups = int(groups.max()) + 1
        self.utilities = rank_utilities(self.population, self.mu.dtype, self.mu.device)
        self.generator = torch.Generator(device=self.mu.device).manual_seed(int(seed))
        self._noise: torch.Tensor | None = None
        self.generation = 0

    def ask(self) -> torch.Tensor:
        """Sample the population: [P, N]."""
        self._noise = torch.randn(self.population, self.mu.numel(), generator=self.generator, dtype=self.mu.dtype, device=self.mu.device)
        return self.mu + self.sigma * self._noise

    def tell(self, fitness: torch.Tensor) -> torch.Tensor:
        """Update mu and sigma from the fitness of the last :meth:`ask` ([P] or [P, G], lower is
        better). Returns the index of the best sample of group 0 (or of the only group)."""
        if self._noise is None:
            raise RuntimeError("SNES.tell called before ask")
        fitness = torch.as_tensor(fitness, dtype=self.mu.dtype, device=self.mu.device)
        if fitness.dim() == 1:
            fitness = fitness.unsqueeze(1)
        if fitness.shape[0] != self.population or fitness.shape[1] not in (1, self.num_groups):
            raise ValueError(f"fitness: expected [{self.population}] or [{self.population}, {self.num_groups}], got {tuple(fitness.shape)}")
        fitness = torch.nan_to_num(fitness, nan=float("inf"))
        noise = self._noise
        # weight[k, g] = utility of sample k's rank in group g's ordering
        order = torch.argsort(fitness, dim=0, stable=True)  # [P, G]: order[r, g] = sample of rank r
        weights = torch.empty_like(fitness)
        weights.scatter_(0, order, self.utilities.unsqueeze(1).expand_as(fitness).contiguous())
        per_parameter = weights[:, self.groups] if fitness.shape[1] > 1 else weights.expand(-1, noise.shape[1])
        grad_mu = (per_parameter * noise).sum(0)
        grad_sigma = (per_parameter * (noise * noise - 1.0)).sum(0)
        self.mu = self.mu + self.sigma * grad_mu
        self.sigma = torch.clamp(self.sigma * torch.exp(self.eta_sigma * grad_sigma), max=1.0)
        self._noise = None
        self.generation += 1
        return order[0, 0]

    def state_dict(self) -> dict:
        return {"mu": self.mu, "sigma": self.sigma, "generation": self.generation, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.mu = state["mu"].to(self.mu)
        self.sigma = state["sigma"].to(self.sigma)
        self.generation = int(state["generation"])
        self.generator.set_state(state["generator"])


def minimize(
    loss: Callable[[torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    generations: int = 1000,
    callback: Callable[[int, torch.Tensor, float], None] | None = None,
    **snes_kwargs,
) -> tuple[torch.Tensor, float, SNES]:
    """Minimise ``loss(z) -> scalar or [G]`` from ``x0`` with SNES.

    Returns the best sample seen, its (group-0) loss and the SNES state.
    """
    snes = SNES(x0, **snes_kwargs)
    best, best_value = x0.detach().clone(), float("inf")
    for generation in range(generations):
        samples = snes.ask()
        fitness = torch.stack([torch.as_tensor(loss(z)).reshape(-1) for z in samples])
        index = int(snes.tell(fitness))
        value = float(fitness[index, 0])
        if value < best_value:
            best, best_value = samples[index].clone(), value
        if callback is not None:
            callback(generation, samples[index], value)
    return best, best_value, snes
