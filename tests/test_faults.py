"""Faults during training: SIGKILL then resume, crashes while saving, NaN losses, DDP equivalence.

* (slow) A run killed with SIGKILL at an arbitrary moment resumes from ``last.ckpt`` and ends
  with the same parameters as an uninterrupted run (float64, 1e-10).
* ``AtomicCheckpointIO`` never leaves a corrupt checkpoint: a process killed in a loop of
  saves, and a save that fails half-way, both leave the previous complete file.
* ``nan_policy=raise`` stops with a message naming epoch and step; ``nan_policy=skip`` drops
  exactly the bad steps (non-finite loss or gradient) and never produces NaN weights.
* (slow) DDP with 2 CPU processes and per-process batch B gives the parameters of one process
  with batch 2B (float64, 1e-8).
* DDP with a NaN loss on the main process only: the run stops with the error and no process is
  left waiting in an all-reduce (nan_policy=raise); (slow) with nan_policy=skip the NaN reaches
  the other process through the gradient all-reduce, both skip the same step and finish with
  finite weights.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module

from lightning_modules.checkpoint_io import AtomicCheckpointIO, atomic_torch_save
from lightning_modules.module import PotentialModule
from lightning_modules.train import run_training

TINY = ["model=composable", "model.energy.descriptor.n_max=3", "model.energy.descriptor.basis_size=4", "model.energy.readout.hidden=[8]",
        "model.cutoff=4.0", "trainer.enable_progress_bar=false", "scheduler.warmup_steps=2", "logger=[]",
        "experiment=float64", "trainer.enable_model_summary=false"]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def restore_dtype():
    previous = torch.get_default_dtype()
    yield
    torch.set_default_dtype(previous)


@pytest.fixture(scope="module")
def small_xyz(tmp_path_factory):
    """20 labelled EMT structures (varying atom counts): 16 train / 2 val / 2 test."""
    from ase.io import write

    from mlip_plugins.data.default_dataset import generate_default_dataset

    path = tmp_path_factory.mktemp("faults") / "small.xyz"
    write(path, generate_default_dataset(n_structures=20, seed=3), format="extxyz")
    return path


def config(overrides: list[str]):
    with initialize_config_module("mlip_plugins.conf", version_base=None):
        return compose("train", overrides=overrides)


def model_parameters(ckpt_path) -> dict[str, torch.Tensor]:
    state = torch.load(ckpt_path, weights_only=True)["state_dict"]
    return {k: v for k, v in state.items() if k.startswith("model.")}


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


# ----------------------------------------------------------------------------- SIGKILL + resume
@pytest.mark.slow  # ~20-40 s; test_train.py's resume test (a clean stop) stays in the default run
def test_sigkill_during_training_then_resume_matches_uninterrupted_run(tmp_path, small_xyz):
    # enough that the kill lands before the last epoch on a fast, idle machine too (an epoch of this
    # tiny set takes tens of milliseconds once the checkpoint metadata is computed once per model)
    epochs = 40
    common = [f"data.path={small_xyz}", *TINY, "data.batch_size=8", f"trainer.max_epochs={epochs}", "seed=4"]
    run_dir = tmp_path / "killed"
    child = subprocess.Popen([sys.executable, "-m", "lightning_modules.train", *common, f"hydra.run.dir={run_dir}"],
                             cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.time() + 240
    while not last.exists() and child.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.05)  # into the next epoch, maybe inside the next save
    child.send_signal(signal.SIGKILL)
    _, stderr = child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL, f"the run ended before it could be killed: {stderr[-2000:]!r}"
    saved_epoch = torch.load(last, weights_only=True)["epoch"]
    assert saved_epoch < epochs - 1, "killed too late to test a resume"

    resumed = run_training(config([*common, f"run_dir={run_dir}", f"ckpt_path={last}"]))
    full = run_training(config([*common, f"run_dir={tmp_path / 'full'}"]))
    a, b = (torch.load(r["last_ckpt"], weights_only=True) for r in (resumed, full))
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"]), (saved_epoch, a["epoch"], a["global_step"], b["epoch"], b["global_step"])
    assert max_difference(model_parameters(full["last_ckpt"]), model_parameters(resumed["last_ckpt"])) <= 1e-10
    assert abs(resumed["metrics"]["forces_rmse"] - full["metrics"]["forces_rmse"]) <= 1e-10


# ----------------------------------------------------------------------------- atomic saves
SAVE_LOOP = textwrap.dedent("""
    import sys, torch
    from lightning_modules.checkpoint_io import AtomicCheckpointIO
    io, path = AtomicCheckpointIO(), sys.argv[1]
    k = 0
    while True:
        k += 1
        state = {"step": k, "weights": torch.full((1_500_000,), float(k))}
        print("saving", k, flush=True)
        io.save_checkpoint(state, path)
