"""``mlip-train``: the Hydra app that assembles data, model, callbacks and a Lightning Trainer.

    mlip-train                                   # quickstart on the embedded EMT dataset
    mlip-train data=file data.path=train.xyz trainer.max_epochs=100
    mlip-train model=composable model/descriptor=angular model.cutoff=6.0 'callbacks=[default,early_stopping]'
    mlip-train trainer=ddp trainer.accelerator=cpu   # two processes (gloo)
    mlip-train ckpt_path=runs/<date>/<time>/checkpoints/last.ckpt   # resume

The run directory receives ``config.yaml`` (resolved), ``split.json``, ``checkpoints/``,
``logs/``, ``metrics.json`` and ``parity.png``. Known input errors (``MLIPError``) print one
line and exit with status 2 (``debug=true`` shows the traceback). The run directory is locked
for the run, and after an error only what this invocation created is removed
(:mod:`lightning_modules.run_dir`).
"""

from __future__ import annotations

import inspect
import itertools
import logging
import os
import sys
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig, OmegaConf

from lightning_modules.checkpoint_io import AtomicCheckpointIO
from lightning_modules.config_checks import check_group_overrides, check_keywords, check_trainer_config
from lightning_modules.datamodule import AtomsDataModule
from lightning_modules.refine import FullBatchRefinement, RefineConfig, split_budget
from lightning_modules.resume import check_resume
from lightning_modules.run_dir import RunDirectory, exit_with_user_error, is_launching_process
from lightning_modules.trainer_args import reconcile_precision, trainer_kwargs
from mlip_plugins import registry
from mlip_plugins.data.statistics import energy_scale, fit_e0, label_variances
from mlip_plugins.dtypes import DTYPES
from mlip_plugins.elements import UnknownElementError, to_atomic_numbers
from mlip_plugins.errors import MLIPError
from mlip_plugins.evaluation import format_table, metrics_from_predictions, parity_plot, predict, write_json
from mlip_plugins.models.builder import ConfigError, _plain, instantiate_plugin, validate_cutoffs
from mlip_plugins.threads import local_processes, set_threads

log = logging.getLogger("mlip_plugins.train")

#: errors a user can fix from the message alone: reported in one line, no traceback. Only the
#: project's own classes: anything else is an internal bug and keeps its traceback.
USER_ERRORS = (MLIPError,)

_rank_zero = is_launching_process


def apply_nep_in(cfg: DictConfig) -> DictConfig:
    """Merge the keywords of a GPUMD nep.in (``nep_in=path``) into the config."""
    if not cfg.get("nep_in"):
        return cfg
    OmegaConf.set_struct(cfg, False)  # nep.in may set keys the chosen preset does not declare
    from mlip_plugins.nep.nep_in import nep_in_to_overrides

    overrides = nep_in_to_overrides(cfg.nep_in, cfg)
    merged = OmegaConf.merge(cfg, OmegaConf.create(overrides))
    return merged


def show_job_config_with_nep_in(argv: list[str]) -> bool:
    """``mlip-train --cfg job nep_in=FILE ...``: print the job config *after* the nep.in keywords
    are merged (Hydra prints ``--cfg`` before the task, so without them). Returns whether it did;
    other ``--cfg`` uses (and ``-cd``/``-cp``/``-cn``, which Hydra resolves itself) are left to Hydra."""
    flags = [k for k, arg in enumerate(argv) if arg in ("--cfg", "-c")]
    if not flags or argv[flags[0] + 1 : flags[0] + 2] != ["job"] or not any(a.startswith("nep_in=") for a in argv):
        return False
    if any(a.split("=")[0] in ("-cd", "--config-dir", "-cp", "--config-path", "-cn", "--config-name", "-p", "--package") for a in argv):
        return False
    from hydra import compose, initialize_config_module

    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    with initialize_config_module("mlip_plugins.conf", version_base=None):
        cfg = apply_nep_in(compose("train", overrides=overrides))
    print(f"# mlip-train job config with the keywords of {cfg.nep_in} merged")
    print(OmegaConf.to_yaml(cfg, resolve="--resolve" in argv), end="")
    return True


