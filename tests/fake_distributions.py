"""Fake installed distributions for plugin tests: a ``*.dist-info`` folder plus modules on ``sys.path``.

``importlib.metadata`` finds a distribution from its METADATA and entry_points.txt alone, so a
test can "install" a plugin package in milliseconds, without pip.
"""

from __future__ import annotations

import importlib
import sys
import textwrap
from pathlib import Path

import pytest

from mlip_plugins import registry

DESCRIPTOR_SOURCE = '''
"""A tiny descriptor from a fake third-party package."""
import torch
from torch import nn


class {cls}(nn.Module):
    def __init__(self, num_species, cutoff=4.0, dim=3):
        super().__init__()
        self.cutoff, self.dim = float(cutoff), int(dim)
        self.scale = nn.Parameter(torch.ones(self.dim))

    def forward(self, graph):
        r = graph.edge_len.unsqueeze(-1)
        fc = 0.5 * (torch.cos(torch.pi * r / self.cutoff) + 1.0)
        edge = torch.exp(-r * self.scale) * fc
        return edge.new_zeros(graph.num_atoms, self.dim).index_add(0, graph.edge_index[1], edge)
'''


class FakeSite:
    """Writes fake distributions into one folder on sys.path."""

    def __init__(self, root: Path):
        self.root = root
        self.modules: list[str] = []

    def distribution(self, name: str, version: str, entry_points: dict[str, dict[str, str]], files: dict[str, str] | None = None, root: Path | None = None) -> Path:
        root = root or self.root
        info = root / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        lines = []
        for group, members in entry_points.items():
            lines.append(f"[{registry.GROUPS.get(group, group)}]")
            lines += [f"{key} = {value}" for key, value in members.items()]
        (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
        tops = set()
        for relative, source in (files or {}).items():
            path = root / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(source))
            tops.add(Path(relative).parts[0].removesuffix(".py"))
        (info / "top_level.txt").write_text("\n".join(sorted(tops)) + "\n")
        self.modules += sorted(tops)
        importlib.invalidate_caches()
        return info


@pytest.fixture
def fake_site(tmp_path, monkeypatch):
    """A FakeSite in a temporary folder on sys.path; its modules are forgotten afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(registry.DISABLE_AUTOLOAD_ENV, raising=False)
    fake = FakeSite(tmp_path)
    yield fake
    for name in list(sys.modules):
        if name.split(".")[0] in fake.modules:
            del sys.modules[name]
    importlib.invalidate_caches()
