"""Build models from plain config dicts (what Hydra gives us).

An energy spec is one of::

    {descriptor: {name: radial, ...}, readout: {name: mlp, ...}, name: optional}   # a term
    {sum: [spec, spec, ...]}                                                       # E = A + B + ...
    {product: [spec, spec, ...]}                                                   # E = A * B * ...
    {model: {name: <energy_models plugin>, ...}}                                   # any other node

Plugins are looked up by short name or dotted path in the registry; the builder injects
``num_species`` and a default ``cutoff`` so configs stay short.
"""

from __future__ import annotations

import contextvars
import inspect
import math
import re
from collections.abc import Mapping
from typing import Any

from torch import nn

from mlip_plugins import registry
from mlip_plugins.elements import ElementMap
from mlip_plugins.errors import MLIPError
from mlip_plugins.models.composition import Product, Sum, Term
from mlip_plugins.models.potential import Potential


class ConfigError(MLIPError, ValueError):
    """A model config is malformed; the message names the offending key."""


def _plain(cfg: Any) -> Any:
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(cfg, (DictConfig, ListConfig)):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    return cfg


#: the pseudo-group of :func:`build` for a node of the energy tree (term, sum, product, model)
ENERGY_TREE = "energy"


#: constructor arguments the builder passes itself (not options a config sets)
BUILDER_ARGUMENTS = ("num_species", "in_dim", "build_child")


def unexpected_options_message(where: str, name: str, unexpected: list[str], options: list[str]) -> str:
    """One line naming the plugin, the options it does not take and the ones it does.

    Hydra merges a dict override into the preset's node, so ``...descriptor.name=eam`` (or
    ``...descriptor={name: eam}``) keeps the old descriptor's options; the message says how to
    replace the node instead: delete it with ``~`` and add the new one with ``+``.
    """
    node = re.sub(r"\[(\d+)\]", r".\1", where)
    return (f"{where}: plugin {name!r} takes no option {', '.join(repr(k) for k in unexpected)} (its options: "
            f"{', '.join(options) or 'none'}); to replace a preset's node rather than merge into it: "
            f"'~{node}' '+{node}={{name: {name}}}'")




#: numbers the unnamed terms of one model (term0, term1, ...) across nested ``build`` calls
_TERM_COUNTER: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("term_counter", default=None)


def build(group: str, spec: Any, where: str, **injected: Any) -> Any:
    """Build one component from its config: the one entry point for the builder and for every
    composite plugin (an electrostatic model's ``short_range`` tree, a message-passing
    descriptor's ``base``, ...).

    ``group`` is a registry group (``descriptors``, ``readouts``, ``long_range``, ...), whose
    ``spec`` is ``{name: <plugin>, **kwargs}``, or :data:`ENERGY_TREE` for an energy tree (see
    the module docstring). ``where`` is the config path used in error messages. ``injected``
    are the values the surrounding model knows (``num_species``, ``cutoff``, ``in_dim``);
    each is passed only where the constructor accepts it and never overrides the config.
    """
    if group != ENERGY_TREE:
        return _instantiate(group, spec, where, injected)
    counter = _TERM_COUNTER.get()
    if counter is not None:  # a composite plugin building its child tree: keep numbering terms
        return _build_energy_tree(spec, where, injected, counter)
    token = _TERM_COUNTER.set([0])
    try:
        return _build_energy_tree(spec, where, injected, _TERM_COUNTER.get())
    finally:
        _TERM_COUNTER.reset(token)


def instantiate_plugin(group: str, spec: Mapping, where: str, **injected: Any) -> Any:
    """``build(group, spec, where, **injected)`` for a registry group (kept for plugin authors)."""
    return _instantiate(group, spec, where, injected)


def _instantiate(group: str, spec: Mapping, where: str, injected: Mapping[str, Any]) -> Any:
    """Resolve ``spec['name']`` in ``group`` and call it with the remaining keys + accepted injections."""
    spec = _plain(spec)
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where}: expected a mapping with 'name', got {type(spec).__name__} ({spec!r})")
    spec = dict(spec)
    if "name" not in spec:
        raise ConfigError(f"{where}: missing 'name' (a registered plugin name or a dotted path)")
    name = spec.pop("name")
    factory = registry.resolve(group, name)
    try:
        params = inspect.signature(factory).parameters
        accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    except (TypeError, ValueError):
        params, accepts_any = {}, True
    unexpected = [] if accepts_any else sorted(key for key in spec if key not in params)
    if unexpected:
        raise ConfigError(unexpected_options_message(where, name, unexpected, [p for p in params if p not in BUILDER_ARGUMENTS]))
    for key, value in injected.items():
        if key not in spec and (accepts_any or key in params):
            spec[key] = value
    try:
        return factory(**spec)
    except (TypeError, ValueError) as exc:  # a constructor refusing its config keys or values
        if isinstance(exc, MLIPError):  # already names its config path or file
            raise
        raise ConfigError(f"{where}: {exc}") from exc


def build_energy_model(spec: Mapping, num_species: int, cutoff: float, _path: str = "model.energy") -> nn.Module:
    """Build the per-atom energy tree described by ``spec`` (see module docstring)."""
    return build(ENERGY_TREE, spec, _path, num_species=num_species, cutoff=cutoff)


