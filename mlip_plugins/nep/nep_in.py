"""GPUMD ``nep.in`` -> overrides of the Hydra training config (``mlip-train nep_in=path``).

A ``nep.in`` has one ``keyword values`` per line (``#`` starts a comment; any order, but
``type_weight`` after ``type``; only ``type`` is mandatory). :func:`nep_in_to_overrides` returns
a nested dict that the training app merges over the composed config (usually
``experiment=nep``, whose energy tree is ``{model: {name: nep}}``):

==================  ===========================================================================
nep.in              config
==================  ===========================================================================
type N A B ...      model.elements = [A, B, ...]
version 3|4         model.energy.model.version
cutoff R A          model.cutoff = R; model.energy.model.cutoff = R, .cutoff_angular = A
                    (2N values: per-element cutoffs, model.energy.model.typewise_cutoffs)
n_max R A           model.energy.model.n_max = [R, A]
basis_size R A      model.energy.model.basis_size = [R, A]
l_max L [4b ...]    model.energy.model.l_max = [L, 4b, 5b, q112, q123, q233, q134] (as given)
neuron N            model.energy.model.neuron
model_type 1|2      a TNEP (dipole | polarizability): model.energy.model.model_type, no energies
                    (data.require_energy = false, e0 = 0, loss.<dipole|polarizability> = 1, the rest 0)
charge_mode 0|1|2   model.energy.model.charge_mode (GPUMD's qNEP; loss.charges / loss.bec weigh
                    charge and Born-effective-charge labels where the data has them)
zbl r               model.energy.model.zbl = {inner: r/2, outer: r}
use_typewise_cutoff_zbl [f]   zbl.typewise_factor = f (default 0.7)
lambda_1, lambda_2  model.energy.model.lambda_1 / lambda_2 (NEP's L1/L2 regulariser)
lambda_e/f/v        loss.energy / loss.forces / loss.stress
batch B             data.batch_size
generation G        trainer.max_steps = G (one generation = one batch), trainer.max_epochs = -1
generation G1 G2 .. staged training: stages = [{trainer.max_steps: G1}, ...] (also epoch E1 E2 ..);
                    lambda_e/f/v, start_lr, stop_lr then take 1 value or one per stage
output_interval N   callbacks.gpumd_outputs.loss_interval = N (a loss.out row every N generations)
population P        optimizer.population (SNES only)
sigma0 s            optimizer.sigma0 (SNES only)
epoch E (GNEP)      trainer.max_epochs = E
start_lr, stop_lr   optimizer.lr, scheduler.min_lr_ratio = stop/start  (GNEP's keywords)
weight_decay w      optimizer.name = adamw, optimizer.weight_decay = w (GNEP)
==================  ===========================================================================

Model keywords missing from the file take GPUMD's defaults (cutoff 8 4, n_max 4 4,
basis_size 8 8, l_max 4 2 0, neuron 30), since a nep.in describes the whole model.
Keywords with no counterpart here (``lambda_shear``, ``type_weight``, ``force_delta``,
...) are reported with a warning and skipped; keywords that would change
what is fitted and that we cannot honour (``prediction 1``,
``fine_tune``, typewise cutoff *factors*) are errors naming the file and line.

Two differences in units to keep in mind: GPUMD's loss is a sum of RMSEs and ours a sum of
MSEs (the lambdas weigh different things), and GPUMD's virial error is per atom in eV while
ours is on the stress in eV/Å^3.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from mlip_plugins.errors import MLIPError
from mlip_plugins.nep.descriptor import l_max_entries, parse_l_max

log = logging.getLogger(__name__)

#: GPUMD's defaults for the keywords that define the model
GPUMD_MODEL_DEFAULTS = {"cutoff": [8.0, 4.0], "n_max": [4, 4], "basis_size": [8, 8], "l_max": [4, 2, 0], "neuron": 30}
#: the default factor of ``use_typewise_cutoff_zbl`` without a value (GPUMD's)
TYPEWISE_ZBL_FACTOR = 0.7

IGNORED = {
    "lambda_shear": "shear virial components are weighted like the others",
    "type_weight": "per-element force weights are not supported",
    "force_delta": "force-magnitude weighting is not supported",
    "save_potential": "checkpoints are configured through callbacks",
    "initial_para": "initial parameters follow GNEP's scheme",
    "energy_shift": "per-element reference energies are always fitted (config key e0)",
    "lr_cos_restart": "cosine restarts are not supported; a single warm-up + cosine schedule is used",
    "output_descriptor": "use the descriptor plugin directly",
    "atomic_v": "only atomic_v 0 (per-structure virials) is supported",
}
UNSUPPORTED = {
    "prediction": "prediction mode is not a training run (use mlip-eval)",
    "fine_tune": "fine-tuning a foundation model is not supported",
    "use_typewise_cutoff": "typewise cutoff factors are not supported (give per-element cutoffs on the cutoff line)",
    "vdw": "van der Waals NEP models are not supported",
}


class NEPInputError(MLIPError, ValueError):
    """A nep.in the training app cannot honour; the message names the file and line."""


def parse_nep_in(path: str | os.PathLike) -> list[tuple[int, str, list[str]]]:
    """(line number, keyword, values) for every non-empty, non-comment line."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: nep.in not found")
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        keyword, *values = line.split()
        entries.append((number, keyword.lower(), values))
    return entries