def resolve_elements(cfg_elements: Any, datamodule: AtomsDataModule) -> list[int]:
    """The model's element list; 'auto' takes the data's. Unknown data elements are an error
    naming the file and frame."""
    present = datamodule.elements()
    if cfg_elements in (None, "auto"):
        return present
    try:
        known = set(to_atomic_numbers(list(cfg_elements)))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model.elements: {exc}") from None
    if set(present) <= known:  # (no scan of the graphs: they may be a store beyond memory)
        return sorted(known)
    for graph in itertools.chain(datamodule.train_graphs, datamodule.val_graphs, datamodule.test_graphs):
        bad = sorted(set(graph.z.tolist()) - known)
        if bad:
            from ase.data import chemical_symbols

            names = ", ".join(chemical_symbols[z] for z in bad)
            raise UnknownElementError(
                f"{graph.source.rsplit(':', 1)[0]}: frame {graph.source.rsplit(':', 1)[-1]}: field 'numbers': "
                f"element {names} not in model.elements ({', '.join(chemical_symbols[z] for z in sorted(known))}); "
                f"add it or use model.elements=auto"
            )
    return sorted(known)


def build_callbacks(cfg: DictConfig) -> list:
    """Callbacks from ``cfg.callbacks``: each ``{_target_: ...}`` or ``{name: <registry name>, ...}``."""
    callbacks = []
    for key, spec in (cfg.get("callbacks") or {}).items():
        if spec is None:
            continue
        if "_target_" in spec:
            callbacks.append(hydra.utils.instantiate(spec))
        else:
            callbacks.append(instantiate_plugin("callbacks", spec, f"callbacks.{key}"))
    if cfg.trainer.get("enable_progress_bar", True):
        from lightning.pytorch.callbacks import TQDMProgressBar

        callbacks.append(TQDMProgressBar(refresh_rate=5))
    return callbacks


def build_loggers(cfg: DictConfig) -> list:
    return [hydra.utils.instantiate(spec) for spec in (cfg.get("logger") or {}).values() if spec is not None]


def _module_class(cfg: DictConfig):
    path = (cfg.get("module") or {}).get("cls", "lightning_modules.module.PotentialModule")
    return registry._import_dotted(path)


def _accepts(cls, name: str) -> bool:
    """Whether ``cls(...)`` takes the keyword argument ``name``."""
    params = inspect.signature(cls).parameters
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def initialise_statistics(module, datamodule: AtomsDataModule, e0_cfg: Any) -> None:
    """Set E0 (fit or explicit), the energy scale and the loss's label variances of a fresh
    model from the training set.

    An explicit mapping that leaves out some of the model's elements fixes the listed E0 and
    fits the others (least squares on the training energies less the fixed part)."""
    model = module.model
    elements = model.atomic_numbers
    streamed = datamodule.train_statistics()  # a graph store's one-pass sums, or None (in memory)
    if isinstance(e0_cfg, str):
        if e0_cfg != "fit":
            raise ConfigError(f"e0: expected 'fit' or a mapping element -> energy, got {e0_cfg!r}")
        e0 = streamed.fit_e0(elements) if streamed is not None else fit_e0(datamodule.train_graphs, elements)
    else:
        fixed = _plain(e0_cfg)
        e0 = streamed.fit_e0(elements, fixed=fixed) if streamed is not None else fit_e0(datamodule.train_graphs, elements, fixed=fixed)
    scale = streamed.energy_scale(elements, e0) if streamed is not None else energy_scale(datamodule.train_graphs, elements, e0)
    with torch.no_grad():
        for target in [model] + ([module.ema.module] if module.ema is not None else []):
            target.e0.copy_(torch.as_tensor(e0, dtype=target.e0.dtype))
            target.energy_scale.fill_(scale)
    initialise_loss_scales(module, datamodule, e0, streamed)


def initialise_loss_scales(module, datamodule: AtomsDataModule, e0, streamed=None) -> None:
    """With ``loss.normalize=variance``: the loss's label variances of the training set (energy
    per atom less ``e0``), from a graph store's one-pass sums (``streamed``) or the graphs."""
    if not (hasattr(module, "set_loss_scales") and getattr(module.loss_weights, "normalize", "none") == "variance"):
        return
    elements = module.model.atomic_numbers
    streamed = streamed if streamed is not None else datamodule.train_statistics()
    module.set_loss_scales(streamed.label_variances(elements, e0) if streamed is not None
                           else label_variances(datamodule.train_graphs, elements, e0))


