"""The ``SearchPathPlugin`` that appends plugin config packages to the mlip-train search path.

It only acts on search paths whose primary config is the core tree (``pkg://mlip_plugins.conf``
or the folder that package lives in), so installing mlip-plugins does not change the config
groups of unrelated Hydra applications in the same environment. Discovery errors are reported
as warnings: a broken plugin distribution must never stop Hydra from composing a config.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import warnings
from collections.abc import Iterable

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

CORE_CONFIG_MODULE = "mlip_plugins.conf"
PROVIDER_PREFIX = "mlip-plugins"


def _core_config_dirs() -> list[str]:
    """Real paths of the folders that make up ``mlip_plugins.conf`` (editable or installed)."""
    try:
        spec = importlib.util.find_spec(CORE_CONFIG_MODULE)
    except (ImportError, ValueError):
        return []
    if spec is None or not spec.submodule_search_locations:
        return []
    return [os.path.realpath(p) for p in spec.submodule_search_locations]


def _strip_scheme(path: str) -> str:
    return path[len("file://"):] if path.startswith("file://") else path


def is_core_search_path(paths: Iterable[str]) -> bool:
    """Whether one of ``paths`` (Hydra search-path strings) is the core config tree."""
    core_dirs = None
    for path in paths:
        if path is None:
            continue
        if path.startswith("pkg://"):
            if path[len("pkg://"):].strip("/").replace("/", ".") == CORE_CONFIG_MODULE:
                return True
            continue
        if path.startswith("structured://"):
            continue
        core_dirs = _core_config_dirs() if core_dirs is None else core_dirs
        if os.path.realpath(_strip_scheme(path)) in core_dirs:
            return True
    return False


def plugin_config_sources() -> list[tuple[str, str]]:
    """(provider, ``pkg://module``) for every ``mlip_plugins.configs`` entry point, in a stable order."""
    from mlip_plugins import registry

    listing = registry.list_group("configs")
    infos = list(listing.plugins.values()) + [info for claims in listing.conflicts.values() for info in claims]
    sources = []
    for info in sorted(infos, key=lambda i: (registry._normalise(i.distribution), i.name)):
        module = info.value.partition(":")[0].strip()
        if module == CORE_CONFIG_MODULE:
            continue
        sources.append((f"{PROVIDER_PREFIX}:{info.distribution}", f"pkg://{module}"))
    return sources


#: config packages already reported as unusable (one warning per package and process)
_REPORTED: set[str] = set()


def config_package_usable(provider: str, path: str) -> bool:
    """Whether the ``pkg://`` config package of an entry point imports. A broken one (missing,
    raising at import) is reported once as a warning and left out: Hydra would otherwise fail
    every run, even runs that use none of its configs."""
    module = path[len("pkg://"):]
    try:
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise ImportError(f"{module} is not an importable package")
        importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - any failure of a plugin package must not stop composition
        if path not in _REPORTED:
            _REPORTED.add(path)
            warnings.warn(f"mlip-plugins: ignoring the config package {module!r} of {provider.removeprefix(PROVIDER_PREFIX + ':')} "
                          f"(entry point group mlip_plugins.configs): {type(exc).__name__}: {exc}", stacklevel=2)
        return False
    return True


class MlipPluginsSearchPathPlugin(SearchPathPlugin):
    """Append the config package of every installed mlip-plugins plugin (after the core tree)."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        if not is_core_search_path(element.path for element in search_path.get_path()):
            return
        try:
            sources = plugin_config_sources()
        except Exception as exc:  # noqa: BLE001 - never break config composition
            warnings.warn(f"mlip-plugins: could not list plugin configs: {exc}", stacklevel=2)
            return
        present = {element.path for element in search_path.get_path()}
        for provider, path in sources:
            if path not in present and config_package_usable(provider, path):
                search_path.append(provider=provider, path=path)
                present.add(path)