def _set(tree: dict, dotted: str, value: Any) -> None:
    node = tree
    keys = dotted.split(".")
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value


#: the loss weights a stage can change: nep.in keyword -> config key
STAGED_LOSS = (("lambda_e", "loss.energy"), ("lambda_f", "loss.forces"), ("lambda_v", "loss.stress"))


def _stage_overrides(values: dict, numbers, where, optimizer_name: str | None) -> list[dict]:
    """Staged training (lightning_modules/stages.py) from several values on ``generation`` or
    ``epoch``: one override mapping per stage, with that stage's length and, where a keyword
    gives one value per stage, its loss weight or learning rates. [] for a single stage."""
    lengths = {k: numbers(k, int) for k in ("generation", "epoch") if k in values}
    counts = {k: len(v) for k, v in lengths.items()}
    stage_count = max(counts.values(), default=1)
    if stage_count <= 1:
        for keyword in [k for k, _ in STAGED_LOSS] + ["start_lr", "stop_lr"]:
            if keyword in values and len(values[keyword][1]) > 1:
                raise NEPInputError(f"{where(values[keyword][0])}: {keyword}: several values need as many stages "
                                    f"(several values on generation or epoch)")
        return []
    if len(counts) == 2 and min(counts.values()) > 1 and counts["generation"] != counts["epoch"]:
        raise NEPInputError(f"{where(values['epoch'][0])}: epoch: {counts['epoch']} stages, but generation has {counts['generation']}")
    per_stage: dict[str, list[float]] = {}
    for keyword in [k for k, _ in STAGED_LOSS] + ["start_lr", "stop_lr"]:
        if keyword in values:
            given = numbers(keyword, float)
            if len(given) not in (1, stage_count):
                raise NEPInputError(f"{where(values[keyword][0])}: {keyword}: expected 1 or {stage_count} values "
                                    f"(one per stage), got {len(given)}")
            per_stage[keyword] = given * stage_count if len(given) == 1 else given
    stages = []
    for k in range(stage_count):
        stage: dict = {}
        if "generation" in lengths and len(lengths["generation"]) > 1:
            _set(stage, "trainer.max_steps", lengths["generation"][k])
            _set(stage, "trainer.max_epochs", -1)
        elif "epoch" in lengths:
            _set(stage, "trainer.max_epochs", lengths["epoch"][k])
        for keyword, target in STAGED_LOSS:
            if keyword in per_stage:
                _set(stage, target, per_stage[keyword][k])
        if optimizer_name != "snes" and "start_lr" in per_stage:
            _set(stage, "optimizer.lr", per_stage["start_lr"][k])
            if "stop_lr" in per_stage:
                _set(stage, "scheduler.min_lr_ratio", per_stage["stop_lr"][k] / per_stage["start_lr"][k])
        stages.append(stage)
    return stages