""")


def test_sigkill_while_saving_leaves_a_complete_checkpoint(tmp_path):
    """Killed 5 ms into writing a 12 MB checkpoint (a plain torch.save to the path leaves a
    truncated file in this protocol nearly every time)."""
    path = tmp_path / "checkpoints" / "last.ckpt"
    child = subprocess.Popen([sys.executable, "-c", SAVE_LOOP, str(path)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    while child.stdout.readline().strip() not in ("saving 4", ""):
        pass
    time.sleep(0.005)
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=30)
    state = torch.load(path, weights_only=True)  # the previous or the new checkpoint, complete
    assert state["step"] in (3, 4) and state["weights"].shape == (1_500_000,)
    assert bool((state["weights"] == float(state["step"])).all())
    assert [p.name for p in path.parent.glob("*.ckpt")] == ["last.ckpt"]


def test_a_save_failing_half_way_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"epoch": 1, "w": torch.ones(10)}, path)

    def crash_half_way(obj, handle):
        handle.write(b"PK\x03\x04 half a zip archive")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr("mlip_plugins.atomic_files.torch.save", crash_half_way)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"epoch": 2, "w": torch.zeros(10)}, path)
    assert torch.load(path, weights_only=True)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temporary file left
    monkeypatch.undo()
    atomic_torch_save({"epoch": 3}, path)
    assert io.load_checkpoint(path)["epoch"] == 3


# ----------------------------------------------------------------------------- NaN policy
class NaNAtSteps(PotentialModule):
    """Test module: a NaN energy (so a NaN loss), or only a NaN gradient, at chosen global steps."""

    NAN_LOSS_STEPS: set = set()
    NAN_GRAD_STEPS: set = set()

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.snapshots: list[dict] = []
        self.checkpoint_io = None

    def forward(self, batch, create_graph: bool = False, model=None):
        out = super().forward(batch, create_graph=create_graph, model=model)
        if self.training and model is None:
            if self.global_step in self.NAN_LOSS_STEPS:
                out["energy"] = out["energy"] * float("nan")
            elif self.global_step in self.NAN_GRAD_STEPS:
                out["energy"] = out["energy"] + _NaNGradient.apply(next(self.model.parameters()))
        return out

    def on_fit_start(self):
        self.checkpoint_io = self.trainer.strategy.checkpoint_io

    def on_train_epoch_end(self):
        self.snapshots.append({k: v.detach().clone() for k, v in self.model.state_dict().items()})


class _NaNGradient(torch.autograd.Function):
    """Zero in the forward pass, NaN gradient in the backward pass."""

    @staticmethod
    def forward(ctx, x):
        ctx.shape = x.shape
        return x.new_zeros(())

    @staticmethod
    def backward(ctx, grad):
        return torch.full(ctx.shape, float("nan"), dtype=grad.dtype)


def _nan_run(tmp_path, xyz, policy: str, loss_steps=(), grad_steps=(), epochs: int = 3):
    NaNAtSteps.NAN_LOSS_STEPS, NaNAtSteps.NAN_GRAD_STEPS = set(loss_steps), set(grad_steps)
    modules = []

    class Recording(NaNAtSteps):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            modules.append(self)

    globals()["_Recording"] = Recording
    cfg = config([f"data.path={xyz}", *TINY, "data.batch_size=8", f"trainer.max_epochs={epochs}", f"nan_policy={policy}",
                  f"module.cls={__name__}:_Recording", f"run_dir={tmp_path / policy}"])
    try:
        result = run_training(cfg)
    finally:
        NaNAtSteps.NAN_LOSS_STEPS, NaNAtSteps.NAN_GRAD_STEPS = set(), set()
    return result, modules[0]


def test_nan_loss_raises_a_clear_error(tmp_path, small_xyz):
    with pytest.raises(FloatingPointError, match=r"non-finite training loss at epoch 0, step 1.*nan_policy=skip"):
        _nan_run(tmp_path, small_xyz, "raise", loss_steps={1})


def test_nan_policy_skip_drops_exactly_the_bad_steps(tmp_path, small_xyz):
    # 16 training structures, batch 8: steps 2, 3 make epoch 1; step 4 (epoch 2) has a NaN gradient only
    with pytest.warns(UserWarning, match=r"step skipped \(nan_policy=skip, 3 skipped so far\)"):
        result, module = _nan_run(tmp_path, small_xyz, "skip", loss_steps={2, 3}, grad_steps={4})
    assert module.skipped_steps == 3
    assert isinstance(module.checkpoint_io, AtomicCheckpointIO)  # mlip-train saves atomically
    first, second, third = module.snapshots
    assert max_difference(first, second) == 0.0  # the whole epoch was skipped: weights untouched
    assert max_difference(second, third) > 0.0  # epoch 2 still trained on its good step
    weights = model_parameters(result["last_ckpt"])
    assert all(bool(torch.isfinite(v).all()) for v in weights.values())
    for state in torch.load(result["last_ckpt"], weights_only=True)["optimizer_states"][0]["state"].values():
        assert all(bool(torch.isfinite(v).all()) for v in state.values() if torch.is_tensor(v))


def test_nan_policy_is_validated():
    with pytest.raises(ValueError, match="nan_policy must be 'raise' or 'skip'"):
        PotentialModule(model={"elements": ["Cu"], "cutoff": 4.0, "energy": {"descriptor": {"name": "radial"},
                                                                             "readout": {"name": "linear"}}},
                        nan_policy="ignore")


# ----------------------------------------------------------------------------- DDP
@pytest.mark.slow
def test_ddp_two_processes_match_one_process_with_the_global_batch(tmp_path, small_xyz):
    common = [f"data.path={small_xyz}", *TINY, "trainer.max_epochs=3", "trainer.accelerator=cpu", "seed=2"]
    ddp_dir, single_dir = tmp_path / "ddp", tmp_path / "single"
    result = subprocess.run([sys.executable, "-m", "lightning_modules.train", *common, "trainer=ddp", "data.batch_size=2",
                             f"hydra.run.dir={ddp_dir}"], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    single = run_training(config([*common, "data.batch_size=4", f"run_dir={single_dir}"]))
    ddp_ckpt = ddp_dir / "checkpoints" / "last.ckpt"
    assert torch.load(ddp_ckpt, weights_only=True)["global_step"] == torch.load(single["last_ckpt"], weights_only=True)["global_step"]
    assert max_difference(model_parameters(single["last_ckpt"]), model_parameters(ddp_ckpt)) <= 1e-8


NAN_ON_RANK_ONE = """
from lightning_modules.module import PotentialModule


