"""``mlip-plugins``: list the installed plugins per group, or import them all and report failures.

    mlip-plugins                 # every group: name, distribution, version, target, config files
    mlip-plugins list --json     # the same as JSON (for scripts)
    mlip-plugins check           # import every plugin and parse every plugin config; exit 1 on any failure

Listing never imports plugin code (entry points are read from package metadata), so it works
in a broken environment; ``check`` imports each plugin in turn and reports each failure with
the plugin's name and distribution, without stopping at the first. The config files shown for
a plugin are the YAML files named after it in its distribution's config packages (entry-point
group ``mlip_plugins.configs``; the core's own tree is ``mlip_plugins.conf``).
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field

from mlip_plugins import registry
from mlip_plugins.cli._errors import cli_main

CORE_CONFIG_MODULE = "mlip_plugins.conf"
CONFIG_GROUP = "configs"


@dataclass
class PluginRow:
    """One line of the listing."""

    group: str
    name: str
    distribution: str
    version: str
    target: str
    config: list[str] = field(default_factory=list)
    conflict: bool = False


@dataclass
class CheckResult:
    """The outcome of importing one plugin (or parsing one config package)."""

    group: str
    name: str
    distribution: str
    version: str
    ok: bool
    message: str = ""


def config_files(module: str) -> list[str]:
    """Relative paths of the YAML files in the config package ``module`` (imports the package)."""
    root = importlib.resources.files(module)

    def walk(node, prefix: str) -> Iterator[str]:
        for child in node.iterdir():
            if child.is_dir():
                if not child.name.startswith(("_", ".")):
                    yield from walk(child, f"{prefix}{child.name}/")
            elif child.name.endswith((".yaml", ".yml")):
                yield f"{prefix}{child.name}"

    return sorted(set(walk(root, "")))


def _config_module(info: registry.PluginInfo) -> str:
    return info.value.partition(":")[0].strip()


def _all_infos(listing: registry.GroupListing) -> list[tuple[registry.PluginInfo, bool]]:
    rows = [(info, False) for info in listing.plugins.values()]
    rows += [(info, True) for claims in listing.conflicts.values() for info in claims]
    return sorted(rows, key=lambda pair: (pair[0].name, pair[0].distribution))


def config_packages() -> dict[str, list[tuple[str, list[str]]]]:
    """normalised distribution -> [(config module, its YAML files)], the core tree included."""
    packages: dict[str, list[tuple[str, list[str]]]] = {}
    modules = [(registry.CORE_DISTRIBUTION, CORE_CONFIG_MODULE)]
    modules += [(info.distribution, _config_module(info)) for info, _ in _all_infos(registry.list_group(CONFIG_GROUP))]
    for distribution, module in modules:
        try:
            files = config_files(module)
        except Exception:  # noqa: BLE001 - a broken config package is reported by `check`, not here
            files = []
        packages.setdefault(registry._normalise(distribution), []).append((module, files))
    return packages


#: where a group's configs live in the tree (files there are preferred over same-named presets)
GROUP_CONFIG_DIRS = {"descriptors": "model/descriptor/", "readouts": "model/readout/", "callbacks": "callbacks/"}


def _configs_named(name: str, group: str, packages: list[tuple[str, list[str]]]) -> list[str]:
    stem = name.lower()
    named = [path for _, files in packages for path in files if path.rsplit("/", 1)[-1].rsplit(".", 1)[0].lower() == stem]
    folder = GROUP_CONFIG_DIRS.get(group)
    in_folder = [path for path in named if folder and path.startswith(folder)]
    return in_folder or named


def list_plugins(groups: Sequence[str] | None = None) -> list[PluginRow]:
    """Every registered plugin of ``groups`` (default: all), without importing plugin code."""
    groups = list(groups or registry.GROUPS)
    packages = config_packages()
    rows = []
    for group in groups:
        for info, conflict in _all_infos(registry.list_group(group)):
            own = packages.get(registry._normalise(info.distribution), [])
            if group == CONFIG_GROUP:
                config = next((files for module, files in own if module == _config_module(info)), [])
            else:
                config = _configs_named(info.name, group, own)
            rows.append(PluginRow(group, info.name, info.distribution, info.version, info.value, config, conflict))
    return rows


def _check_config_package(info: registry.PluginInfo, seen: dict[str, str]) -> CheckResult:
    from omegaconf import OmegaConf

    module = _config_module(info)
    result = CheckResult(CONFIG_GROUP, info.name, info.distribution, info.version, ok=False)
    try:
        files = config_files(module)
    except Exception as exc:  # noqa: BLE001
        result.message = f"config package {module!r} cannot be imported: {type(exc).__name__}: {exc}"
        return result
    if not files:
        result.message = f"config package {module!r} holds no YAML files (are they shipped as package data?)"
        return result
    problems = []
    root = importlib.resources.files(module)
    for path in files:
        try:
            OmegaConf.create(root.joinpath(path).read_text())
        except Exception as exc:  # noqa: BLE001
            problems.append(f"{path}: {type(exc).__name__}: {exc}")
        if path in seen:
            problems.append(f"{path} is shadowed by the same file from {seen[path]} (rename it)")
        else:
            seen[path] = info.distribution
    result.ok = not problems
    result.message = "; ".join(problems) if problems else f"{len(files)} config file(s)"
    return result


def check_plugins(groups: Sequence[str] | None = None) -> list[CheckResult]:
    """Import every plugin of ``groups`` and parse every config package; never raises."""
    groups = list(groups or registry.GROUPS)
    results = []
    seen: dict[str, str] = {}
    if CONFIG_GROUP in groups:
        try:
            seen = {path: registry.CORE_DISTRIBUTION for path in config_files(CORE_CONFIG_MODULE)}
        except Exception:  # noqa: BLE001 - the core tree missing is not a plugin failure
            seen = {}
    for group in groups:
        listing = registry.list_group(group)
        for info, conflict in _all_infos(listing):
            if conflict:
                others = [f"{o.distribution} {o.version}" for o in listing.conflicts[info.name] if o is not info]
                results.append(CheckResult(
                    group, info.name, info.distribution, info.version, ok=False,
                    message=f"name {info.name!r} is also registered by {', '.join(others)}",
                ))
            elif group == CONFIG_GROUP:
                results.append(_check_config_package(info, seen))
            else:
                try:
                    obj = info.load()
                    ok, message = callable(obj), "" if callable(obj) else f"{info.value} is not callable"
                except registry.PluginError as exc:
                    ok, message = False, str(exc)
                results.append(CheckResult(group, info.name, info.distribution, info.version, ok, message))
    return results


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[k]) for row in rows) for k in range(len(rows[0]))]
    return "\n".join("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def format_listing(rows: list[PluginRow], groups: Sequence[str]) -> str:
    lines = []
    if registry._autoload_disabled():
        lines.append(f"({registry.DISABLE_AUTOLOAD_ENV} is set: only {registry.CORE_DISTRIBUTION}'s own plugins are listed)")
    for group in groups:
        members = [r for r in rows if r.group == group]
        lines.append(f"{group} ({registry.GROUPS[group]}): {len(members)}")
        if members:
            table = [["name", "distribution", "version", "target", "config"]]
            for r in members:
                name = f"{r.name} (CONFLICT)" if r.conflict else r.name
                table.append([name, r.distribution, r.version, r.target, ", ".join(r.config) or "-"])
            lines.append(_table(table))
    return "\n".join(lines)


def format_check(results: list[CheckResult]) -> str:
    lines = []
    for r in results:
        status = "ok  " if r.ok else "FAIL"
        detail = f" {' '.join(r.message.split())}" if r.message else ""  # one line per plugin
        lines.append(f"{status} {r.group}/{r.name} [{r.distribution} {r.version}]{detail}")
    failed = sum(not r.ok for r in results)
    lines.append(f"{len(results)} checked, {failed} failed")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlip-plugins",
        description="List the installed mlip-plugins plugins, or import them all and report failures.",
        epilog=f"Set {registry.DISABLE_AUTOLOAD_ENV}=1 to ignore every plugin outside {registry.CORE_DISTRIBUTION}.",
    )
    parser.add_argument("command", nargs="?", choices=["list", "check"], default="list")
    parser.add_argument("--group", "-g", action="append", choices=list(registry.GROUPS),
                        help="only this group (repeatable; default: all groups)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


@cli_main("mlip-plugins")
def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:  # `mlip-plugins | head`
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        return 0


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    groups = args.group or list(registry.GROUPS)
    if args.command == "check":
        results = check_plugins(groups)
        print(json.dumps([asdict(r) for r in results], indent=2) if args.json else format_check(results))
        return 1 if any(not r.ok for r in results) else 0
    rows = list_plugins(groups)
    print(json.dumps([asdict(r) for r in rows], indent=2) if args.json else format_listing(rows, groups))
    return 0


if __name__ == "__main__":
    sys.exit(main())
