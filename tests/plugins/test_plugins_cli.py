"""``mlip-plugins``: the listing (groups, distributions, versions, configs) and ``check`` (every failure reported)."""

from __future__ import annotations

import json
import subprocess
import sys

from fake_distributions import DESCRIPTOR_SOURCE, fake_site  # noqa: F401 - fake_site is a fixture

from mlip_plugins import registry
from mlip_plugins.cli import plugins as cli


def _run(capsys, *argv) -> tuple[int, str]:
    code = cli.main(list(argv))
    return code, capsys.readouterr().out


def test_listing_shows_every_group_with_distribution_version_and_config(capsys):
    code, out = _run(capsys)
    assert code == 0
    for group, entry_group in registry.GROUPS.items():
        assert f"{group} ({entry_group}):" in out
    code, out = _run(capsys, "list", "--json", "--group", "descriptors")
    rows = {row["name"]: row for row in json.loads(out)}
    radial = rows["radial"]
    assert radial["distribution"] == "mlip-plugins" and radial["version"] == registry.plugin_info("descriptors", "radial").version
    assert radial["target"] == "mlip_plugins.descriptors.radial:RadialDescriptor"
    assert "model/descriptor/radial.yaml" in radial["config"]


def test_check_reports_each_failure_and_keeps_going(capsys, fake_site):
    fake_site.distribution(
        "fake-mixed", "0.2",
        {"descriptors": {"good_one": "fake_mixed.ok:Desc", "bad_import": "fake_mixed.bad:Desc"},
         "readouts": {"radial_clash": "fake_mixed.ok:Desc"},
         "configs": {"fake_mixed": "fake_mixed.conf"}},
        {"fake_mixed/__init__.py": "", "fake_mixed/ok.py": DESCRIPTOR_SOURCE.format(cls="Desc"),
         "fake_mixed/bad.py": "import not_installed_anywhere\n",
         "fake_mixed/conf/__init__.py": "",
         "fake_mixed/conf/model/descriptor/good_one.yaml": "# @package model.energy.descriptor\nname: good_one\n",
         "fake_mixed/conf/model/descriptor/broken.yaml": "name: [unclosed\n",
         "fake_mixed/conf/model/descriptor/radial.yaml": "name: radial\n"},
    )
    fake_site.distribution("fake-rival", "3.1", {"readouts": {"radial_clash": "fake_rival:Readout"}},
                           {"fake_rival.py": "class Readout:\n    pass\n"})
    code, out = _run(capsys, "check")
    assert code == 1
    lines = out.splitlines()

    def line(prefix: str) -> str:
        return next(x for x in lines if x.startswith(prefix))

    assert "not_installed_anywhere" in line("FAIL descriptors/bad_import [fake-mixed 0.2]")
    assert line("ok   descriptors/good_one [fake-mixed 0.2]")
    assert line("ok   descriptors/radial [mlip-plugins")
    assert "also registered by fake-rival 3.1" in line("FAIL readouts/radial_clash [fake-mixed 0.2]")
    config = line("FAIL configs/fake_mixed [fake-mixed 0.2]")
    assert "model/descriptor/broken.yaml" in config and "model/descriptor/radial.yaml is shadowed" in config
    assert lines[-1].endswith(f"{sum(x.startswith('FAIL') for x in lines)} failed")

    # the listing never imports plugin code, so the broken plugin is listed like the others
    code, out = _run(capsys, "list", "--json")
    rows = {(r["group"], r["name"], r["distribution"]): r for r in json.loads(out)}
    assert code == 0 and ("descriptors", "bad_import", "fake-mixed") in rows
    assert rows[("descriptors", "good_one", "fake-mixed")]["config"] == ["model/descriptor/good_one.yaml"]
    assert rows[("readouts", "radial_clash", "fake-rival")]["conflict"] is True
    assert "model/descriptor/broken.yaml" in rows[("configs", "fake_mixed", "fake-mixed")]["config"]


def test_check_passes_on_the_core_and_the_console_script_runs(monkeypatch, capsys):
    monkeypatch.setenv(registry.DISABLE_AUTOLOAD_ENV, "1")
    code, out = _run(capsys, "check", "--group", "descriptors", "--group", "readouts")
    assert code == 0, out
    assert "ok   descriptors/radial [mlip-plugins" in out
    done = subprocess.run([sys.executable, "-m", "mlip_plugins.cli.plugins", "--group", "descriptors"],
                          capture_output=True, text=True, timeout=120, env={**dict(__import__("os").environ)})
    assert done.returncode == 0 and "radial" in done.stdout and registry.DISABLE_AUTOLOAD_ENV in done.stdout
