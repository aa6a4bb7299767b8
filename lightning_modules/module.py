"""``PotentialModule``: the LightningModule that trains a ``Potential`` on energies, forces, stress.

Validation and test run with gradients enabled (forces are -dE/dpos), so the Trainer is
built with ``inference_mode=False``. Metrics (RMSE and MAE of energy per atom, force
components and stress) are accumulated over the epoch with torchmetrics, which also
synchronises them across DDP processes.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from lightning_modules.config_checks import check_keywords
from lightning_modules.losses import LossWeights, errors, errors_from, total_loss
from mlip_plugins import keys
from mlip_plugins.errors import MLIPError
from mlip_plugins.models.builder import ConfigError, _plain, build_potential
from mlip_plugins.targets import ErrorMetrics, residuals

TARGETS = keys.TARGETS


class NonFiniteLossError(MLIPError, FloatingPointError):
    """The loss or a gradient became NaN/inf (``nan_policy=raise``): fixable by the user
    (learning rate, data), so reported in one line."""


def charge_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters the charges depend on, from every module with a ``charge_parameters()`` hook
    (the ``electrostatic`` energy model: its charge model and the descriptor it reads)."""
    found = {id(p): p for m in model.modules() if hasattr(m, "charge_parameters") for p in m.charge_parameters()}
    return list(found.values())


def regularization_losses(model: nn.Module) -> torch.Tensor | None:
    """Sum of ``regularization_loss()`` over submodules that define it (e.g. NEP's L1/L2)."""
    total = None
    for module in model.modules():
        hook = getattr(module, "regularization_loss", None)
        if callable(hook):
            value = hook()
            if value is not None:
                total = value if total is None else total + value
    return total


