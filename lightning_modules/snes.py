"""``SNESModule``: GPUMD's evolution strategy as an alternative optimiser in the same trainer.

A subclass of :class:`~lightning_modules.module.PotentialModule` with manual optimisation:
each training step is one SNES generation on one batch (GPUMD: generation g uses batch
g mod n_batches). The population is evaluated with the model's own forward pass (energies,
forces by autograd, stress), so SNES and gradient training fit identical models on identical
data; validation, metrics, checkpoints and export are the parent's.

Fitness is GPUMD's ``lambda_e RMSE_E + lambda_f RMSE_F + lambda_v RMSE_V`` (energies per atom;
the lambdas are ``loss.energy/forces/stress``) plus NEP's L1/L2 regulariser. With
``per_element_ranking`` (NEP4), the variables of element t are ranked by the fitness on the
structures that contain t (plus the regulariser of those variables) and shared variables by the
fitness on all structures. The model holds the best sample of the latest generation (GPUMD's
"elite"); mu and sigma are buffers, so checkpoints resume the search. Config (``optimizer``)::

    {name: snes, population: 50, sigma0: 0.1, eta_sigma: null, per_element_ranking: true,
     init: model | uniform}

Under DDP every process draws the same samples (same seed) and the fitness is averaged across
processes before ranking, so all processes take the same step.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from lightning_modules.losses import errors
from lightning_modules.module import PotentialModule
from mlip_plugins.models.builder import ConfigError
from mlip_plugins.nep.model import NEPModel
from mlip_plugins.optim.snes import SNES

SNES_KEYS = {"name", "population", "sigma0", "eta_sigma", "per_element_ranking", "init", "seed", "lr", "weight_decay"}


def parameter_groups(potential: nn.Module) -> tuple[list[nn.Parameter], torch.Tensor, int]:
    """Trainable parameters, a ranking group per scalar, and the number of groups.

    Group t < S holds the variables that a model module declares as element t's (its
    ``element_parameter_owners()``, e.g. NEP's per-element networks and the descriptor
    coefficients of pairs centred on t); group S (the last) everything shared.
    """
    num_species = potential.element_map.num_species
    params = [p for p in potential.parameters() if p.requires_grad]
    owner: dict[int, torch.Tensor] = {}
    for module in potential.modules():
        declared = getattr(module, "element_parameter_owners", None)
        if callable(declared):
            owner.update({id(p): groups for p, groups in declared().items()})
    groups = [owner[id(p)].reshape(-1) if id(p) in owner else torch.full((p.numel(),), num_species) for p in params]
    return params, torch.cat(groups).long(), num_species + 1


def _masked_rmse(diff: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sqrt(sum w m d^2 / sum w m) per mask row: diff/weight [M, ...], mask [G, M] -> [G]."""
    sq = (diff * diff * weight).reshape(diff.shape[0], -1).sum(1)
    w = weight.reshape(weight.shape[0], -1).sum(1)
    mask = mask.to(diff.dtype)
    return torch.sqrt((mask @ sq) / torch.clamp(mask @ w, min=1e-12))


def group_fitness(batch, out: dict, weights, structure_mask: torch.Tensor) -> torch.Tensor:
    """GPUMD's fitness lambda_e RMSE_E + lambda_f RMSE_F + lambda_v RMSE_V for each row of
    ``structure_mask`` [G, B] (which structures a group is scored on): [G]."""
    errs = errors(batch, out)
    total = None
    for key, lam in (("energy", weights.energy), ("forces", weights.forces), ("stress", weights.stress)):
        if key not in errs or lam == 0.0:
            continue
        diff, w = errs[key]
        mask = structure_mask if key != "forces" else structure_mask[:, batch.batch]
        term = float(lam) * _masked_rmse(diff, w.to(diff.dtype), mask)
        total = term if total is None else total + term
    if total is None:
        raise ConfigError("loss: every loss weight is zero, nothing for SNES to fit")
    return total


