"""A run never loses a user's work and never trains silently on the wrong thing (issue 14).

* ownership: a failed run removes only a run directory it created in that invocation (and the
  empty parents it created), never a folder that was there before (``hydra.run.dir=.``);
* lock: a second run into a directory held by a live run stops with one line naming the
  directory and the holder's pid, and writes nothing there;
* resume appends to ``logs/metrics.csv``;
* ``split.json`` records its files' fingerprints and frame counts and refuses changed data;
* resume refuses a model config that differs from the checkpoint's, listing the keys;
* every cutoff is validated at build time, naming its config path;
* DDP padding frames have zero weight: 2 processes equal 1 process for odd training sets;
* only the project's own errors become one-line messages: an internal bug keeps its traceback;
* a broken ``mlip_plugins.configs`` entry point is reported once and does not stop a run.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from fake_distributions import fake_site  # noqa: F401 - a fixture
from hydra import compose, initialize_config_module

from lightning_modules.train import run_training
from mlip_plugins.data.fingerprint import file_fingerprint
from mlip_plugins.models.builder import ConfigError, build_potential

TINY = ["model=composable", "model.energy.descriptor.n_max=3", "model.energy.descriptor.basis_size=4", "model.energy.readout.hidden=[8]",
        "model.cutoff=4.0", "data.batch_size=4", "trainer.enable_progress_bar=false", "scheduler.warmup_steps=2",
        "++trainer.enable_model_summary=false"]


def compose_config(overrides: list[str]):
    with initialize_config_module("mlip_plugins.conf", version_base=None):
        return compose("train", overrides=overrides)


def cli(args: list[str], cwd, env=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lightning_modules.train", *args, "trainer.enable_progress_bar=false"],
                          cwd=cwd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("mlip-train: error:")]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- 1. ownership
def test_a_failed_run_into_an_existing_folder_deletes_nothing(tmp_path):
    data = tmp_path / "project"
    data.mkdir()
    (data / "dft.xyz").write_text("weeks of DFT\n")
    (data / "notes").mkdir()
    (data / "notes" / "a.txt").write_text("keep\n")
    result = cli(["data.path=missing.xyz", "hydra.run.dir=."], cwd=data)
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(error_lines(result)) == 1 and "missing.xyz: file not found" in error_lines(result)[0]
    assert (data / "dft.xyz").read_text() == "weeks of DFT\n"
    assert (data / "notes" / "a.txt").read_text() == "keep\n"


def test_a_failed_run_removes_the_directories_it_created_and_nothing_else(tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "older_run.txt").write_text("x")
    result = cli(["data.path=missing.xyz", "hydra.run.dir=runs/new/deeper/run"], cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert not (tmp_path / "runs" / "new").exists()  # created here: gone, parents included
    assert (tmp_path / "runs" / "older_run.txt").exists()  # was there before: kept


def test_claim_records_what_it_created(tmp_path):
    from lightning_modules.run_dir import RunDirectory

    (tmp_path / "a").mkdir()
    claim = RunDirectory.claim(tmp_path / "a" / "b" / "c")
    try:
        assert claim.owned and claim.created == [tmp_path / "a" / "b", tmp_path / "a" / "b" / "c"]
    finally:
        claim.clean_failed()
    assert (tmp_path / "a").is_dir() and not (tmp_path / "a" / "b").exists()
    existing = RunDirectory.claim(tmp_path / "a")
    try:
        assert not existing.owned and existing.created == []
    finally:
        existing.clean_failed()
    assert (tmp_path / "a").is_dir()


# ----------------------------------------------------------------------------- 2. lock
def test_a_second_run_into_a_locked_directory_stops_and_writes_nothing(tmp_path):
    from lightning_modules.run_dir import HOLDER_NAME, RunDirectory, RunDirectoryBusyError

    run_dir = tmp_path / "live"
    holder = RunDirectory.claim(run_dir)  # this test process plays the live first run
    try:
        (run_dir / "checkpoints").mkdir()
        (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"live run")
        before = snapshot(run_dir)
        result = cli(["data.path=missing.xyz", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
        assert result.returncode == 2, result.stderr[-2000:]
        lines = error_lines(result)
        assert len(lines) == 1 and str(run_dir) in lines[0] and f"pid {os.getpid()}" in lines[0], result.stderr[-2000:]
        assert "Traceback" not in result.stderr
        assert snapshot(run_dir) == before  # no .hydra/, no log file, nothing deleted
        with pytest.raises(RunDirectoryBusyError, match=f"pid {os.getpid()}"):
            RunDirectory(run_dir.resolve(), [])._acquire()  # another claimant in this process
    finally:
        holder.release()
    assert not (run_dir / HOLDER_NAME).exists()
    RunDirectory.claim(run_dir).release()  # free again once released


@pytest.mark.parametrize("variable", ["LOCAL_RANK", "NODE_RANK", "RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "PMI_RANK"])
def test_only_global_rank_zero_takes_the_lock(monkeypatch, variable):
    """srun, torchrun and mpirun start every rank themselves: a rank > 0 must not try the lock
    that rank 0 holds (it would stop with 'in use')."""
    from lightning_modules.run_dir import RANK_VARIABLES, is_launching_process

    for name in RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert is_launching_process()
    monkeypatch.setenv(variable, "0")
    assert is_launching_process()
    monkeypatch.setenv(variable, "3")
    assert not is_launching_process()


# ----------------------------------------------------------------------------- 3, 6. resume
@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory, tiny_xyz):
    """A finished 1-epoch run (CSV logger) to resume from."""
    run_dir = tmp_path_factory.mktemp("resume") / "run"
    common = [f"data.path={tiny_xyz}", *TINY, "logger=csv"]
    run_training(compose_config([*common, "trainer.max_epochs=1", f"run_dir={run_dir}"]))
    return run_dir, common


def _epochs_logged(metrics_csv: Path) -> set[int]:
    with open(metrics_csv, newline="") as handle:
        return {int(row["epoch"]) for row in csv.DictReader(handle) if row.get("epoch")}


def test_resume_appends_to_metrics_csv(one_epoch_run, tmp_path):
    source, common = one_epoch_run
    run_dir = tmp_path / "run"
    import shutil

    shutil.copytree(source, run_dir)
    assert _epochs_logged(run_dir / "logs" / "metrics.csv") == {0}
    run_training(compose_config([*common, "trainer.max_epochs=2", f"run_dir={run_dir}",
                                 f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"]))
    assert _epochs_logged(run_dir / "logs" / "metrics.csv") == {0, 1}  # epoch 0's rows kept


def test_resume_with_another_cutoff_is_refused_listing_the_keys(one_epoch_run):
    run_dir, common = one_epoch_run
    changed = [arg.replace("model.cutoff=4.0", "model.cutoff=4.5").replace("n_max=3", "n_max=4") for arg in common]
    cfg = compose_config([*changed, "trainer.max_epochs=2", f"run_dir={run_dir}", f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"])
    with pytest.raises(ConfigError, match=r"model.cutoff \(checkpoint 4.0, now 4.5\).*model.energy.descriptor.n_max \(checkpoint 3, now 4\)"):
        run_training(cfg)


# ----------------------------------------------------------------------------- 5. split integrity
def _datamodule(path, split_file):
    from lightning_modules.datamodule import AtomsDataModule

    module = AtomsDataModule(cutoff=4.0, path=str(path), split_file=str(split_file), cache=False)
    module.setup("fit")
    return module


def test_split_refuses_appended_frames_and_changed_content(tmp_path, tiny_xyz):
    from ase.io import read, write

    from mlip_plugins.data.structures import DataError

    data, split = tmp_path / "data.xyz", tmp_path / "split.json"
    frames = read(tiny_xyz, ":")
    write(data, frames, format="extxyz")
    first = _datamodule(data, split)
    first.save_split(split)
    saved = json.loads(split.read_text())
    assert saved["files"]["all"]["frames"] == len(frames) and saved["files"]["all"]["fingerprint"] == file_fingerprint(data)
    assert _datamodule(data, split).split["train"] == first.split["train"]  # unchanged data: reused

    write(data, frames + frames[:3], format="extxyz")  # frames appended
    with pytest.raises(DataError, match=rf"data.path: {len(frames)} -> {len(frames) + 3} frames, file content changed\); "
                                        r"restore the original data.*new run directory"):
        _datamodule(data, split)

    write(data, frames, format="extxyz")
    stat, text = os.stat(data), data.read_text()
    at = text.index(" energy=") + len(" energy=")
    data.write_text(text[:at] + ("8" if text[at] == "9" else "9") + text[at + 1 :])  # another label, same size...
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # ... and mtime, as after cp -p
    assert os.stat(data).st_size == stat.st_size
    with pytest.raises(DataError, match=r"data.path: file content changed"):
        _datamodule(data, split)


# ----------------------------------------------------------------------------- 7. cutoffs
def _model_cfg(cutoff=4.0, term_cutoff=3.0):
    return {"elements": ["Cu", "Au"], "cutoff": cutoff, "energy": {"sum": [
        {"descriptor": {"name": "radial", "n_max": 2}, "readout": {"name": "linear"}},
        {"descriptor": {"name": "angular", "cutoff": term_cutoff, "n_max": 2, "l_max": 1}, "readout": {"name": "linear"}},
    ]}}


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf"), float("nan"), "abc"])
def test_every_cutoff_is_checked_at_build_time_naming_its_path(bad):
    with pytest.raises(ConfigError, match=r"^model\.energy\.sum\[1\]\.descriptor\.cutoff: a cutoff must be a finite number > 0"):
        build_potential(_model_cfg(term_cutoff=bad))
    with pytest.raises(ConfigError, match=r"^model\.cutoff: a cutoff must be a finite number > 0"):
        build_potential(_model_cfg(cutoff=bad))
    assert build_potential(_model_cfg()).cutoff == 4.0
    nep = {"elements": ["Cu"], "cutoff": 4.0, "energy": {"model": {"name": "nep", "cutoff": 4.0, "cutoff_angular": bad}}}
    if not isinstance(bad, str):  # numeric cutoff_* keys are checked too (text there is the plugin's to refuse)
        with pytest.raises(ConfigError, match=r"^model\.energy\.model\.cutoff_angular: a cutoff must be a finite number > 0"):
            build_potential(nep)


# ----------------------------------------------------------------------------- 8. DDP padding
@pytest.mark.parametrize(("n", "world", "batch"), [(5, 2, 2), (7, 3, 1), (9, 2, 4), (3, 4, 1)])
def test_ddp_padding_frames_have_zero_weight(float64, tiny_xyz, n, world, batch):
    """Process gradients averaged (as DDP does), each with the global label totals as loss
    denominators (as PotentialModule does): equal to one process on the global batch, at every
    step, for training sets that are not a multiple of the world size."""
    from torch_geometric.data import Batch

    from lightning_modules.datamodule import EpochSeededSampler, PaddedGraphs, load_graph_file
    from lightning_modules.losses import errors, total_loss
    from lightning_modules.module import PotentialModule
    from mlip_plugins.data.structures import LabelKeys

    graphs = load_graph_file(str(tiny_xyz), 4.0, LabelKeys(), use_cache=False)[:n]
    dataset = PaddedGraphs(graphs)
    module = PotentialModule(model={"elements": ["Al", "Ni", "Cu", "Pd", "Ag", "Pt", "Au"], "cutoff": 4.0,
                                    "energy": {"descriptor": {"name": "radial", "n_max": 2, "basis_size": 4},
                                               "readout": {"name": "mlp", "hidden": [4]}}},
                             loss={"energy": 1.0, "forces": 10.0, "stress": 0.1}).train()
    params = [p for p in module.model.parameters() if p.requires_grad]

    def gradient(indices: list[int], denominators=None) -> tuple[list[torch.Tensor], dict]:
        data = Batch.from_data_list([dataset[i] for i in indices])
        errs = errors(data, module(data, create_graph=True))
        loss, _ = total_loss(errs, module.loss_weights, denominators)
        return torch.autograd.grad(loss, params, allow_unused=True), errs

    single = list(EpochSeededSampler(n, seed=1))
    ranks = [list(EpochSeededSampler(n, seed=1, num_replicas=world, rank=r)) for r in range(world)]
    assert sorted(i % n for r in ranks for i in r) == sorted(list(range(n)) + single[: world * len(ranks[0]) - n])
    for step in range(-(-len(ranks[0]) // batch)):
        expected, _ = gradient(single[step * batch * world : (step + 1) * batch * world])
        locals_ = [ranks[r][step * batch : (step + 1) * batch] for r in range(world)]
        totals = {}
        for indices in locals_:  # the all-reduce of PotentialModule._global_denominators
            for key, (_, w) in gradient(indices)[1].items():
                totals[key] = totals.get(key, 0.0) + w.sum()
        denominators = {key: value / world for key, value in totals.items()}
        per_rank = [gradient(indices, denominators)[0] for indices in locals_]
        for k, g in enumerate(expected):
            averaged = sum(r[k] if r[k] is not None else torch.zeros_like(g) for r in per_rank) / world
            assert torch.allclose(averaged, g, atol=1e-12, rtol=1e-9), (step, k)


@pytest.mark.slow
def test_ddp_two_processes_match_one_process_on_an_odd_training_set(tmp_path):
    from ase.io import write

    from mlip_plugins.data.default_dataset import generate_default_dataset

    data = tmp_path / "odd.xyz"
    write(data, generate_default_dataset(n_structures=19, seed=3), format="extxyz")  # 15 train / 2 val / 2 test
    common = [f"data.path={data}", *TINY, "trainer.max_epochs=2", "trainer.accelerator=cpu", "seed=2",
              "experiment=float64", "logger=[]"]
    ddp_dir = tmp_path / "ddp"
    result = cli([*common, "trainer=ddp", "data.batch_size=2", f"hydra.run.dir={ddp_dir}"], cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    single = run_training(compose_config([*common, "data.batch_size=4", f"run_dir={tmp_path / 'single'}"]))
    a = torch.load(single["last_ckpt"], weights_only=True)["state_dict"]
    b = torch.load(ddp_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert len(json.loads((ddp_dir / "split.json").read_text())["train"]) == 15
    worst = max(float((a[k] - b[k]).abs().max()) for k in a if k.startswith("model."))
    assert worst <= 1e-8


# ----------------------------------------------------------------------------- errors vs bugs
INTERNAL_BUG = """
from lightning_modules.module import PotentialModule