def nep_in_to_overrides(path: str | os.PathLike, config: Mapping | None = None) -> dict:
    """A nested dict of config overrides from a GPUMD nep.in (see the module docstring).

    Args:
        path: the nep.in.
        config: the composed config (optional). SNES keywords (``population``, ``sigma0``)
            become ``optimizer.*`` only when ``config.optimizer.name`` is ``snes``; without
            a config, or for gradient training, they are skipped with a warning.
    """
    path = Path(path)
    entries = parse_nep_in(path)
    where = lambda number: f"{path}: line {number}"  # noqa: E731
    optimizer_name = None
    if config is not None:
        optimizer = config.get("optimizer") if hasattr(config, "get") else None
        optimizer_name = str((optimizer or {}).get("name", "")).lower() or None
    seen: dict[str, int] = {}
    values: dict[str, tuple[int, list[str]]] = {}
    for number, keyword, args in entries:
        if keyword in seen:
            raise NEPInputError(f"{where(number)}: keyword {keyword!r} repeated (first on line {seen[keyword]})")
        seen[keyword] = number
        values[keyword] = (number, args)
    if "type" not in values:
        raise NEPInputError(f"{path}: the mandatory keyword 'type' is missing")

    def numbers(keyword: str, kind=float, count: tuple[int, ...] | None = None) -> list:
        number, args = values[keyword]
        try:
            out = [kind(v) if kind is not int else int(float(v)) for v in args]
        except ValueError as exc:
            raise NEPInputError(f"{where(number)}: {keyword}: expected numbers, got {' '.join(args)!r}") from exc
        if count is not None and len(out) not in count:
            raise NEPInputError(f"{where(number)}: {keyword}: expected {' or '.join(map(str, count))} values, got {len(out)}")
        return out

    overrides: dict = {}
    model = "model.energy.model."
    number, args = values["type"]
    try:
        n_types = int(args[0])
    except (IndexError, ValueError) as exc:
        raise NEPInputError(f"{where(number)}: type: expected 'type N symbol_1 ... symbol_N'") from exc
    symbols = args[1:]
    if len(symbols) != n_types:
        raise NEPInputError(f"{where(number)}: type: {n_types} types announced but {len(symbols)} symbols given")
    from ase.data import atomic_numbers

    for symbol in symbols:
        if symbol not in atomic_numbers:
            raise NEPInputError(f"{where(number)}: type: unknown element {symbol!r}")
    _set(overrides, "model.elements", list(symbols))
    _set(overrides, "model.energy", {"model": {"name": "nep"}})

    for keyword, (number, args) in values.items():
        if keyword in UNSUPPORTED:
            if keyword in ("prediction", "vdw") and all(a in ("0",) for a in args):
                continue  # the default value is fine
            raise NEPInputError(f"{where(number)}: {keyword}: {UNSUPPORTED[keyword]}")
        if keyword in IGNORED:
            if keyword == "atomic_v" and all(a == "0" for a in args):
                continue
            log.warning("%s: %s ignored: %s", where(number), keyword, IGNORED[keyword])

    if "version" in values:
        version = numbers("version", int, (1,))[0]
        if version not in (3, 4):
            raise NEPInputError(f"{where(values['version'][0])}: version: only 3 and 4 are supported, got {version}")
        _set(overrides, model + "version", version)
    if "model_type" in values:
        kind = numbers("model_type", int, (1,))[0]
        if kind not in (0, 1, 2):
            raise NEPInputError(f"{where(values['model_type'][0])}: model_type: expected 0 (potential), 1 (dipole) or "
                                f"2 (polarizability), got {kind}")
        if kind:  # a TNEP: trained on dipoles / polarizabilities, no energies
            target = "dipole" if kind == 1 else "polarizability"
            _set(overrides, model + "model_type", kind)
            _set(overrides, "data.require_energy", False)
            _set(overrides, "e0", {symbol: 0.0 for symbol in symbols})
            overrides["loss"] = {"energy": 0.0, "forces": 0.0, "stress": 0.0, target: 1.0}
    if "charge_mode" in values:
        mode = numbers("charge_mode", int, (1,))[0]
        if mode not in (0, 1, 2):
            raise NEPInputError(f"{where(values['charge_mode'][0])}: charge_mode: expected 0, 1 or 2 (GPUMD's qNEP modes), got {mode}")
        if mode and "version" in values and numbers("version", int, (1,))[0] != 4:
            raise NEPInputError(f"{where(values['charge_mode'][0])}: charge_mode {mode}: a qNEP is a NEP4 model (version 4)")
        if mode:
            _set(overrides, model + "charge_mode", mode)

    cutoff = list(GPUMD_MODEL_DEFAULTS["cutoff"])
    if "cutoff" in values:
        cut = numbers("cutoff", float)
        if len(cut) == 2:
            cutoff = cut
        elif len(cut) == 2 * n_types and n_types > 1:
            pairs = [[cut[2 * t], cut[2 * t + 1]] for t in range(n_types)]
            order = sorted(range(n_types), key=lambda t: atomic_numbers[symbols[t]])
            _set(overrides, model + "typewise_cutoffs", [pairs[t] for t in order])
            cutoff = [max(p[0] for p in pairs), max(p[1] for p in pairs)]
        else:
            raise NEPInputError(f"{where(values['cutoff'][0])}: cutoff: expected 'rc_R rc_A' or 2 values per type, got {len(cut)}")
        if cutoff[1] > cutoff[0]:
            raise NEPInputError(f"{where(values['cutoff'][0])}: cutoff: the angular cutoff exceeds the radial one")
    _set(overrides, "model.cutoff", float(cutoff[0]))
    _set(overrides, model + "cutoff", float(cutoff[0]))
    _set(overrides, model + "cutoff_angular", float(cutoff[1]))
    for keyword in ("n_max", "basis_size"):
        value = numbers(keyword, int, (2,)) if keyword in values else GPUMD_MODEL_DEFAULTS[keyword]
        _set(overrides, model + keyword, list(value))
    l_max = numbers("l_max", int, tuple(range(1, 8))) if "l_max" in values else GPUMD_MODEL_DEFAULTS["l_max"]
    if "l_max" in values and len(values["l_max"][1]) == 1:
        l_max = [l_max[0], 2]  # GPUMD: an l_max line with one value keeps the 4-body default
    try:
        l_max = l_max_entries(*parse_l_max(l_max))
    except ValueError as exc:
        raise NEPInputError(f"{where(values['l_max'][0])}: {exc}") from exc
    _set(overrides, model + "l_max", l_max)
    _set(overrides, model + "neuron", numbers("neuron", int, (1,))[0] if "neuron" in values else GPUMD_MODEL_DEFAULTS["neuron"])

    if "zbl" in values:
        outer = numbers("zbl", float, (1,))[0]
        zbl: dict = {"inner": 0.5 * outer, "outer": outer}
        if "use_typewise_cutoff_zbl" in values:
            factor = numbers("use_typewise_cutoff_zbl", float)
            zbl = {"inner": 0.0, "outer": outer, "typewise_factor": factor[0] if factor else TYPEWISE_ZBL_FACTOR}
        _set(overrides, model + "zbl", zbl)
    elif "use_typewise_cutoff_zbl" in values:
        raise NEPInputError(f"{where(values['use_typewise_cutoff_zbl'][0])}: use_typewise_cutoff_zbl needs a zbl line")

    for keyword in ("lambda_1", "lambda_2"):
        if keyword in values:
            _set(overrides, model + keyword, numbers(keyword, float, (1,))[0])
    for keyword, target in STAGED_LOSS:
        if keyword in values and len(values[keyword][1]) == 1:
            _set(overrides, target, numbers(keyword, float, (1,))[0])

    if "batch" in values:
        _set(overrides, "data.batch_size", numbers("batch", int, (1,))[0])
    if "output_interval" in values:
        callbacks = (config.get("callbacks") if config is not None and hasattr(config, "get") else None) or {}
        if "gpumd_outputs" in callbacks:
            _set(overrides, "callbacks.gpumd_outputs.loss_interval", numbers("output_interval", int, (1,))[0])
        else:
            log.warning("%s: output_interval ignored: the gpumd_outputs callback (loss.out) is not configured",
                        where(values["output_interval"][0]))
    stages = _stage_overrides(values, numbers, where, optimizer_name)
    if stages:
        overrides["stages"] = stages
    elif "generation" in values:
        _set(overrides, "trainer.max_steps", numbers("generation", int, (1,))[0])
        _set(overrides, "trainer.max_epochs", -1)
    if "epoch" in values and not stages:
        _set(overrides, "trainer.max_epochs", numbers("epoch", int, (1,))[0])
    for keyword in ("population", "sigma0"):
        if keyword in values:
            if optimizer_name == "snes":
                _set(overrides, f"optimizer.{keyword}", numbers(keyword, int if keyword == "population" else float, (1,))[0])
            else:
                log.warning("%s: %s ignored: it is an SNES setting and the optimizer is %s", where(values[keyword][0]),
                            keyword, optimizer_name or "not SNES")
    gradient_keywords = [k for k in ("start_lr", "stop_lr", "weight_decay") if k in values]
    if optimizer_name == "snes":
        for keyword in gradient_keywords:
            log.warning("%s: %s ignored: it is a gradient-training (GNEP) setting and the optimizer is SNES",
                        where(values[keyword][0]), keyword)
    else:
        if "start_lr" in values and "stages" not in overrides:
            start = numbers("start_lr", float, (1,))[0]
            _set(overrides, "optimizer.lr", start)
            if "stop_lr" in values:
                _set(overrides, "scheduler.min_lr_ratio", numbers("stop_lr", float, (1,))[0] / start)
        if "weight_decay" in values:
            _set(overrides, "optimizer.name", "adamw")
            _set(overrides, "optimizer.weight_decay", numbers("weight_decay", float, (1,))[0])

    known = set(IGNORED) | set(UNSUPPORTED) | {
        "type", "version", "cutoff", "n_max", "basis_size", "l_max", "neuron", "zbl", "use_typewise_cutoff_zbl",
        "lambda_1", "lambda_2", "lambda_e", "lambda_f", "lambda_v", "batch", "generation", "epoch", "population",
        "sigma0", "start_lr", "stop_lr", "weight_decay", "output_interval", "charge_mode", "model_type",
    }
    for keyword, (number, _) in values.items():
        if keyword not in known:
            raise NEPInputError(f"{where(number)}: unknown nep.in keyword {keyword!r}")
    return overrides