def _build_energy_tree(spec: Any, path: str, injected: Mapping[str, Any], counter: list[int]) -> nn.Module:
    """One node of the energy tree; ``counter`` numbers the unnamed terms (term0, term1, ...)."""
    spec = _plain(spec)
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{path}: expected a mapping, got {type(spec).__name__}")
    num_species, cutoff = injected["num_species"], injected["cutoff"]
    for kind, combination in (("sum", Sum), ("product", Product)):
        if kind in spec:
            children = spec[kind]
            if not isinstance(children, (list, tuple)):
                raise ConfigError(f"{path}.{kind}: expected a list of terms")
            built = [_build_energy_tree(child, f"{path}.{kind}[{k}]", injected, counter) for k, child in enumerate(children)]
            return combination(built, name=spec.get("name", kind))
    if "model" in spec:
        child_path = f"{path}.model"
        # composite models build their children with ``build(ENERGY_TREE, ...)``; ``build_child``
        # stays injected for third-party energy models written against the older contract
        return _instantiate(
            "energy_models", spec["model"], child_path,
            {**injected, "build_child": lambda child: _build_energy_tree(child, child_path, injected, counter)},
        )
    if "descriptor" not in spec:
        raise ConfigError(f"{path}: expected 'descriptor' + 'readout', 'sum', 'product' or 'model' (got {sorted(spec)})")
    descriptor = _instantiate("descriptors", spec["descriptor"], f"{path}.descriptor", {"num_species": num_species, "cutoff": cutoff})
    readout_spec = dict(spec.get("readout") or {"name": "mlp"})
    readout = _instantiate("readouts", readout_spec, f"{path}.readout", {"in_dim": int(descriptor.dim), "num_species": num_species})
    name = spec.get("name") or f"term{counter[0]}"
    counter[0] += 1
    return Term(descriptor, readout, name=name)


def _is_cutoff_key(key: str, value: Any) -> bool:
    """``cutoff`` and ``typewise_cutoffs`` always; ``cutoff_*``/``*_cutoff`` when they hold
    numbers (a plugin may name a flag or a function that way: ``use_x_cutoff: true``)."""
    if key in ("cutoff", "typewise_cutoffs"):
        return True
    numeric = isinstance(value, (int, float, list, tuple)) and not isinstance(value, bool)
    return numeric and (key.startswith("cutoff_") or key.endswith("_cutoff"))


def _check_cutoff_value(value: Any, path: str) -> None:
    if isinstance(value, (list, tuple)):
        for k, item in enumerate(value):
            _check_cutoff_value(item, f"{path}[{k}]")
        return
    number = None if isinstance(value, bool) else value
    if isinstance(number, str):
        try:
            number = float(number)
        except ValueError:
            number = None
    if not isinstance(number, (int, float)) or not math.isfinite(number) or number <= 0:
        raise ConfigError(f"{path}: a cutoff must be a finite number > 0 (Å), got {value!r}")


def validate_cutoffs(model_cfg: Mapping) -> float:
    """Check ``model.cutoff`` and every cutoff in the energy tree (keys ``cutoff``,
    ``typewise_cutoffs`` and numeric ``cutoff_*``/``*_cutoff``): each a finite number > 0,
    ``null`` allowed below the top level (an optional cutoff). Returns the model cutoff.

    A zero cutoff gives a NaN loss and a negative one a term that silently sees no neighbour,
    so both stop here, naming the config path.
    """
    cfg = _plain(model_cfg)
    if "cutoff" not in cfg:
        raise ConfigError("model: missing 'cutoff'")
    _check_cutoff_value(cfg["cutoff"], "model.cutoff")

    def walk(node: Any, path: str) -> None:
        if isinstance(node, Mapping):
            for key, value in node.items():
                where = f"{path}.{key}"
                if _is_cutoff_key(str(key), value) and value is not None and not isinstance(value, Mapping):
                    _check_cutoff_value(value, where)
                else:
                    walk(value, where)
        elif isinstance(node, (list, tuple)):
            for k, item in enumerate(node):
                walk(item, f"{path}[{k}]")

    walk(cfg.get("energy"), "model.energy")
    return float(cfg["cutoff"])


def build_potential(model_cfg: Mapping) -> nn.Module:
    """The full ``Potential`` from the ``model`` section of the config: the energy tree is built
    first (top-down), then handed to the ``Potential``."""
    cfg = dict(_plain(model_cfg))
    for key in ("elements", "cutoff", "energy"):
        if key not in cfg:
            raise ConfigError(f"model: missing {key!r}")
    if cfg["elements"] in (None, "auto"):
        raise ConfigError("model.elements: 'auto' takes the elements of the training data, which only mlip-train "
                          "knows; give a list here (e.g. ['Cu', 'Au'])")
    elements = ElementMap(cfg["elements"])
    cutoff = validate_cutoffs(cfg)
    energy_model = build(ENERGY_TREE, cfg["energy"], "model.energy", num_species=elements.num_species, cutoff=cutoff)
    return Potential(elements=cfg["elements"], cutoff=cutoff, energy_model=energy_model, energy_model_spec=cfg["energy"])