class SNESModule(PotentialModule):
    """PotentialModule trained by SNES (see the module docstring); ``optimizer`` holds SNES settings."""

    def __init__(self, model: Mapping, loss: Mapping | None = None, optimizer: Mapping | None = None,
                 scheduler: Mapping | None = None, ema: Mapping | None = None):
        super().__init__(model, loss=loss, optimizer=optimizer, scheduler=scheduler, ema=None)
        self.automatic_optimization = False
        cfg = dict(self.optimizer_cfg)
        unknown = set(cfg) - SNES_KEYS
        if unknown:
            raise ConfigError(f"optimizer: unknown SNES settings {sorted(unknown)} (known: {', '.join(sorted(SNES_KEYS - {'lr', 'weight_decay'}))})")
        self.population = int(cfg.get("population", 50))
        self.sigma0 = float(cfg.get("sigma0", 0.1))
        self.per_element_ranking = bool(cfg.get("per_element_ranking", True))
        params, groups, num_groups = parameter_groups(self.model)
        if not self.per_element_ranking:
            groups, num_groups = torch.zeros_like(groups), 1
        self._params = params
        with torch.no_grad():
            mu = torch.cat([p.reshape(-1) for p in params])
            if cfg.get("init", "model") == "uniform":  # GPUMD: mu ~ U(-1, 1)
                generator = torch.Generator().manual_seed(int(cfg.get("seed", 0)))
                mu = 2.0 * torch.rand(mu.shape, generator=generator, dtype=mu.dtype) - 1.0
        self.snes = SNES(mu, sigma0=self.sigma0, population=self.population, eta_sigma=cfg.get("eta_sigma"),
                         groups=groups, num_elements=self.model.element_map.num_species, seed=int(cfg.get("seed", 0)))
        self.num_groups = num_groups
        self.register_buffer("snes_mu", self.snes.mu.clone())
        self.register_buffer("snes_sigma", self.snes.sigma.clone())
        self.register_buffer("snes_generation", torch.zeros((), dtype=torch.long))
        self._set_parameters(mu)

    # -- parameters as one vector ------------------------------------------------------------------
    @torch.no_grad()
    def _set_parameters(self, vector: torch.Tensor) -> None:
        offset = 0
        for p in self._params:
            n = p.numel()
            p.copy_(vector[offset : offset + n].view_as(p).to(p))
            offset += n

    # -- checkpoints: the sampling generator resumes where it stopped ------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """mu, sigma and the generation are buffers; the generator's state (a uint8 tensor, safe
        for ``weights_only`` loading) is saved too, so a resumed run draws the same samples as an
        uninterrupted one."""
        super().on_save_checkpoint(checkpoint)
        checkpoint["snes_generator"] = self.snes.generator.get_state()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        if "snes_generator" in checkpoint:
            self.snes.generator.set_state(checkpoint["snes_generator"])

    def configure_optimizers(self):
        # A no-op optimiser (lr 0, no gradients): stepping it advances Lightning's global step,
        # so trainer.max_steps counts generations as in GPUMD.
        return torch.optim.SGD(self.model.parameters(), lr=0.0)

    def regularization_of_groups(self, vector: torch.Tensor) -> torch.Tensor:
        """NEP's L1/L2 term of each group's variables ([G]; the last group over all variables)."""
        lam1 = lam2 = 0.0
        for module in self.model.modules():
            if isinstance(module, NEPModel):
                lam1, lam2 = max(lam1, module.lambda_1), max(lam2, module.lambda_2)
        if lam1 == 0.0 and lam2 == 0.0:
            return vector.new_zeros(self.num_groups)
        groups = self.snes.groups.to(vector.device)
        counts = torch.bincount(groups, minlength=self.num_groups).to(vector.dtype).clamp(min=1)
        l1 = torch.zeros(self.num_groups, dtype=vector.dtype, device=vector.device).index_add(0, groups, vector.abs())
        l2 = torch.zeros(self.num_groups, dtype=vector.dtype, device=vector.device).index_add(0, groups, vector * vector)
        reg = lam1 * l1 / counts + lam2 * torch.sqrt(l2 / counts)
        reg[-1] = lam1 * vector.abs().mean() + lam2 * torch.sqrt((vector * vector).mean())
        return reg

    def _structure_mask(self, batch) -> torch.Tensor:
        """[G, B]: structures containing element t (rows t < S), all structures (last row)."""
        species = self.model.element_map(batch.z)
        s = self.model.element_map.num_species
        counts = torch.zeros(batch.num_graphs, s, device=species.device).index_put_(
            (batch.batch, species), torch.ones_like(species, dtype=torch.float32), accumulate=True)
        present = (counts > 0).T
        rows = present if self.num_groups > 1 else present[:0]
        return torch.cat([rows, torch.ones(1, batch.num_graphs, dtype=torch.bool, device=species.device)])

    # -- one generation per batch ------------------------------------------------------------------
    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        snes = self.snes
        snes.mu, snes.sigma = self.snes_mu.clone(), self.snes_sigma.clone()
        samples = snes.ask()
        mask = self._structure_mask(batch)
        fitness = []
        for p in self._params:
            p.requires_grad_(False)  # no parameter gradients needed (forces still use autograd)
        try:
            for z in samples:
                self._set_parameters(z)
                out = self(batch, create_graph=False)
                with torch.no_grad():
                    fitness.append(group_fitness(batch, {k: v.detach() for k, v in out.items()}, self.loss_weights, mask)
                                   + self.regularization_of_groups(z))
        finally:
            for p in self._params:
                p.requires_grad_(True)
        fitness = torch.stack(fitness)  # [P, G]
        trainer = getattr(self, "_trainer", None)
        if trainer is not None and trainer.world_size > 1:
            fitness = trainer.strategy.reduce(fitness, reduce_op="mean")
        # an element absent from the batch has no fitness of its own: rank its variables on all structures
        absent = mask.sum(1) == 0
        if bool(absent.any()):
            fitness[:, absent] = fitness[:, -1:].expand(-1, int(absent.sum()))
        # rank element groups on their own columns, shared variables on the last (all structures)
        best = int(torch.argmin(fitness[:, -1]))
        snes.tell(fitness if self.num_groups > 1 else fitness[:, -1])
        with torch.no_grad():
            self.snes_mu.copy_(snes.mu)
            self.snes_sigma.copy_(snes.sigma)
            self.snes_generation += 1
        self._set_parameters(samples[best])
        self.optimizers().step()  # no-op; counts the generation as a training step
        loss = fitness[best, -1].detach()
        self.log("train/loss", loss, batch_size=batch.num_graphs, prog_bar=True, on_step=True, on_epoch=True)
        self.log("train/sigma_mean", self.snes_sigma.mean(), batch_size=batch.num_graphs, on_step=False, on_epoch=True)
        return loss
