"""Which plugins a model is made of, saved with its checkpoints, and checked again on loading.

:func:`model_plugins` walks a model's modules and records, for every module whose class is a
registered plugin, its group, name, distribution and version (plain strings, so the records
load with ``torch.load(weights_only=True)``). A class used by dotted path from a third-party
package is recorded too, with the distribution that ships its module. On loading,
:func:`check_plugins_installed` turns a missing plugin into an error that says which package
(and version) to install, instead of an "unknown plugin" error from deep inside the builder.
"""

from __future__ import annotations

import functools
import importlib
import warnings
from collections.abc import Iterable, Mapping
from importlib import metadata

from torch import nn

from mlip_plugins import registry

#: groups whose plugins are nn.Modules inside a model
MODEL_GROUPS = ("descriptors", "readouts", "energy_models", "routers", "long_range", "charge_models")


class MissingPluginError(registry.PluginError):
    """A checkpoint needs a plugin that is not installed; the message says what to install."""


def _target(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _registered_targets(groups: Iterable[str]) -> dict[str, registry.PluginInfo]:
    targets: dict[str, registry.PluginInfo] = {}
    for group in groups:
        for info in registry.list_group(group).plugins.values():
            targets.setdefault(info.value.replace(" ", ""), info)
    return targets


@functools.lru_cache(maxsize=1)
def _packages() -> Mapping[str, list[str]]:
    """Top-level import name -> distributions (scanning all metadata is slow: once per process)."""
    return metadata.packages_distributions()


@functools.lru_cache(maxsize=1)
def _core_and_dependencies() -> frozenset[str]:
    """Normalised names of mlip-plugins and its direct requirements (not plugin packages)."""
    names = {registry._normalise(registry.CORE_DISTRIBUTION)}
    try:
        for requirement in metadata.requires(registry.CORE_DISTRIBUTION) or []:
            head = requirement.split(";")[0]
            for sep in "<>=!~[ (":
                head = head.split(sep)[0]
            names.add(registry._normalise(head.strip()))
    except metadata.PackageNotFoundError:
        pass
    return frozenset(names)


def _distribution_of_module(module: str, packages: Mapping[str, list[str]]) -> tuple[str, str] | None:
    dists = packages.get(module.split(".")[0], [])
    if not dists:
        return None
    name = dists[0]
    try:
        return name, metadata.version(name)
    except metadata.PackageNotFoundError:
        return name, "?"


def model_plugins(model: nn.Module, groups: Iterable[str] = MODEL_GROUPS) -> list[dict]:
    """Plugin records ``{group, name, distribution, version, target}`` of every plugin in ``model``.

    Registered plugins are found by class (so a plugin nested in another, such as a router
    inside an MoE readout, is found too). A module from a package outside mlip-plugins and its
    dependencies, used by dotted path, gets ``group: ""`` and its dotted path as ``name``.
    """
    registered = _registered_targets(groups)
    owners: dict[str, tuple[str, str] | None] = {}
    records: dict[tuple[str, str], dict] = {}
    for module in model.modules():
        cls = type(module)
        target = _target(cls)
        info = registered.get(target)
        if info is not None:
            key = (info.group, info.name)
            records.setdefault(key, {
                "group": info.group, "name": info.name, "distribution": info.distribution,
                "version": info.version, "target": target,
            })
            continue
        top = cls.__module__.split(".")[0]
        if top not in owners:
            owners[top] = _distribution_of_module(cls.__module__, _packages())
        owner = owners[top]
        if owner is not None and registry._normalise(owner[0]) not in _core_and_dependencies():
            records.setdefault(("", target), {
                "group": "", "name": target, "distribution": owner[0], "version": owner[1], "target": target,
            })
    return sorted(records.values(), key=lambda r: (r["group"], r["name"]))


def _install_hint(record: Mapping) -> str:
    distribution, version = record.get("distribution") or "?", record.get("version") or ""
    if distribution in ("?", "<unknown>"):
        return f"install the package that provides {record.get('target') or record.get('name')}"
    pin = f"=={version}" if version and version != "?" else ""
    return f"pip install '{distribution}{pin}'"


def _describe(record: Mapping) -> str:
    group = record.get("group") or ""
    short = next((k for k, v in registry.GROUPS.items() if v == group), group)
    what = f"{short} plugin {record.get('name')!r}" if group else f"class {record.get('name')}"
    return f"{what} from {record.get('distribution')} {record.get('version')}"


def _is_installed(record: Mapping) -> tuple[bool, registry.PluginInfo | None]:
    group, name = record.get("group") or "", record.get("name") or ""
    if group:
        try:
            return True, registry.plugin_info(group, name)
        except registry.PluginError:
            return False, None
    module = (record.get("target") or name).partition(":")[0]
    try:
        importlib.import_module(module)
    except ImportError:
        return False, None
    return True, None


def check_plugins_installed(records: Iterable[Mapping] | None) -> None:
    """Raise :class:`MissingPluginError` naming what to install if a recorded plugin is missing.

    A plugin that is installed from another distribution or at another version only warns:
    the model will build, but may not be the one that was trained.
    """
    missing = []
    for record in records or []:
        installed, info = _is_installed(record)
        if not installed:
            missing.append(record)
            continue
        if info is not None and registry._normalise(info.distribution) != registry._normalise(str(record.get("distribution"))):
            warnings.warn(
                f"{_describe(record)} is now provided by {info.distribution} {info.version}; the model may differ",
                stacklevel=2,
            )
        elif info is not None and str(record.get("version")) != info.version:
            warnings.warn(
                f"{_describe(record)} was used to train this model; {info.version} is installed",
                stacklevel=2,
            )
    if missing:
        lines = [f"  - {_describe(r)}: {_install_hint(r)}" for r in missing]
        hint = ""
        if registry._autoload_disabled():
            hint = f"\n({registry.DISABLE_AUTOLOAD_ENV} is set, which hides every plugin outside {registry.CORE_DISTRIBUTION})"
        raise MissingPluginError("this model needs plugins that are not installed:\n" + "\n".join(lines) + hint)