def run_training(cfg: DictConfig) -> dict:
    """Train as configured; returns run_dir, checkpoint paths and the final metrics.

    torch's default dtype is set from ``cfg.dtype`` for the run and restored afterwards, so
    in-process callers (tests, ``mlip-design``) are not affected.
    """
    previous = torch.get_default_dtype()
    claimed_by_caller = RunDirectory.is_claimed(cfg.run_dir)
    run_dir = RunDirectory.claim(cfg.run_dir, lock=_rank_zero())
    try:
        return _run_training(cfg)
    finally:
        torch.set_default_dtype(previous)
        if not claimed_by_caller:
            run_dir.release()


def _run_training(cfg: DictConfig) -> dict:
    cfg = reconcile_precision(apply_nep_in(cfg))
    if cfg.get("stages"):  # staged training (lightning_modules/stages.py)
        from lightning_modules.stages import run_stages

        return run_stages(cfg, _train_once)
    result = _train_once(cfg)
    result.pop("model_config", None), result.pop("module_state", None)
    return result


def _train_once(cfg: DictConfig, initial: dict | None = None) -> dict:
    """One training run of ``cfg``; ``initial`` (a stage's predecessor): ``{model: config,
    module_state: state dict}`` to start from. The result also carries both for the next stage."""
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.dtype not in DTYPES:
        raise ConfigError(f"dtype: expected float32 or float64, got {cfg.dtype!r}")
    trainer_cfg = trainer_kwargs(_plain(cfg.trainer))
    check_trainer_config(trainer_cfg)  # before the (slow) data loading
    refine = RefineConfig.from_config(_plain(cfg.get("refine")))
    refine_seconds = None
    refining = refine.enabled(wall_budget=trainer_cfg.get("max_time") is not None)
    if refining:
        # the full-batch refinement takes its share of the wall budget (lightning_modules/refine.py)
        reduced, refine_seconds = split_budget(trainer_cfg.get("max_time"), refine.share)
        if reduced is not None:
            trainer_cfg["max_time"] = reduced
    torch.set_default_dtype(DTYPES[cfg.dtype])
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)

    model_cfg = _plain(cfg.model)
    init_weights = None
    if initial is not None:
        model_cfg = dict(initial["model"])
    elif cfg.get("init_from"):  # fine-tuning (lightning_modules/init_from.py)
        from lightning_modules.init_from import initial_model

        model_cfg, init_weights = initial_model(cfg.init_from, model_cfg)
    cutoff = validate_cutoffs(model_cfg)
    data_cfg = _plain(cfg.data)
    check_keywords(AtomsDataModule, data_cfg, "data", exclude=("cutoff", "split_file"))
    split_file = run_dir / "split.json"
    datamodule = AtomsDataModule(cutoff=cutoff, split_file=str(split_file), **data_cfg)
    datamodule.setup("fit")
    model_cfg["elements"] = resolve_elements(model_cfg.get("elements"), datamodule)
    if cfg.get("ckpt_path"):
        check_resume(cfg.ckpt_path, model_cfg)

    module_cls = _module_class(cfg)
    module = module_cls(
        model=model_cfg, loss=_plain(cfg.loss), optimizer=_plain(cfg.optimizer),
        scheduler=_plain(cfg.scheduler), ema=_plain(cfg.get("ema")),
        # nan_policy only for modules that take it (SNES has no gradient steps to skip)
        **({"nan_policy": str(cfg.get("nan_policy", "raise"))} if _accepts(module_cls, "nan_policy") else {}),
    )
    if initial is not None:
        module.load_state_dict(initial["module_state"], strict=True)
    elif init_weights is not None:
        from lightning_modules.init_from import load_initial_weights

        load_initial_weights(module, init_weights, f"init_from={cfg.init_from}")
        initialise_loss_scales(module, datamodule, module.model.e0.tolist())
    elif not cfg.get("ckpt_path"):
        initialise_statistics(module, datamodule, cfg.e0)
    if _rank_zero():
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
        datamodule.save_split(split_file)
        counts = module.model.parameter_counts()
        log.info("model parameters: %s", counts)

    loggers = build_loggers(cfg)
    callbacks = build_callbacks(cfg)
    if refining:
        callbacks.append(FullBatchRefinement(refine, refine_seconds))
    if not loggers:  # a learning-rate monitor needs a logger; without one it has nothing to do
        from lightning.pytorch.callbacks import LearningRateMonitor

        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    try:
        trainer = L.Trainer(
            **trainer_cfg,
            callbacks=callbacks,
            logger=loggers or False,
            default_root_dir=str(run_dir),
            inference_mode=False,
            plugins=[AtomicCheckpointIO()],  # a crash while saving never leaves a corrupt last.ckpt
        )
    except MisconfigurationException as exc:  # Lightning's own "your settings do not fit" error
        raise ConfigError(f"trainer: {exc}") from None
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))

    checkpoint_dir = run_dir / "checkpoints"
    result = {"run_dir": str(run_dir), "last_ckpt": str(checkpoint_dir / "last.ckpt"), "best_ckpt": str(checkpoint_dir / "best.ckpt"),
              "model_config": model_cfg, "module_state": module.state_dict()}
    if trainer.global_rank != 0:
        return result
    potential = module.eval_model
    graphs = datamodule.val_graphs or datamodule.train_graphs
    pred = predict(potential, graphs, batch_size=datamodule.val_batch_size)
    metrics = metrics_from_predictions(pred)
    if datamodule.test_graphs:
        test_metrics = metrics_from_predictions(predict(potential, datamodule.test_graphs, datamodule.val_batch_size))
        metrics.update({f"test_{k}": v for k, v in test_metrics.items()})
    metrics["parameters"] = module.model.parameter_counts()
    parity_plot(pred, run_dir / "parity.png", title=f"validation ({len(graphs)} structures)")
    write_json(metrics, run_dir / "metrics.json")
    print(format_table(metrics, f"\nFinal validation errors ({len(graphs)} structures, {metrics['parameters']['total']} parameters)"))
    if datamodule.test_graphs:
        test_view = {k[5:]: v for k, v in metrics.items() if k.startswith("test_")}
        print(format_table(test_view, f"Test errors ({len(datamodule.test_graphs)} structures)"))
    print(f"run directory: {run_dir}")
    result["metrics"] = metrics
    return result