class NaNOnRankOne(PotentialModule):
    \"\"\"A NaN training loss on process 0 only, at global step 1.\"\"\"

    def forward(self, batch, create_graph=False, model=None):
        out = super().forward(batch, create_graph=create_graph, model=model)
        if self.training and model is None and self.global_rank == 0 and self.global_step == 1:
            out["energy"] = out["energy"] * float("nan")
        return out
"""


def _ddp_nan_run(tmp_path, small_xyz, policy: str) -> subprocess.CompletedProcess:
    (tmp_path / "nan_rank_module.py").write_text(NAN_ON_RANK_ONE)
    # only the test module's folder: the package itself must come from the installed copy
    # (a non-editable install keeps its configs in mlip_plugins/conf, which the source tree lacks)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH", "")]))}
    args = [f"data.path={small_xyz}", *TINY, "trainer=ddp", "trainer.accelerator=cpu", "trainer.max_epochs=2",
            "data.batch_size=2", f"nan_policy={policy}", "module.cls=nan_rank_module:NaNOnRankOne",
            f"hydra.run.dir={tmp_path / policy}"]
    # a process left waiting in a collective would show up as TimeoutExpired
    return subprocess.run([sys.executable, "-m", "lightning_modules.train", *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=400, env=env)


def test_ddp_nan_on_one_process_stops_both(tmp_path, small_xyz):
    result = _ddp_nan_run(tmp_path, small_xyz, "raise")
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "non-finite training loss at epoch 0, step 1" in output
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in output


@pytest.mark.slow
def test_ddp_nan_skip_skips_on_both_processes(tmp_path, small_xyz):
    result = _ddp_nan_run(tmp_path, small_xyz, "skip")
    assert result.returncode == 0, result.stderr[-3000:]
    weights = model_parameters(tmp_path / "skip" / "checkpoints" / "last.ckpt")
    assert all(bool(torch.isfinite(v).all()) for v in weights.values())


# ----------------------------------------------------------------------------- a full disk
def test_a_full_disk_while_caching_graphs_warns_and_training_goes_on(tmp_path, small_xyz, monkeypatch, caplog):
    """The graph cache is an optimisation: a write failing with ENOSPC is one warning, no partial
    cache file or temporary is left, and the run trains on the graphs it built."""
    import errno
    import logging

    from mlip_plugins.data import graph_cache

    cache = tmp_path / "cache"
    monkeypatch.setenv("MLIP_PLUGINS_CACHE", str(cache))
    monkeypatch.setattr(graph_cache, "_swept", set(), raising=False)
    real_save = torch.save

    def disk_full_for_the_cache(obj, target, *args, **kwargs):
        name = os.fspath(getattr(target, "name", target))
        if "graphs_" not in name:
            return real_save(obj, target, *args, **kwargs)
        handle = open(target, "wb") if isinstance(target, (str, os.PathLike)) else target  # noqa: SIM115
        handle.write(b"PK\x03\x04 half a zip archive")
        handle.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", disk_full_for_the_cache)
    with caplog.at_level(logging.WARNING, logger="mlip_plugins.data.graph_cache"):
        result = run_training(config([f"data.path={small_xyz}", *TINY, "trainer.max_epochs=1", f"run_dir={tmp_path / 'run'}"]))
    warnings = [r.getMessage() for r in caplog.records if "no space left on device" in r.getMessage()]
    assert len(warnings) == 1 and str(small_xyz) in warnings[0]
    assert Path(result["last_ckpt"]).exists()
    assert sorted(p.name for p in cache.iterdir() if "graphs" in p.name) == []
