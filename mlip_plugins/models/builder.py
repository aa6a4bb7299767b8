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

import inspect
import re
from collections.abc import Mapping
from typing import Any

from torch import nn

from mlip_plugins import registry
from mlip_plugins.models.composition import Product, Sum, Term
from mlip_plugins.errors import MLIPError


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


def instantiate_plugin(group: str, spec: Mapping, where: str, **injected: Any) -> Any:
    """Resolve ``spec['name']`` in ``group`` and call it with the remaining keys.

    Injected arguments are passed only where the constructor accepts them (or ``**kwargs``),
    and never override a value the config sets.
    """
    spec = dict(_plain(spec))
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
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def build_energy_model(spec: Mapping, num_species: int, cutoff: float, _path: str = "model.energy", _counter: list | None = None) -> nn.Module:
    """Build the per-atom energy tree described by ``spec`` (see module docstring)."""
    spec = _plain(spec)
    counter = _counter if _counter is not None else [0]
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{_path}: expected a mapping, got {type(spec).__name__}")
    for kind, combination in (("sum", Sum), ("product", Product)):
        if kind in spec:
            children = spec[kind]
            if not isinstance(children, (list, tuple)):
                raise ConfigError(f"{_path}.{kind}: expected a list of terms")
            built = [
                build_energy_model(child, num_species, cutoff, f"{_path}.{kind}[{k}]", counter)
                for k, child in enumerate(children)
            ]
            return combination(built, name=spec.get("name", kind))
    if "model" in spec:
        return instantiate_plugin(
            "energy_models", spec["model"], f"{_path}.model", num_species=num_species, cutoff=cutoff,
            build_child=lambda child, path=f"{_path}.model": build_energy_model(child, num_species, cutoff, path, counter),
        )
    if "descriptor" not in spec:
        raise ConfigError(f"{_path}: expected 'descriptor' + 'readout', 'sum', 'product' or 'model' (got {sorted(spec)})")
    descriptor = instantiate_plugin("descriptors", spec["descriptor"], f"{_path}.descriptor", num_species=num_species, cutoff=cutoff)
    readout_spec = dict(spec.get("readout") or {"name": "mlp"})
    readout = instantiate_plugin("readouts", readout_spec, f"{_path}.readout", in_dim=int(descriptor.dim), num_species=num_species)
    name = spec.get("name") or f"term{counter[0]}"
    counter[0] += 1
    return Term(descriptor, readout, name=name)


def build_potential(model_cfg: Mapping) -> nn.Module:
    """The full ``Potential`` from the ``model`` section of the config."""
    from mlip_plugins.models.potential import Potential

    cfg = dict(_plain(model_cfg))
    for key in ("elements", "cutoff", "energy"):
        if key not in cfg:
            raise ConfigError(f"model: missing {key!r}")
    if cfg["elements"] in (None, "auto"):
        raise ConfigError("model.elements: 'auto' takes the elements of the training data, which only mlip-train "
                          "knows; give a list here (e.g. ['Cu', 'Au'])")
    potential = Potential(
        elements=cfg["elements"],
        cutoff=float(cfg["cutoff"]),
        energy_model_spec=cfg["energy"],
    )
    return potential
