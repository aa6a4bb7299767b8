"""The layering that docs/architecture.md describes, checked on the code itself."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from mlip_plugins import contracts, registry

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mlip_plugins"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _module_level_imports(path: Path, modules: set[str]) -> set[str]:
    """Modules of the library that ``path`` imports at module level (``from pkg import sub``
    counts as an import of the submodule ``pkg.sub``, not of the package)."""
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                names.add(sub if sub in modules else node.module)
    return names & modules


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py") if "conf" not in p.parts}
    return {name: _module_level_imports(path, set(modules)) - {name} for name, path in modules.items()}


def test_no_import_cycle_between_modules_of_the_library():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_the_library_never_imports_the_trainer():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            offenders += [f"{path.relative_to(ROOT)} imports {m}" for m in modules if m.split(".")[0] == "lightning_modules"]
    assert not offenders, offenders


PROTOCOLS = {
    "descriptors": (contracts.Descriptor, {"num_species": 2, "cutoff": 4.0}),
    "long_range": (contracts.LongRangeSolver, {"cutoff": 4.0}),
    "routers": (contracts.Router, {"num_experts": 3, "num_species": 2, "in_dim": 4, "top_k": 2}),
}


@pytest.mark.parametrize("group", sorted(PROTOCOLS))
def test_built_in_plugins_satisfy_their_protocol(group):
    protocol, injected = PROTOCOLS[group]
    from mlip_plugins.models.builder import build

    built_in = [name for name, info in registry.list_group(group).plugins.items() if info.distribution == registry.CORE_DISTRIBUTION]
    assert built_in
    for name in built_in:
        plugin = build(group, {"name": name}, f"test.{group}.{name}", **injected)
        assert isinstance(plugin, protocol), f"{group}/{name} lacks an attribute of {protocol.__name__}"
