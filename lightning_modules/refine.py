"""Full-batch refinement: after the stochastic optimiser, L-BFGS on the whole training set.

On small DFT sets (hundreds of structures, as mlearn's) the minibatch noise of Adam, not the
model, limits how well energies fit: at the end of a budget the training energy error is still
as large as the test one. A deterministic full-batch quasi-Newton method then lowers the same
loss further (as linear SNAP/ACE fits and many NEP/NequIP users' final L-BFGS polish do).
``refine`` in the config gives it a share of the wall budget::

    refine:
      share: 0.5            # of trainer.max_time (Adam gets the rest); 0: off
      max_iterations: null  # L-BFGS iterations at most; null: as many as the share allows, and
                            # none in a run without a wall budget (set a number to refine there)
      max_structures: 5000  # larger training sets are not refined (a closure is a whole epoch)
      dtype: mixed          # mixed | float64 | float32 (the weights return to the run's dtype after)

L-BFGS's line search and its convergence tests compare losses that differ in the seventh digit
near a minimum. In float32 a structure's energy (hundreds of eV: E0 times the atoms) is rounded
in the fifth or sixth digit and the loss over a training set is noise: refined in pure float32,
a Mo run's L-BFGS stopped after 6 iterations without a lower loss. ``mixed`` (the default) keeps
the model in the run's dtype and forms only what needs the digits in float64: the per-atom
energies meet E0 and are summed per structure in float64 (``Potential.energy_dtype``), and the
loss terms are float64. A float32 run's refinement then computes descriptors, networks and
forces in float32, about 1.6x as many L-BFGS iterations per second as ``float64`` (the model
cast to float64) on the same loss (Mo on two cores: 765 iterations against 465 in 170 s; the
refinement's training loss 0.01088 against 0.01111).

The refined weights are those of ``PotentialModule.eval_model`` (the EMA copy when enabled,
copied back into the raw model afterwards); the loss is the training loss of the final stage
(``loss.final``), normalised as in training, plus the model's regularisation (NEP's L1/L2) as
Adam saw it; what ``loss.initial.freeze`` holds fixed stays fixed. They are kept only if the
validation loss (the data terms of that objective) did not increase. ``last.ckpt`` is rewritten with them, and ``best.ckpt`` when
their ``val/loss`` beats its score. Under DDP every process sums its share of the gradient and
the parts are all-reduced, so all processes take the same L-BFGS steps.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lightning_modules.config_checks import check_keywords
from lightning_modules.datamodule import chunked_batches
from lightning_modules.losses import LossWeights, errors, total_loss
from lightning_modules.module import charge_parameters, regularization_losses
from mlip_plugins.dtypes import DTYPES, default_dtype
from mlip_plugins.keys import TARGETS
from mlip_plugins.models.builder import ConfigError
from mlip_plugins.nep.analytic import reuse_geometry

log = logging.getLogger("mlip_plugins.train")


@dataclass(frozen=True)
class RefineConfig:
    """The ``refine`` section (see the module docstring)."""

    share: float = 0.0
    max_iterations: int | None = None
    max_structures: int = 5000
    history_size: int = 50
    #: atoms per forward pass of the closure (a chunk bounds the memory of the force graph)
    chunk_atoms: int = 20000
    dtype: str = "mixed"

    #: the ``dtype`` besides :data:`DTYPES`: the model computes in the run's own dtype, the
    #: structure energies (E0 and the sum over atoms) and the loss are formed in float64
    MIXED = "mixed"

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.share) < 1.0:
            raise ConfigError(f"refine.share: expected a fraction 0 <= share < 1, got {self.share!r}")
        for name in ("max_iterations", "max_structures", "history_size", "chunk_atoms"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"refine.{name}: expected a positive integer, got {getattr(self, name)!r}")
        if self.dtype not in DTYPES and self.dtype != self.MIXED:
            raise ConfigError(f"refine.dtype: expected one of {sorted(DTYPES) + [self.MIXED]}, got {self.dtype!r}")

    def model_dtype(self, own: torch.dtype) -> torch.dtype:
        """The dtype the model computes in during the refinement (``own``: the run's)."""
        return own if self.dtype == self.MIXED else DTYPES[self.dtype]

    def energy_dtype(self, own: torch.dtype) -> torch.dtype:
        """The dtype of the structure energies (E0 and the sum over atoms) during the refinement."""
        return torch.float64 if self.dtype == self.MIXED else self.model_dtype(own)

    @classmethod
    def from_config(cls, section: Mapping | None) -> RefineConfig:
        section = dict(section or {})
        check_keywords(cls, section, "refine")
        if section.get("share") is None:
            section["share"] = 0.0
        return cls(**section)

    def enabled(self, wall_budget: bool) -> bool:
        """Whether a run refines: a share of its wall budget, or a set number of iterations."""
        return self.share > 0.0 and (wall_budget or self.max_iterations is not None)


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class FullBatchObjective:
    """The final-stage training loss of ``model`` over fixed batches, its value and gradient
    summed over chunks (and DDP processes) so that it equals one pass over the whole set."""

    def __init__(self, model: torch.nn.Module, batches: list, weights: LossWeights, scales: dict, needs_stress: bool,
                 regularize: bool = False):
        self.model, self.batches, self.weights, self.scales = model, batches, weights, scales
        self.needs_stress, self.regularize = needs_stress, regularize
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.denominators = self._label_totals()

    def _forward(self, batch, create_graph: bool) -> dict:
        stress = self.needs_stress and bool(batch.has_stress.any())
        return self.model(batch, compute_forces=True, compute_stress=stress, create_graph=create_graph)

    def _label_totals(self) -> dict[str, torch.Tensor]:
        """Per target, the total loss weight of its labels over every chunk and process."""
        sums = torch.zeros(len(TARGETS), dtype=torch.float64)
        for batch in self.batches:
            errs = errors(batch, self._forward(batch, create_graph=False), self.weights)
            for k, key in enumerate(TARGETS):
                if key in errs:
                    sums[k] += errs[key][1].detach().sum().double().cpu()
        if _world()[0] > 1:
            dist.all_reduce(sums)
        return {key: sums[k].clamp(min=1e-12) for k, key in enumerate(TARGETS)}

    def value(self, create_graph: bool = False, backward: bool = False) -> torch.Tensor:
        """The loss over all chunks (plus the model's regularisation, e.g. NEP's L1/L2, when
        ``regularize``: the objective Adam minimised); with ``backward`` its gradient is left in ``.grad``."""
        total = torch.zeros((), dtype=torch.float64)
        for batch in self.batches:
            out = self._forward(batch, create_graph=create_graph or backward)
            # the loss in float64 whatever the model's dtype (a mixed-precision refinement's
            # float32 forces summed over a training set are otherwise the coarsest part of it)
            errs = {key: (diff.double(), w.double()) for key, (diff, w) in errors(batch, out, self.weights).items()}
            loss, _ = total_loss(errs, self.weights, self.denominators, self.scales)
            if "aux_loss" in out:
                loss = loss + out["aux_loss"] / len(self.batches)
            if backward:
                torch.autograd.backward(loss, inputs=self.params)
            total += loss.detach().double().cpu()
        if _world()[0] > 1:
            dist.all_reduce(total)
            if backward:
                for p in self.params:
                    if p.grad is not None:
                        dist.all_reduce(p.grad)
        reg = regularization_losses(self.model) if self.regularize else None
        if reg is not None:  # once, after the all-reduce: every process holds the same weights
            if backward:
                torch.autograd.backward(reg, inputs=self.params)
            total += reg.detach().double().cpu()
        return total


def refine_full_batch(module, datamodule, config: RefineConfig, deadline: float | None) -> dict:
    """Refine ``module.eval_model`` with L-BFGS on the training set until ``deadline``
    (``time.monotonic()``), ``config.max_iterations`` (if set) or convergence. Returns a summary
    (iterations, seconds, training/validation loss before and after, whether it was kept).

    The model and the batches are in ``config.dtype`` during the refinement; the model returns
    to its own dtype after (the same ``Parameter`` objects, so the optimiser keeps them)."""
    graphs = datamodule.train_graphs
    if len(graphs) > config.max_structures:
        log.info("refine: %d training structures > refine.max_structures=%d, skipped", len(graphs), config.max_structures)
        return {"skipped": f"{len(graphs)} training structures > refine.max_structures"}
    model = module.eval_model
    own, own_energy_dtype = next(model.parameters()).dtype, getattr(model, "energy_dtype", None)
    dtype = config.model_dtype(own)
    model.to(dtype)
    if hasattr(model, "energy_dtype"):
        model.energy_dtype = config.energy_dtype(own)
    try:
        with default_dtype(dtype), reuse_geometry():  # the positions are fixed: a NEP's pairs and bases once
            return _refine(module, model, datamodule, config, dtype, deadline)
    finally:
        model.to(own)
        if hasattr(model, "energy_dtype"):
            model.energy_dtype = own_energy_dtype


def _as_dtype(batch, dtype: torch.dtype):
    """``batch`` with its floating-point fields (positions, cell, labels) in ``dtype``."""
    return batch.apply(lambda value: value.to(dtype) if torch.is_floating_point(value) else value)


def _refine(module, model, datamodule, config: RefineConfig, dtype: torch.dtype, deadline: float | None) -> dict:
    """:func:`refine_full_batch` once ``model`` is in the refinement's dtype."""
    graphs = datamodule.train_graphs
    world, rank = _world()
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    for p, flag in zip(params, [p.requires_grad for p in module.model.parameters()]):
        p.requires_grad_(flag)  # the EMA copy is frozen under DDP
    if module.loss_weights.freezes_charges:
        for p in charge_parameters(model):  # held fixed after the charges-first stage, here too
            p.requires_grad_(False)
    weights = module.loss_weights.final_stage()
    start = time.monotonic()
    try:
        def objective(subset, regularize: bool) -> FullBatchObjective | None:
            if not len(subset):
                return None
            batches = chunked_batches(subset, list(range(rank, len(subset), world)), config.chunk_atoms, module.device)
            batches = [_as_dtype(batch, dtype) for batch in batches]
            return FullBatchObjective(model, batches, weights, module.loss_scale_map(), weights.stress > 0, regularize)

        # the validation loss that decides whether the result is kept is the data loss alone
        train, val = objective(graphs, regularize=True), objective(datamodule.val_graphs, regularize=False)
        before = {"train": float(train.value()), "val": float(val.value()) if val else None}
        saved = [p.detach().clone() for p in train.params]
        optimizer = torch.optim.LBFGS(train.params, lr=1.0, max_iter=5, max_eval=25, history_size=config.history_size,
                                      line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            optimizer.zero_grad(set_to_none=False)
            return train.value(backward=True)

        iterations, previous = 0, before["train"]
        limit = config.max_iterations if config.max_iterations is not None else float("inf")
        while iterations < limit and (deadline is None or time.monotonic() < deadline):
            done = optimizer.state[train.params[0]].get("n_iter", 0)
            start_loss = float(optimizer.step(closure))  # the loss before this step's iterations
            iterations += optimizer.state[train.params[0]].get("n_iter", 0) - done
            if not math.isfinite(start_loss) or (iterations > optimizer.defaults["max_iter"]
                                                 and previous - start_loss <= 1e-7 * abs(previous)):
                break  # converged (or stalled at float precision)
            previous = start_loss
        after = {"train": float(train.value()), "val": float(val.value()) if val else None}
        kept = math.isfinite(after["train"]) and (val is None or after["val"] <= before["val"])
        if not kept:
            with torch.no_grad():
                for p, old in zip(train.params, saved):
                    p.copy_(old)
        optimizer.zero_grad(set_to_none=True)
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
    if kept and module.ema is not None:
        module.model.load_state_dict(module.ema.module.state_dict())
    summary = {"iterations": iterations, "seconds": time.monotonic() - start, "before": before, "after": after, "kept": kept}
    if rank == 0:
        log.info("refine: L-BFGS %d iterations in %.0f s, training loss %.4g -> %.4g, validation %s -> %s (%s)",
                 iterations, summary["seconds"], before["train"], after["train"],
                 _fmt(before["val"]), _fmt(after["val"]), "kept" if kept else "not kept: the validation loss rose")
    return summary


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.4g}"


def monitored_validation_loss(module, datamodule) -> float:
    """``val/loss`` as the module logs it (first-stage weights; the mean of the batches' losses
    weighted by their structure counts), of ``module.eval_model`` on this process's batches."""
    total, count = 0.0, 0
    for batch in datamodule.val_dataloader():
        batch = batch.to(module.device)
        with torch.enable_grad():
            out = module(batch, model=module.eval_model)
        loss, _ = total_loss(errors(batch, out, module.loss_weights), module.loss_weights, scales=module.loss_scale_map())
        total += float(loss.detach()) * batch.num_graphs
        count += batch.num_graphs
    return total / max(1, count)


def split_budget(max_time, share: float) -> tuple[timedelta | None, float | None]:
    """``trainer.max_time`` (Lightning's ``"DD:HH:MM:SS"``, a mapping or a timedelta) less the
    refinement's ``share``, and the whole budget in seconds (None, None without one)."""
    if max_time is None:
        return None, None
    if isinstance(max_time, str):
        parts = [int(x) if x.strip().isdigit() else -1 for x in max_time.split(":")]
        if len(parts) != 4 or min(parts) < 0:
            raise ConfigError(f"trainer.max_time: expected DD:HH:MM:SS, got {max_time!r}")
        total = timedelta(days=parts[0], hours=parts[1], minutes=parts[2], seconds=parts[3])
    elif isinstance(max_time, Mapping):
        total = timedelta(**dict(max_time))
    elif isinstance(max_time, timedelta):
        total = max_time
    else:
        raise ConfigError(f"trainer.max_time: expected DD:HH:MM:SS, got {max_time!r}")
    seconds = total.total_seconds()
    return timedelta(seconds=seconds * (1.0 - share)), seconds


class FullBatchRefinement(Callback):
    """Runs :func:`refine_full_batch` when training ends (before ``on_fit_end`` callbacks such as
    the GPUMD output files, so they see the refined weights) and saves the checkpoints.

    ``total_seconds``: the whole wall budget (``trainer.max_time`` before the refinement's share
    was taken off); the refinement stops when it is spent, or after ``config.max_iterations``."""

    def __init__(self, config: RefineConfig, total_seconds: float | None):
        self.config, self.total_seconds = config, total_seconds
        self._start: float | None = None
        self.summary: dict | None = None

    def on_fit_start(self, trainer, pl_module) -> None:
        self._start = time.monotonic()

    def on_train_end(self, trainer, pl_module) -> None:
        if not hasattr(pl_module, "eval_model") or trainer.interrupted:
            return
        deadline = None if self.total_seconds is None else (self._start or time.monotonic()) + self.total_seconds
        self.summary = refine_full_batch(pl_module, trainer.datamodule, self.config, deadline)
        if self.summary.get("kept"):
            self._save(trainer, pl_module)

    @staticmethod
    def _save(trainer, module) -> None:
        """Rewrite each checkpoint the trainer keeps: ``last`` always, a ``val/loss``-monitored
        one when the refined weights beat its recorded best."""
        loss = None
        for callback in trainer.checkpoint_callbacks:
            if not isinstance(callback, ModelCheckpoint) or not callback.dirpath:
                continue
            if callback.monitor is None:
                path = callback.last_model_path or callback.best_model_path
                if path:
                    trainer.save_checkpoint(path)
            elif callback.monitor == "val/loss" and callback.best_model_path:
                loss = monitored_validation_loss(module, trainer.datamodule) if loss is None else loss
                best = callback.best_model_score
                if best is None or loss < float(best):
                    callback.best_model_score = torch.tensor(loss)
                    trainer.save_checkpoint(callback.best_model_path)
