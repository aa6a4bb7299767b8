"""The thread choice (issue 15, item 1): explicit > OMP_NUM_THREADS > SLURM_CPUS_PER_TASK > affinity mask,
shared among the local DDP processes. Only the logic is tested here; the speed-up is a benchmark
(benchmarks/threads_quickstart.py), never a timed test."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest
import torch

from mlip_plugins.models.builder import ConfigError
from mlip_plugins.threads import available_cpus, choose_threads, local_processes, set_threads


@pytest.mark.parametrize(("requested", "environ", "processes", "expected", "source"), [
    (3, {"OMP_NUM_THREADS": "8", "SLURM_CPUS_PER_TASK": "4"}, 2, 3, "threads=3"),
    (None, {"OMP_NUM_THREADS": "5", "SLURM_CPUS_PER_TASK": "4"}, 2, 5, "OMP_NUM_THREADS=5"),   # per process
    (None, {"SLURM_CPUS_PER_TASK": "6"}, 1, 6, "SLURM_CPUS_PER_TASK=6"),
    (None, {"SLURM_CPUS_PER_TASK": "6"}, 4, 1, "/ 4 local processes"),
    (None, {}, 1, 16, "16 CPUs in the affinity mask"),
    (None, {}, 2, 8, "16 CPUs in the affinity mask / 2 local processes"),
    (None, {}, 32, 1, "/ 32 local processes"),                                             # at least one each
    (None, {"OMP_NUM_THREADS": "", "SLURM_CPUS_PER_TASK": "junk"}, 1, 16, "affinity mask"),  # unusable values ignored
    (0, {"OMP_NUM_THREADS": "2"}, 1, 2, "OMP_NUM_THREADS=2"),                                # 0: automatic
])
def test_choice_order(requested, environ, processes, expected, source):
    choice = choose_threads(requested, processes, environ=environ, cpus=16, busy=0.0)
    assert choice.intra_op == choice.inter_op == expected
    assert source in choice.source and source in choice.describe()


@pytest.mark.parametrize(("cpus", "busy", "processes", "expected"), [
    (2, 2.1, 1, 1),     # a 2-thread job beside us on 2 cores: one thread, not two contending
    (16, 4.0, 1, 12),
    (16, 4.0, 2, 6),
    (16, 40.0, 1, 1),   # an overloaded node: still one
    (8, 0.3, 1, 8),     # idle (rounding): all cores
])
def test_busy_cores_are_left_alone(cpus, busy, processes, expected):
    choice = choose_threads(None, processes, environ={}, cpus=cpus, busy=busy)
    assert choice.intra_op == expected
    assert ("busy (load average)" in choice.source) == (expected * processes < cpus)


def test_slurm_and_omp_ignore_the_load():
    assert choose_threads(None, environ={"SLURM_CPUS_PER_TASK": "4"}, cpus=64, busy=63.0).intra_op == 4
    assert choose_threads(None, environ={"OMP_NUM_THREADS": "4"}, cpus=64, busy=63.0).intra_op == 4


def test_the_environment_is_read_by_default(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert choose_threads().intra_op == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "2")
    assert choose_threads(cpus=64).intra_op == 2
    monkeypatch.delenv("SLURM_CPUS_PER_TASK")
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3, 4}, raising=False)
    monkeypatch.setattr("os.getloadavg", lambda: (1.2, 0.0, 0.0))
    assert choose_threads().intra_op == 4
    assert available_cpus() == 5 and choose_threads(local_processes=2).intra_op == 2  # 4 free cores, 2 processes


def test_a_bad_setting_is_a_config_error():
    with pytest.raises(ConfigError, match="threads"):
        choose_threads("many", environ={})
    with pytest.raises(ConfigError, match="threads"):
        choose_threads(-2, environ={})


@pytest.mark.parametrize(("trainer", "environ", "expected"), [
    ({"devices": 1, "strategy": "auto"}, {}, 1),
    ({"devices": 2, "strategy": "ddp"}, {}, 2),
    ({"devices": [0, 1, 2], "strategy": "ddp"}, {}, 3),
    ({"devices": 4, "strategy": "auto"}, {}, 1),
    ({"devices": -1, "strategy": "ddp"}, {"LOCAL_WORLD_SIZE": "4"}, 4),   # torchrun says how many
])
def test_local_processes(monkeypatch, trainer, environ, expected):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    for key, value in environ.items():
        monkeypatch.setenv(key, value)
    assert local_processes(trainer) == expected


def test_set_threads_applies_and_logs(caplog):
    import logging

    before = torch.get_num_threads()
    try:
        with caplog.at_level(logging.INFO, logger="mlip_plugins.threads"):
            choice = set_threads(2)
        assert torch.get_num_threads() == 2 and choice.intra_op == 2
        assert [r.getMessage() for r in caplog.records] == [choice.describe()]
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("command", ["evaluate", "export", "fim", "design", "moe"])
def test_every_command_takes_threads(command):
    import importlib

    parser: argparse.ArgumentParser = importlib.import_module(f"mlip_plugins.cli.{command}").build_parser()
    assert any("--threads" in action.option_strings for action in parser._actions)


def test_mlip_train_prints_the_choice_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "lightning_modules.train", "threads=1", "--cfg", "job"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "threads: 1" in result.stdout   # the config key
    # the start-up line comes before the data are read (here: none given, a one-line error after it)
    result = subprocess.run([sys.executable, "-m", "lightning_modules.train", "threads=1", "data=file", f"hydra.run.dir={tmp_path / 'r'}"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    lines = [line for line in result.stdout.splitlines() if "torch threads" in line]
    assert result.returncode == 2 and len(lines) == 1 and "torch threads: 1 intra-op, 1 inter-op (threads=1)" in lines[0]
    result = subprocess.run([sys.executable, "-m", "lightning_modules.train", "threads=0.5", f"hydra.run.dir={tmp_path / 'r'}"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "threads: expected a positive integer" in result.stderr
