"""Staged training: ``stages`` runs one training after another, each from the last one's weights.

GPUMD users train in stages by running ``nep`` again from the previous result (a restart with new
``generation``, ``lambda_*`` or learning rates); TorchNEP and GNEP train in two stages. Here::

    stages:                      # each entry: config overrides for that stage
      - {trainer: {max_steps: 5000}}
      - {trainer: {max_steps: 2000}, loss: {energy: 10.0}, optimizer: {lr: 1.0e-4}}

or, in a nep.in, several values on ``generation`` (or ``epoch``) and one value or one per stage on
``lambda_e``, ``lambda_f``, ``lambda_v``, ``start_lr``, ``stop_lr``::

    generation 5000 2000
    lambda_e   1.0  10.0

Stage k trains in ``<run_dir>/stage<k>`` (its own checkpoints, metrics and GPUMD files); stage 1
starts as configured (fresh, or ``init_from``), every later stage from the weights, E0 and scaler
the stage before ended with (the optimizer and schedule start afresh, as in a GPUMD restart).
All stages append to one ``<run_dir>/loss.out``, each with its own header block and generations
counted from zero, as GPUMD's restarts do (calorine's ``read_loss`` lays them end to end).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from mlip_plugins.models.builder import ConfigError


def stage_configs(cfg: DictConfig) -> list[DictConfig]:
    """One config per stage: ``cfg`` without ``stages``, with the stage's overrides merged and
    ``run_dir`` set to ``<run_dir>/stage<k>``."""
    stages = OmegaConf.to_container(cfg.stages, resolve=False)
    if not isinstance(stages, list) or not stages:
        raise ConfigError(f"stages: expected a non-empty list of config overrides, got {stages!r}")
    top = Path(str(cfg.run_dir))
    base = OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "stages"])
    OmegaConf.set_struct(base, False)
    configs = []
    for k, stage in enumerate(stages, start=1):
        if not isinstance(stage, Mapping):
            raise ConfigError(f"stages[{k - 1}]: expected a mapping of config overrides, got {stage!r}")
        if "stages" in stage or "run_dir" in stage or "model" in stage:
            raise ConfigError(f"stages[{k - 1}]: a stage cannot set {sorted({'stages', 'run_dir', 'model'} & set(stage))} "
                              f"(every stage trains the same model in its own directory)")
        merged = OmegaConf.merge(base, OmegaConf.create(dict(stage)))
        merged.run_dir = str(top / f"stage{k}")
        outputs = (merged.get("callbacks") or {}).get("gpumd_outputs")
        if outputs is not None:
            outputs.loss_file = str(top / "loss.out")
        if k > 1:
            merged.init_from = None  # the previous stage's weights are handed over in memory
            merged.ckpt_path = None
        configs.append(merged)
    return configs


def run_stages(cfg: DictConfig, train_once: Callable[..., dict]) -> dict:
    """Train every stage of ``cfg.stages`` with ``train_once(stage_cfg, initial=...)``; returns
    the last stage's result with ``stages``: the result of each."""
    results = []
    initial = None
    for stage_cfg in stage_configs(cfg):
        result = train_once(stage_cfg, initial=initial)
        initial = {"model": result.pop("model_config"), "module_state": result.pop("module_state")}
        results.append(result)
    final = dict(results[-1])
    final["stages"] = results
    return final