class Buggy(PotentialModule):
    def training_step(self, batch, batch_idx):
        raise ValueError("an internal bug, not the user's")
"""


def test_an_internal_bug_keeps_its_traceback(tmp_path, tiny_xyz):
    (tmp_path / "buggy_module.py").write_text(INTERNAL_BUG)
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH", "")]))}
    result = cli([f"data.path={tiny_xyz}", *TINY, "trainer.max_epochs=1", "logger=[]", "module.cls=buggy_module:Buggy",
                  f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, env=env)
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "an internal bug, not the user's" in result.stderr
    assert not error_lines(result)


def test_a_broken_config_entry_point_is_reported_once_and_composition_goes_on(fake_site):
    fake_site.distribution("fake-brokencfg", "0.1", {"configs": {"missing": "no_such_package.conf", "raising": "fake_bc.conf"}},
                           {"fake_bc/__init__.py": "raise RuntimeError('boom at import')\n"})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            cfg = compose_config(["model.cutoff=4.5"])
    assert cfg.model.cutoff == 4.5
    messages = [str(w.message) for w in caught if "ignoring the config package" in str(w.message)]
    assert len(messages) == 2, messages  # one per broken package, not one per composition
    assert any("'fake_bc.conf'" in m and "RuntimeError: boom at import" in m for m in messages)
    assert any("'no_such_package.conf'" in m for m in messages)
