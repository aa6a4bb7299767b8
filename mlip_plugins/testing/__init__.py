"""Conformance kit: reusable checks that a plugin meets the contract of its extension point.

A plugin author runs the whole kit in one line::

    from mlip_plugins.testing import check_descriptor

    def test_my_descriptor_conforms():
        check_descriptor(MyDescriptor)                     # or check_plugin("descriptors", MyDescriptor)

or gets one pytest test per check (clearer failures, ``-k forces`` to select)::

    import pytest
    from mlip_plugins.testing import conformance_params, run_conformance

    @pytest.mark.parametrize(("group", "plugin", "check"), conformance_params(plugins={"descriptors": [MyDescriptor]}))
    def test_conformance(group, plugin, check):
        run_conformance(group, plugin, check)

``conformance_params()`` with no arguments covers every plugin registered in every group,
which is how this project checks each new plugin for free.

Checks (see :mod:`mlip_plugins.testing.checks`): ``contract`` (constructor, attributes,
shapes, dtypes), ``float64``, ``float32``, ``forces`` (finite differences), ``stress``
(finite strain), ``rotation``, ``translation``, ``permutation``, ``batch`` (independence),
``cutoff`` (continuity of energy and forces at every cutoff radius), ``state_dict`` (round
trip through ``torch.load(weights_only=True)``), ``pure`` (no state changed by a forward pass)
and ``compile`` (``torch.compile`` matches eager; only for plugins with
``supports_compile = True``). The class attributes a plugin uses to set its test config or
skip a check that does not apply are listed in :mod:`mlip_plugins.testing.harness`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from mlip_plugins import registry
from mlip_plugins.testing.checks import CHECKS, GROUP_CHECKS, CheckSkipped, checks_for, run_check
from mlip_plugins.testing.harness import PluginCase, plugin_case

#: groups whose plugins the kit checks (``configs`` holds YAML, not code)
CHECKED_GROUPS = tuple(g for g in GROUP_CHECKS if g in registry.GROUPS)

__all__ = [
    "CHECKS",
    "CHECKED_GROUPS",
    "CheckSkipped",
    "PluginCase",
    "check_callback",
    "check_descriptor",
    "check_energy_model",
    "check_plugin",
    "check_readout",
    "check_router",
    "conformance_params",
    "plugin_case",
    "run_conformance",
]


def check_plugin(
    group: str,
    plugin: Any,
    config: Mapping[str, Any] | None = None,
    skip: Mapping[str, str] | Sequence[str] | None = None,
    checks: Iterable[str] | None = None,
) -> dict[str, str]:
    """Run every applicable check on ``plugin`` (a class, a registered name or a dotted path).

    Raises ``AssertionError`` on the first failing check, naming the plugin and the check.
    Returns ``{check: "passed" | "skipped: <reason>"}``.
    """
    case = plugin_case(group, plugin, config=config, skip=skip)
    report = {}
    for name in checks or checks_for(case):
        try:
            run_check(case, name)
        except CheckSkipped as why:
            report[name] = f"skipped: {why}"
        else:
            report[name] = "passed"
    return report


def check_descriptor(cls: Any, config: Mapping[str, Any] | None = None, **kwargs: Any) -> dict[str, str]:
    """All checks for a descriptor class (see :func:`check_plugin`)."""
    return check_plugin("descriptors", cls, config, **kwargs)


def check_readout(cls: Any, config: Mapping[str, Any] | None = None, **kwargs: Any) -> dict[str, str]:
    """All checks for a readout class (see :func:`check_plugin`)."""
    return check_plugin("readouts", cls, config, **kwargs)


def check_router(cls: Any, config: Mapping[str, Any] | None = None, **kwargs: Any) -> dict[str, str]:
    """All checks for a router class (see :func:`check_plugin`)."""
    return check_plugin("routers", cls, config, **kwargs)


def check_energy_model(cls: Any, config: Mapping[str, Any] | None = None, **kwargs: Any) -> dict[str, str]:
    """All checks for an energy-model node class (see :func:`check_plugin`)."""
    return check_plugin("energy_models", cls, config, **kwargs)


def check_callback(cls: Any, config: Mapping[str, Any] | None = None, **kwargs: Any) -> dict[str, str]:
    """The contract check for a Lightning callback plugin (see :func:`check_plugin`)."""
    return check_plugin("callbacks", cls, config, **kwargs)


_CASES: dict[tuple, PluginCase] = {}


def _cached_case(group: str, plugin: Any, **overrides: Any) -> PluginCase:
    """One PluginCase per (group, plugin, overrides), so its test model is built once."""
    key = (group, plugin, repr(sorted(overrides.items())))
    if key not in _CASES:
        _CASES[key] = plugin_case(group, plugin, **overrides)
    return _CASES[key]


def conformance_params(
    groups: Iterable[str] | None = None,
    plugins: Mapping[str, Iterable[Any]] | None = None,
) -> list:
    """``pytest.param(group, plugin, check)`` for every check of every plugin.

    ``plugins`` maps a group to classes or names to check; without it, every plugin registered
    in ``groups`` (default: all checked groups) is covered, so plugins installed later are
    checked with no change to the test. A plugin that cannot even be imported still yields a
    ``contract`` case, which then fails with the import error.
    """
    import pytest

    params = []
    if plugins is None:
        plugins = {group: registry.available(group) for group in (groups or CHECKED_GROUPS)}
    for group, members in plugins.items():
        for plugin in members:
            label = plugin if isinstance(plugin, str) else getattr(plugin, "__qualname__", str(plugin))
            try:
                case = _cached_case(group, plugin)
                names, slow = checks_for(case), bool(getattr(case.cls, "conformance_slow", False))
            except Exception:  # noqa: BLE001 - reported by the contract case
                names, slow = ["contract"], False
            marks = [pytest.mark.slow] if slow else []
            params += [pytest.param(group, plugin, check, id=f"{group}/{label}/{check}", marks=marks) for check in names]
    return params


def run_conformance(group: str, plugin: Any, check: str, **overrides: Any) -> None:
    """Run one check in a pytest test: ``AssertionError`` on failure, ``pytest.skip`` if not applicable.

    ``overrides`` (``config``, ``skip``, ``elements``, ``rtol``) go to :func:`plugin_case`.
    """
    import pytest

    case = _cached_case(group, plugin, **overrides)
    try:
        run_check(case, check)
    except CheckSkipped as why:
        pytest.skip(str(why))
