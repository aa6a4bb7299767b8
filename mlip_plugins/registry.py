"""Find plugins through Python entry points and resolve them by short name or dotted path.

Each extension point is an entry-point group (see ``GROUPS``). The built-in plugins are
registered in this project's own ``pyproject.toml`` exactly like a third-party package's, so
there is one code path for both. Discovery lists entry points without importing them; a
plugin is imported on first use, and a plugin that fails to import is reported (name,
distribution, error) without breaking the others.

Set ``MLIP_PLUGINS_DISABLE_AUTOLOAD=1`` to ignore every plugin that is not part of the
``mlip-plugins`` distribution itself (for debugging a broken environment).
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import importlib
import os
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any
from mlip_plugins.errors import MLIPError

CORE_DISTRIBUTION = "mlip-plugins"
DISABLE_AUTOLOAD_ENV = "MLIP_PLUGINS_DISABLE_AUTOLOAD"

#: short group name -> entry-point group
GROUPS: dict[str, str] = {
    "descriptors": "mlip_plugins.descriptors",
    "routers": "mlip_plugins.routers",
    "long_range": "mlip_plugins.long_range",
    "callbacks": "mlip_plugins.callbacks",
    "charge_models": "mlip_plugins.charge_models",
    "readouts": "mlip_plugins.readouts",
    "energy_models": "mlip_plugins.energy_models",
    # value = a Python package holding a Hydra config tree that mirrors conf/ (model/descriptor/*.yaml, ...);
    # hydra_plugins/mlip_plugins_searchpath appends it to the search path of the mlip-train app
    "configs": "mlip_plugins.configs",
}


class PluginError(MLIPError, LookupError):
    """A plugin could not be found, is ambiguous, or failed to import."""


#: set (to the file being loaded) while a model is built from a file: dotted paths are refused
_REGISTERED_ONLY: contextvars.ContextVar[str | None] = contextvars.ContextVar("mlip_plugins_registered_only", default=None)


@contextlib.contextmanager
def registered_only(source: str):
    """Within the block, :func:`resolve` refuses dotted paths (only registered plugins resolve).

    A dotted path imports any installed module and calls any object in it with the keys of
    the spec (``{name: "os:system", command: "..."}`` runs a shell command), so a model file
    from elsewhere must not choose one. ``source`` names the file in the error.
    """
    token = _REGISTERED_ONLY.set(str(source))
    try:
        yield
    finally:
        _REGISTERED_ONLY.reset(token)


@dataclass(frozen=True)
class PluginInfo:
    """One registered plugin: where it comes from, without importing it."""

    group: str
    name: str
    value: str
    distribution: str
    version: str

    def load(self) -> Any:
        """Import the plugin object, with an error that names the plugin and its distribution."""
        module_name, _, attr = self.value.partition(":")
        try:
            obj = importlib.import_module(module_name)
            for part in filter(None, attr.split(".")):
                obj = getattr(obj, part)
        except Exception as exc:  # noqa: BLE001 - any import failure is reported, never fatal to others
            raise PluginError(
                f"plugin {self.name!r} in group {self.group!r} from distribution "
                f"{self.distribution} {self.version} failed to import ({self.value}): "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        return obj


@dataclass
class GroupListing:
    """All plugins of one group; ``conflicts`` holds names claimed by several distributions."""

    plugins: dict[str, PluginInfo] = field(default_factory=dict)
    conflicts: dict[str, list[PluginInfo]] = field(default_factory=dict)


def _autoload_disabled() -> bool:
    return os.environ.get(DISABLE_AUTOLOAD_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _group_name(group: str) -> str:
    if group in GROUPS:
        return GROUPS[group]
    if group in GROUPS.values():
        return group
    raise PluginError(f"unknown plugin group {group!r}; known groups: {', '.join(GROUPS)}")


def list_group(group: str) -> GroupListing:
    """All entry points of ``group`` (short or full name), deduplicated, with conflicts."""
    full = _group_name(group)
    listing = GroupListing()
    seen: set[tuple[str, str, str]] = set()
    for ep in metadata.entry_points(group=full):
        dist = ep.dist
        dist_name = dist.metadata["Name"] if dist is not None else "<unknown>"
        version = dist.version if dist is not None else "?"
        if _autoload_disabled() and _normalise(dist_name) != _normalise(CORE_DISTRIBUTION):
            continue
        key = (ep.name, ep.value, _normalise(dist_name))
        if key in seen:  # the same distribution found twice on sys.path (editable installs)
            continue
        seen.add(key)
        info = PluginInfo(full, ep.name, ep.value, dist_name, version)
        if ep.name in listing.conflicts:
            listing.conflicts[ep.name].append(info)
        elif ep.name in listing.plugins:
            other = listing.plugins.pop(ep.name)
            listing.conflicts[ep.name] = [other, info]
        else:
            listing.plugins[ep.name] = info
    return listing


def _normalise(dist_name: str) -> str:
    return dist_name.lower().replace("_", "-")


def available(group: str) -> list[str]:
    """Sorted short names registered in ``group``."""
    listing = list_group(group)
    return sorted([*listing.plugins, *listing.conflicts])


def plugin_info(group: str, name: str) -> PluginInfo:
    """Registration record of ``name`` in ``group``; raises with close matches if unknown."""
    listing = list_group(group)
    if name in listing.conflicts:
        claims = ", ".join(f"{p.distribution} {p.version} ({p.value})" for p in listing.conflicts[name])
        raise PluginError(
            f"plugin name {name!r} in group {_group_name(group)!r} is registered by several "
            f"distributions: {claims}; uninstall one of them or use a dotted path"
        )
    if name not in listing.plugins:
        known = sorted([*listing.plugins, *listing.conflicts])
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise PluginError(
            f"unknown plugin {name!r} in group {_group_name(group)!r}; known: "
            f"{', '.join(known) or '(none)'}{hint}"
        )
    return listing.plugins[name]


def resolve(group: str, name: str) -> Any:
    """The plugin object for a short name (``nep``) or a dotted path (``pkg.mod:Cls`` / ``pkg.mod.Cls``)."""
    if not isinstance(name, str) or not name:
        raise PluginError(f"plugin name must be a non-empty string, got {name!r}")
    if ":" in name or ("." in name and name not in available(group)):
        source = _REGISTERED_ONLY.get()
        if source is not None:
            raise PluginError(
                f"{source}: plugin {name!r} is a dotted path, which would import and call arbitrary code; a model "
                f"file may only name registered plugins (mlip-plugins list). Load it with trusted=True (or "
                f"MLIP_PLUGINS_TRUST_MODEL_FILES=1) only if you trust where it comes from"
            )
        return _import_dotted(name)
    return plugin_info(group, name).load()


def _import_dotted(path: str) -> Any:
    if ":" in path:
        module_name, attr = path.split(":", 1)
    else:
        module_name, _, attr = path.rpartition(".")
    try:
        obj = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise PluginError(f"cannot import plugin from dotted path {path!r}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - the plugin's module raised or has a syntax error
        raise PluginError(f"cannot import plugin from dotted path {path!r}: the module raised "
                          f"{type(exc).__name__}: {exc} (debug=true shows the traceback)") from exc
    return obj


def provenance_of(group: str, obj_or_cls: Any) -> dict[str, str] | None:
    """The registration (name, distribution, version) of a plugin class, if it is registered."""
    cls = obj_or_cls if isinstance(obj_or_cls, type) else type(obj_or_cls)
    target = f"{cls.__module__}:{cls.__qualname__}"
    for info in list_group(group).plugins.values():
        if info.value == target:
            return {"group": info.group, "name": info.name, "distribution": info.distribution, "version": info.version}
    return None