@hydra.main(version_base=None, config_path="pkg://mlip_plugins.conf", config_name="train")
def _hydra_main(cfg: DictConfig) -> None:
    debug = bool(cfg.get("debug")) or os.environ.get("MLIP_DEBUG", "") not in ("", "0")
    try:
        run_dir = RunDirectory.claim(cfg.run_dir, lock=_rank_zero())  # claimed already by ClaimRunDirectory
    except USER_ERRORS as exc:
        exit_with_user_error(exc)
    try:
        set_threads(cfg.get("threads"), local_processes(cfg.trainer))  # process-wide: the app's choice, not run_training's
        run_training(cfg)
    except USER_ERRORS as exc:
        if debug:
            raise
        run_dir.clean_failed()  # removes only what this invocation created
        exit_with_user_error(exc)
    finally:
        run_dir.release()


def main() -> None:
    """Console entry point of ``mlip-train``: a bad override is one line and exit status 2."""
    from lightning_modules.hydra_errors import COMPOSITION_ERRORS, explain

    user_full_error = os.environ.get("HYDRA_FULL_ERROR", "") not in ("", "0")
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises, so its composition errors reach us
    try:
        try:
            check_group_overrides(sys.argv[1:])  # errors Hydra would report with a traceback
            shown = show_job_config_with_nep_in(sys.argv[1:])
        except USER_ERRORS as exc:  # a bad nep.in (a run reports its own errors in _hydra_main)
            exit_with_user_error(exc)
        if not shown:
            _hydra_main()
    except COMPOSITION_ERRORS as exc:
        if user_full_error:
            raise
        exit_with_user_error(explain(exc))


if __name__ == "__main__":
    main()