class PotentialModule(L.LightningModule):
    """Trains ``model`` (a Potential config) with a weighted energy/force/stress loss.

    Args:
        model: the ``model`` config section (elements, cutoff, energy tree).
        loss: ``LossWeights`` fields (energy, forces, stress, charges, kind, huber_delta).
        optimizer: ``{name: adam|adamw, lr, weight_decay, ...}``.
        scheduler: ``{name: cosine|plateau|none, warmup_steps, min_lr_ratio, factor, patience}``;
            the cosine decays to ``min_lr_ratio`` at the end of training: the last step
            (``max_epochs``/``max_steps``) or the wall budget ``trainer.max_time``, whichever
            comes first.
        ema: ``{decay: 0.99}`` to keep an exponential moving average used for validation
            and export, or None.
        nan_policy: what a non-finite loss or gradient does: ``"raise"`` stops the run with a
            ``FloatingPointError`` naming the epoch, step and loss parts; ``"skip"`` drops the
            step (no optimizer update, so the weights never become NaN) with a warning and a
            count (``train/skipped_steps``); ``MAX_CONSECUTIVE_SKIPS`` in a row still raise.

    Under DDP the loss means use the *global* label counts (one all-reduce of a few numbers
    per step), so the averaged gradient equals that of one process on the global batch,
    whatever the number of atoms on each process.
    """

    MAX_CONSECUTIVE_SKIPS = 10

    def __init__(
        self,
        model: Mapping,
        loss: Mapping | None = None,
        optimizer: Mapping | None = None,
        scheduler: Mapping | None = None,
        ema: Mapping | None = None,
        nan_policy: str = "raise",
    ):
        super().__init__()
        if nan_policy not in ("raise", "skip"):
            raise ConfigError(f"nan_policy must be 'raise' or 'skip', got {nan_policy!r}")
        self.save_hyperparameters(
            {"model": _plain(model), "loss": _plain(loss or {}), "optimizer": _plain(optimizer or {}),
             "scheduler": _plain(scheduler or {}), "ema": _plain(ema), "nan_policy": nan_policy}
        )
        self.nan_policy = nan_policy
        self.skipped_steps = 0
        self._consecutive_skips = 0
        self._skip_this_step = False
        self.model = build_potential(model)
        check_keywords(LossWeights, _plain(loss) or {}, "loss")
        self.loss_weights = LossWeights(**(_plain(loss) or {}))
        if self.loss_weights.bec > 0:  # models that can predict BEC while training (qNEP) are asked to
            for part in self.model.modules():
                if hasattr(part, "bec_in_training"):
                    part.bec_in_training = True
        self._final_weights = self.loss_weights.final_stage()
        self._initial_weights = self.loss_weights.initial_stage()
        self._e0_refitted = False
        self._held_parameters: list[nn.Parameter] | None = None
        self._total_steps_cache: int | None | bool = False  # False: not computed yet
        self.optimizer_cfg = dict(_plain(optimizer) or {"name": "adam", "lr": 1e-2})
        self.scheduler_cfg = dict(_plain(scheduler) or {"name": "none"})
        ema = _plain(ema)
        self.ema = (
            AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(float(ema["decay"])), use_buffers=True)
            if ema and ema.get("decay")
            else None
        )
        # the training set's label variances that normalise the loss terms (loss.normalize);
        # buffers, so a resumed run keeps the scales it started with
        self.register_buffer("loss_scales", torch.ones(len(TARGETS), dtype=torch.float64))
        self.val_metrics = ErrorMetrics()
        self.test_metrics = ErrorMetrics()

    def set_loss_scales(self, scales: Mapping[str, float]) -> None:
        """Set the per-target loss normalisation (``loss.normalize=variance``) from e.g.
        ``label_variances(train_graphs, ...)``; targets not named keep 1."""
        with torch.no_grad():
            for k, key in enumerate(TARGETS):
                if key in scales:
                    self.loss_scales[k] = float(scales[key])

    def loss_scale_map(self) -> dict[str, torch.Tensor]:
        """Per target, the divisor of its loss term (``loss.normalize=variance``; else 1)."""
        return {key: self.loss_scales[k] for k, key in enumerate(TARGETS)}

    def setup(self, stage: str) -> None:
        """Under DDP the EMA copy's parameters must not look trainable: DDP would wait for their
        gradients (they are updated by copies). Before DDP wraps the module, they are frozen;
        in one process they keep the model's flags (what e.g. the Fisher analysis of
        ``eval_model`` counts as trainable). A ``loss.initial.freeze: charges`` without a charge
        model is a config error here, before training."""
        if self.loss_weights.freezes_charges and not charge_parameters(self.model):
            raise ConfigError("loss.initial.freeze=charges: the model has no charge model to hold fixed "
                              "(model=long_range with model/charges=latent or qeq has one)")
        if self.ema is not None and self._trainer is not None and int(self.trainer.world_size) > 1:
            self.ema.requires_grad_(False)

    # -- forward -----------------------------------------------------------------------
    @property
    def eval_model(self) -> nn.Module:
        """The weights used for validation and export (the EMA copy if enabled)."""
        return self.ema.module if self.ema is not None else self.model

    def _needs_stress(self, batch) -> bool:
        return bool(batch.has_stress.any()) and (self.loss_weights.stress > 0 or not self.training)

    def forward(self, batch, create_graph: bool = False, model: nn.Module | None = None) -> dict:
        model = model or self.model
        return model(batch, compute_forces=True, compute_stress=self._needs_stress(batch), create_graph=create_graph)

    # -- steps -------------------------------------------------------------------------
    def _global_denominators(self, errs: dict) -> dict | None:
        """Per-target label totals summed over DDP processes, divided by their number."""
        world = int(getattr(self.trainer, "world_size", 1)) if self._trainer is not None else 1
        if world <= 1:
            return None
        # a fixed list of targets: every process must all-reduce the same shape, even where its
        # local batch lacks a label (no stress computed there)
        local = torch.stack([errs[key][1].detach().sum().to(torch.float64) if key in errs else torch.zeros((), dtype=torch.float64)
                             for key in TARGETS]).to(self.device)
        total = self.trainer.strategy.reduce(local, reduce_op="sum") / world
        return {key: value.to(errs[key][1].dtype) for key, value in zip(TARGETS, total) if key in errs}

    def _non_finite(self, message: str) -> None:
        """Raise (nan_policy=raise) or count a skipped step and warn (nan_policy=skip)."""
        if self.nan_policy == "raise":
            raise NonFiniteLossError(f"{message}; lower the learning rate or check the data (or set nan_policy=skip)")
        self.skipped_steps += 1
        self._consecutive_skips += 1
        if self._consecutive_skips > self.MAX_CONSECUTIVE_SKIPS:
            raise NonFiniteLossError(f"{message}; {self._consecutive_skips} consecutive steps skipped, stopping")
        rank_zero_warn(f"{message}: step skipped (nan_policy=skip, {self.skipped_steps} skipped so far)")

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        out = self(batch, create_graph=True)
        weights = self._training_weights()
        errs = errors(batch, out, weights)
        loss, parts = total_loss(errs, weights, self._global_denominators(errs), self.loss_scale_map())
        if "aux_loss" in out:
            loss = loss + out["aux_loss"]
            parts["aux"] = out["aux_loss"].detach()
        reg = regularization_losses(self.model)
        if reg is not None:
            loss = loss + reg
            parts["reg"] = reg.detach()
        if not torch.isfinite(loss):
            self._non_finite(f"non-finite training loss at epoch {self.current_epoch}, step {self.global_step} "
                             f"(parts: { {k: float(v) for k, v in parts.items()} })")
            # skip: the gradients of this loss are dropped in on_before_optimizer_step; other DDP
            # processes see non-finite gradients after the all-reduce and skip the same step
            self._skip_this_step = True
            return loss
        size = batch.num_graphs
        self.log("train/loss", loss.detach(), batch_size=size, prog_bar=True, on_step=True, on_epoch=True)
        for key, value in parts.items():
            self.log(f"train/loss_{key}", value, batch_size=size, on_step=False, on_epoch=True)
        return loss

    def backward(self, loss: torch.Tensor, *args, **kwargs) -> None:
        """Backpropagate into the trainable parameters only: the positions are a leaf that
        requires a gradient (for the forces), and a plain ``loss.backward()`` would also compute
        d loss / d positions through the force graph, a Hessian-vector product nobody reads."""
        trainable = [p for p in self.parameters() if p.requires_grad]
        if self._fabric is None and "inputs" not in kwargs and trainable:
            kwargs["inputs"] = trainable
        super().backward(loss, *args, **kwargs)

    def on_before_optimizer_step(self, optimizer) -> None:
        """Drop the update after a non-finite loss or gradient (optimizers skip parameters
        whose ``grad`` is None, so weights and optimizer moments stay as they were)."""
        grads = [p.grad.detach().abs().sum() for p in self.model.parameters() if p.grad is not None]
        finite = not grads or bool(torch.isfinite(torch.stack(grads).sum()))  # one device sync
        if not self._skip_this_step and finite:
            self._consecutive_skips = 0
            for p in self._frozen_parameters():
                p.grad = None  # held fixed after loss.initial (optimizers skip parameters without a grad)
            return
        if not self._skip_this_step:
            bad = next(n for n, p in self.model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all())
            self._non_finite(f"non-finite gradient of '{bad}' at epoch {self.current_epoch}, step {self.global_step}")
        self._skip_this_step = False
        for p in self.model.parameters():
            p.grad = None
        self.log("train/skipped_steps", float(self.skipped_steps), on_step=True, on_epoch=False)

    def _in_initial_stage(self) -> bool:
        """Whether training is still in ``loss.initial`` (false where there is none)."""
        initial = self.loss_weights.initial
        return bool(initial) and self._training_progress() < float(initial["end"])

    def _frozen_parameters(self) -> list[torch.nn.Parameter]:
        """The charge models' parameters once ``loss.initial`` with ``freeze: charges`` has ended."""
        if not self.loss_weights.freezes_charges or self._in_initial_stage():
            return []
        if self._held_parameters is None:  # the model's modules do not change: collected once
            self._held_parameters = charge_parameters(self.model)
        return self._held_parameters

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        """At the end of an initial stage that did not train energies, refit E0 to the residuals
        (:mod:`lightning_modules.e0_refit`); once per run (a resumed run past it does not)."""
        if not self.loss_weights.initial or self._initial_weights.energy > 0 or self._e0_refitted or self._in_initial_stage():
            return
        self._e0_refitted = True
        graphs = getattr(getattr(self._trainer, "datamodule", None), "train_graphs", None)
        if graphs is None:
            rank_zero_warn("loss.initial: E0 is not refitted after the initial stage when training from a graph store")
            return
        from lightning_modules.e0_refit import refit_e0

        refit_e0(self, graphs)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.ema is not None:
            self.ema.update_parameters(self.model)

    def _evaluate(self, batch, metrics: ErrorMetrics, prefix: str) -> None:
        with torch.enable_grad():
            out = self(batch, model=self.eval_model)
        targets = residuals(batch, out)
        loss, _ = total_loss(errors_from(targets, batch, self.loss_weights), self.loss_weights, scales=self.loss_scale_map())
        self.log(f"{prefix}/loss", loss.detach(), batch_size=batch.num_graphs, prog_bar=prefix == "val", sync_dist=True)
        metrics.update(targets)

    def _log_metrics(self, metrics: ErrorMetrics, prefix: str) -> None:
        for name, value in metrics.compute().items():
            self.log(f"{prefix}/{name}", value, sync_dist=False)
        metrics.reset()

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_metrics(self.val_metrics, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, self.test_metrics, "test")

    def on_test_epoch_end(self) -> None:
        self._log_metrics(self.test_metrics, "test")

    # -- optimisation ------------------------------------------------------------------
    def _training_progress(self, step: int | None = None) -> float:
        """Fraction of training done, 0..1: of the steps (``max_epochs``/``max_steps``) or of
        the wall budget (``trainer.max_time``), whichever is further."""
        if self._trainer is None:
            return 0.0
        step = self.global_step if step is None else step
        total = self._total_steps()
        by_steps = step / max(1, total) if total else 0.0
        return min(1.0, max(by_steps, self._time_fraction()))

    def _total_steps(self) -> int | None:
        """The trainer's step limit (None when only the wall budget bounds training), computed
        once: Lightning's ``estimated_stepping_batches`` sets up the dataloader on every call."""
        if self._total_steps_cache is False:
            estimated = self.trainer.estimated_stepping_batches
            self._total_steps_cache = max(1, int(estimated)) if math.isfinite(estimated) else None
        return self._total_steps_cache

    def _training_weights(self) -> LossWeights:
        """The loss weights of the current stage (``loss.initial`` until its end, ``loss.final`` from its start on)."""
        final = self.loss_weights.final
        if self._in_initial_stage():
            return self._initial_weights
        if final and self._training_progress() >= float(final["start"]):
            return self._final_weights
        return self.loss_weights

    def _time_fraction(self) -> float:
        """Fraction of the wall budget ``trainer.max_time`` spent so far (0 without one).

        The cosine schedule follows whichever ends training first, the step count or the
        wall budget, so a run stopped by ``max_time`` has annealed its learning rate too.
        """
        from lightning.pytorch.callbacks import Timer

        if self._trainer is None:
            return 0.0
        for callback in self.trainer.callbacks:
            if isinstance(callback, Timer):
                remaining = callback.time_remaining()
                if remaining is not None:
                    elapsed = callback.time_elapsed()
                    return elapsed / max(elapsed + remaining, 1e-9)
        return 0.0

    def configure_optimizers(self) -> Any:
        self._total_steps_cache = False  # once per fit (the trainer may differ)
        cfg = dict(self.optimizer_cfg)
        name = cfg.pop("name", "adam").lower()
        classes = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
        if name not in classes:
            raise ConfigError(f"optimizer.name must be one of {', '.join(classes)}, got {name!r}")
        check_keywords(classes[name], cfg, "optimizer", exclude=("params",))
        optimizer = classes[name](self.model.parameters(), **cfg)
        sched = dict(self.scheduler_cfg)
        kind = str(sched.pop("name", "none")).lower()
        if kind in ("none", "null", ""):
            return optimizer
        if kind == "cosine":
            warmup = int(sched.get("warmup_steps", 0))
            floor = float(sched.get("min_lr_ratio", 0.01))
            total = self._total_steps()

            def factor(step: int) -> float:
                if step < warmup:
                    return (step + 1) / warmup
                progress = (step - warmup) / max(1, total - warmup) if total else 0.0
                progress = min(1.0, max(progress, self._time_fraction()))
                return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
        if kind == "plateau":
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, factor=float(sched.get("factor", 0.5)), patience=int(sched.get("patience", 5))
            )
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": "val/loss"}}
        raise ConfigError(f"scheduler.name must be cosine, plateau or none, got {kind!r}")

    # -- checkpoints -------------------------------------------------------------------
    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._e0_refitted = bool(checkpoint.get("e0_refitted", False))
        # checkpoints written before loss.normalize existed carry no loss scales: unit scales
        scales = checkpoint["state_dict"].setdefault("loss_scales", torch.ones(len(TARGETS), dtype=torch.float64))
        if scales.numel() < len(TARGETS):  # written before a target was added (bec): unit scales for the new ones
            checkpoint["state_dict"]["loss_scales"] = torch.cat([scales, scales.new_ones(len(TARGETS) - scales.numel())])

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        from mlip_plugins.checkpoint import checkpoint_metadata

        checkpoint["e0_refitted"] = self._e0_refitted

        # scanning the installed plugins' entry points takes ~0.4 s, and the `last` checkpoint is
        # saved every epoch (for a NEP on 25 structures, more than the epoch's training): the
        # record is computed again only when the model's module classes change
        key = tuple(type(m) for m in self.model.modules())
        cached = getattr(self, "_checkpoint_metadata", None)
        if cached is None or cached[0] != key:
            cached = self._checkpoint_metadata = (key, checkpoint_metadata(self.model))
        checkpoint["mlip_plugins"] = copy.deepcopy(cached[1])
