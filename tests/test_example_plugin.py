"""The example third-party package, pip-installed: seen by the registry and ``mlip-plugins``, its
YAML joins the config groups, and ``mlip-train`` trains with it chosen on the command line.

The package is installed once, without dependencies, into the running environment (skipped
when the installed copy already matches the source, so the test is idempotent and fast).
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
import torch

from mlip_plugins import registry

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "mlip-plugin-example"
DISTRIBUTION = "mlip-plugin-example"


def _installed_copy_is_current() -> bool:
    """The installed distribution has the example's version, entry points and file contents."""
    try:
        dist = metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return False
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    declared = {(group, name, value) for group, members in project["entry-points"].items() for name, value in members.items()}
    if dist.version != project["version"] or {(e.group, e.name, e.value) for e in dist.entry_points} != declared:
        return False
    for source in sorted((EXAMPLE / "mlip_plugin_example").rglob("*")):
        if source.suffix in (".py", ".yaml"):
            installed = Path(dist.locate_file(source.relative_to(EXAMPLE).as_posix()))
            if not installed.is_file() or installed.read_bytes() != source.read_bytes():
                return False
    return True


@pytest.fixture(scope="module")
def example_installed() -> str:
    """Install examples/mlip-plugin-example (a copy, --no-deps) unless that copy is current; its version.

    A copy rather than an editable install: the environment may outlive this checkout (CI runs
    in a fresh clone), and a copy never points at a folder that is gone.
    """
    if not _installed_copy_is_current():
        done = subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
             "-c", str(ROOT / "constraints.txt"), str(EXAMPLE)],
            capture_output=True, text=True, timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        importlib.invalidate_caches()
        shutil.rmtree(EXAMPLE / "build", ignore_errors=True)
    assert _installed_copy_is_current()
    return metadata.version(DISTRIBUTION)


def test_registry_and_mlip_plugins_see_the_installed_package(example_installed, capsys):
    from mlip_plugins.cli import plugins as cli

    gaussian = registry.plugin_info("descriptors", "gaussian")
    assert (gaussian.distribution, gaussian.version) == (DISTRIBUTION, example_installed)
    assert registry.resolve("callbacks", "epoch_timer").__name__ == "EpochTimer"

    assert cli.main(["list", "--json"]) == 0
    rows = {(r["group"], r["name"]): r for r in json.loads(capsys.readouterr().out)}
    assert rows[("descriptors", "gaussian")]["config"] == ["model/descriptor/gaussian.yaml"]
    assert rows[("callbacks", "epoch_timer")]["config"] == ["callbacks/epoch_timer.yaml"]
    assert rows[("configs", "mlip_plugin_example")]["distribution"] == DISTRIBUTION

    cli.main(["check", "--group", "descriptors", "--group", "callbacks", "--group", "configs"])
    out = capsys.readouterr().out
    for name in ("descriptors/gaussian", "callbacks/epoch_timer", "configs/mlip_plugin_example"):
        assert f"ok   {name} [{DISTRIBUTION} {example_installed}]" in out


def test_plugin_configs_join_the_config_groups(example_installed):
    from hydra import compose, initialize_config_module

    with initialize_config_module(version_base=None, config_module="mlip_plugins.conf"):
        cfg = compose("train", overrides=["model=default", "model/descriptor=gaussian", "callbacks=[default,epoch_timer]"])
    assert cfg.model.energy.descriptor.name == "gaussian"
    assert cfg.callbacks.epoch_timer.name == "epoch_timer" and "checkpoint" in cfg.callbacks


def test_mlip_train_with_the_plugin_chosen_on_the_command_line(example_installed, tmp_path, tiny_xyz, monkeypatch):
    run_dir = tmp_path / "run"
    mlip_train = Path(sys.executable).with_name("mlip-train")
    command = [
        str(mlip_train), "model=default", "model/descriptor=gaussian", "model.energy.descriptor.num_gaussians=4", "trainer.max_epochs=1",
        "callbacks=[default,epoch_timer]", f"data.path={tiny_xyz}", f"hydra.run.dir={run_dir}", "model.cutoff=4.0",
        "model.energy.readout.hidden=[8]", "data.batch_size=4", "trainer.enable_progress_bar=false", "scheduler.warmup_steps=2",
    ]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Final validation errors" in done.stdout
    timings = json.loads((run_dir / "epoch_times.json").read_text())
    assert len(timings["epoch_seconds"]) == 1 and timings["epoch_seconds"][0] > 0

    # the checkpoint records the plugin it needs, and says what to install when it is missing
    from mlip_plugins.checkpoint import load_potential
    from mlip_plugins.provenance import MissingPluginError

    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    plugins = torch.load(checkpoint, weights_only=True)["mlip_plugins"]["plugins"]
    assert {"group": "mlip_plugins.descriptors", "name": "gaussian", "distribution": DISTRIBUTION,
            "version": example_installed, "target": "mlip_plugin_example.gaussian:GaussianDescriptor"} in plugins
    assert type(load_potential(checkpoint).energy_model.descriptor).__name__ == "GaussianDescriptor"
    monkeypatch.setenv(registry.DISABLE_AUTOLOAD_ENV, "1")  # as if the package were not installed
    with pytest.raises(MissingPluginError, match=f"pip install '{DISTRIBUTION}=={example_installed}'"):
        load_potential(checkpoint)


@pytest.mark.slow
def test_the_example_package_own_tests_pass(example_installed):
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests")],
                          cwd=EXAMPLE, capture_output=True, text=True, timeout=600, env={**os.environ})
    assert done.returncode == 0, done.stdout[-3000:]
