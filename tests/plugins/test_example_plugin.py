"""The example third-party package, pip-installed: seen by the registry and ``mlip-plugins``, its
YAML joins the config groups, and ``mlip-train`` trains with it chosen on the command line.

The package is installed (without dependencies) into a temporary target directory, never into
the running environment: only the subprocesses of these tests get that directory on their
``PYTHONPATH``, so the user's venv (where CONTRIBUTING's sample may register the same names) is
unchanged; a test checks that.
"""

from __future__ import annotations

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

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "mlip-plugin-example"
DISTRIBUTION = "mlip-plugin-example"
VERSION = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]["version"]


def _distributions() -> set[tuple[str, str]]:
    return {(d.metadata["Name"], d.version) for d in metadata.distributions()}


@pytest.fixture(scope="module")
def example_site(tmp_path_factory) -> dict:
    """examples/mlip-plugin-example installed into a temporary directory (``pip install --target``).

    Returns the directory and the distributions of the running environment before and after.
    """
    before = _distributions()
    target = tmp_path_factory.mktemp("example_site")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(target),
         "-c", str(ROOT / "constraints.txt"), str(EXAMPLE)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    shutil.rmtree(EXAMPLE / "build", ignore_errors=True)
    return {"target": target, "before": before, "after": _distributions()}


def with_example(example_site: dict, args: list[str], cwd=None, timeout: int = 400) -> subprocess.CompletedProcess:
    """Run ``args`` with the example package importable (its directory first on PYTHONPATH), by
    default in the example's target folder: never in the repository, whose source tree would
    shadow the installed package (``python -c``/``-m`` put the working directory on sys.path, and
    the source's ``mlip_plugins`` has no ``conf`` subpackage: that lives in the top-level ``conf/``)."""
    path = os.pathsep.join(p for p in (str(example_site["target"]), os.environ.get("PYTHONPATH", "")) if p)
    return subprocess.run(args, cwd=cwd or example_site["target"], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": path})


def test_the_active_environment_is_unchanged(example_site):
    assert example_site["before"] == example_site["after"]
    assert (DISTRIBUTION, VERSION) not in example_site["after"] - example_site["before"]
    assert any(example_site["target"].glob("mlip_plugin_example*.dist-info"))


def test_registry_and_mlip_plugins_see_the_installed_package(example_site):
    listed = with_example(example_site, [sys.executable, "-m", "mlip_plugins.cli.plugins", "list", "--json"])
    assert listed.returncode == 0, listed.stderr[-2000:]
    rows = {(r["group"], r["name"]): r for r in json.loads(listed.stdout)}
    gaussian = rows[("descriptors", "gaussian")]
    assert (gaussian["distribution"], gaussian["version"]) == (DISTRIBUTION, VERSION)
    assert gaussian["config"] == ["model/descriptor/gaussian.yaml"]
    assert rows[("callbacks", "epoch_timer")]["config"] == ["callbacks/epoch_timer.yaml"]
    assert rows[("configs", "mlip_plugin_example")]["distribution"] == DISTRIBUTION

    checked = with_example(example_site, [sys.executable, "-m", "mlip_plugins.cli.plugins", "check", "--group", "descriptors",
                                          "--group", "callbacks", "--group", "configs"])
    for name in ("descriptors/gaussian", "callbacks/epoch_timer", "configs/mlip_plugin_example"):
        assert f"ok   {name} [{DISTRIBUTION} {VERSION}]" in checked.stdout, checked.stdout


def test_plugin_configs_join_the_config_groups(example_site):
    script = (
        "from hydra import compose, initialize_config_module\n"
        "with initialize_config_module(version_base=None, config_module='mlip_plugins.conf'):\n"
        "    cfg = compose('train', overrides=['model=composable', 'model/descriptor=gaussian', 'callbacks=[default,epoch_timer]'])\n"
        "print(cfg.model.energy.descriptor.name, cfg.callbacks.epoch_timer.name, 'checkpoint' in cfg.callbacks)\n"
    )
    done = with_example(example_site, [sys.executable, "-c", script])
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["gaussian", "epoch_timer", "True"]


def test_mlip_train_with_the_plugin_chosen_on_the_command_line(example_site, tmp_path, tiny_xyz, monkeypatch):
    run_dir = tmp_path / "run"
    command = [
        sys.executable, "-m", "lightning_modules.train", "model=composable", "model/descriptor=gaussian", "model.energy.descriptor.num_gaussians=4", "trainer.max_epochs=1",
        "callbacks=[default,epoch_timer]", f"data.path={tiny_xyz}", f"hydra.run.dir={run_dir}", "model.cutoff=4.0",
        "model.energy.readout.hidden=[8]", "data.batch_size=4", "trainer.enable_progress_bar=false", "scheduler.warmup_steps=2",
    ]
    done = with_example(example_site, command, cwd=tmp_path)
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
            "version": VERSION, "target": "mlip_plugin_example.gaussian:GaussianDescriptor"} in plugins
    loaded = with_example(example_site, [sys.executable, "-c", "import sys; from mlip_plugins.checkpoint import load_potential; "
                                         "print(type(load_potential(sys.argv[1]).energy_model.descriptor).__name__)", str(checkpoint)])
    assert loaded.stdout.strip() == "GaussianDescriptor", loaded.stderr[-2000:]
    # in this process the package is not importable (and autoload is off, should a copy be installed anyway)
    monkeypatch.setenv(registry.DISABLE_AUTOLOAD_ENV, "1")
    with pytest.raises(MissingPluginError, match=f"pip install '{DISTRIBUTION}=={VERSION}'"):
        load_potential(checkpoint)


@pytest.mark.slow
def test_the_example_package_own_tests_pass(example_site):
    done = with_example(example_site, [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests")],
                        cwd=EXAMPLE, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:]
