"""The ``trainer`` section of the config as ``lightning.Trainer`` arguments, and its one rule
that ties it to the rest of the config: ``trainer.precision`` and ``dtype`` must agree.

``conf/trainer/default.yaml`` declares the commonly used Trainer arguments (so that plain
overrides like ``trainer.max_time=...`` work); those left null mean Lightning's default and
are not passed on.
"""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig, open_dict

log = logging.getLogger("mlip_plugins.train")

#: precision values that mean float64; every other precision trains float32 weights
DOUBLE_PRECISIONS = {"64", "64-true", "double"}


def precision_dtype(precision: Any) -> str:
    """The ``dtype`` a Lightning ``precision`` value implies."""
    return "float64" if str(precision).lower() in DOUBLE_PRECISIONS else "float32"


def reconcile_precision(cfg: DictConfig) -> DictConfig:
    """Make ``trainer.precision`` and ``dtype`` agree, in place (and return ``cfg``).

    A set ``trainer.precision`` decides ``dtype``; a null one is derived from ``dtype``. So the
    saved ``config.yaml`` states both as the run used them.
    """
    trainer = cfg.get("trainer")
    if trainer is None:
        return cfg
    precision = trainer.get("precision")
    with open_dict(cfg):
        if precision is None:
            cfg.trainer.precision = "64-true" if cfg.dtype == "float64" else "32-true"
        else:
            implied = precision_dtype(precision)
            if implied != cfg.dtype:
                log.info("trainer.precision=%s: dtype %s -> %s", precision, cfg.dtype, implied)
                cfg.dtype = implied
    return cfg


def trainer_kwargs(trainer_cfg: dict) -> dict:
    """The Trainer arguments of ``trainer_cfg`` (a plain dict): null entries dropped."""
    return {key: value for key, value in trainer_cfg.items() if value is not None}
