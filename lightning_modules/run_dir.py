"""Ownership, lock and clean-up of an ``mlip-train`` run directory.

A run directory may be a folder the user already had (``hydra.run.dir=.`` next to weeks of
DFT data) or the live directory of another run. So:

* **Ownership.** :meth:`RunDirectory.claim` notes, before anything is written, which of the
  directory and its parents did not exist: those this invocation creates. After a user error
  a run removes the run directory (and the empty parents it created) only when it created the
  run directory itself and no checkpoint is in it; a directory that was there before is never
  deleted from, whatever it holds. Everything inside a directory this run created was written
  under this run's lock, so removing it removes only this run's files.
* **Lock.** The launching process holds an exclusive ``filelock`` on ``<run dir>/.mlip-train.lock``
  for the whole run, and writes ``host:pid`` into ``.mlip-train.pid`` (a sidecar: filelock
  truncates the lock file when another process tries it). A second run into a locked
  directory stops with one line naming the directory and the holder. Only global rank 0 takes
  it: DDP processes started by Lightning and the other tasks of torchrun, srun or mpirun
  (a rank > 0 in their environment, :data:`RANK_VARIABLES`) run under rank 0's lock.

With Hydra, :class:`ClaimRunDirectory` (a Hydra callback in ``conf/train.yaml``) claims the
directory in ``on_run_start``, before Hydra creates it and writes ``.hydra/`` and the log
file into it. In-process callers (``run_training``) claim it themselves. A multirun
(``-m``) job's directory already exists when the task starts, so it is never deleted.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path
from typing import Any, NoReturn

from filelock import FileLock, Timeout
from hydra.experimental.callback import Callback

from mlip_plugins.errors import USER_ERROR_EXIT_STATUS, MLIPError

LOCK_NAME = ".mlip-train.lock"
HOLDER_NAME = ".mlip-train.pid"
FAILED_MARKER = "FAILED"


class RunDirectoryBusyError(MLIPError, RuntimeError):
    """Another run holds the lock on the run directory."""


#: environment variables in which launchers give a process its rank: Lightning's own DDP
#: launcher (LOCAL_RANK, NODE_RANK), torchrun (RANK), srun (SLURM_PROCID), mpirun (Open MPI, PMI)
RANK_VARIABLES = ("LOCAL_RANK", "NODE_RANK", "RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "PMI_RANK")


def is_launching_process() -> bool:
    """Whether this is global rank 0: the process a user started, not one Lightning spawned
    for DDP nor another task of torchrun, srun or mpirun."""
    return all(os.environ.get(name, "0").strip() in ("", "0") for name in RANK_VARIABLES)


def exit_with_user_error(exc: BaseException) -> NoReturn:
    """The command-line contract for user-fixable errors: one line on stderr, exit status 2."""
    print(f"mlip-train: error: {exc}", file=sys.stderr)
    sys.exit(USER_ERROR_EXIT_STATUS)


class RunDirectory:
    """One invocation's claim on a run directory (see the module docstring).

    Use :meth:`claim`, not the constructor: a directory already claimed in this process
    (by the Hydra callback) is returned as it is, with what it recorded before Hydra wrote.
    """

    _claims: dict[Path, RunDirectory] = {}

    def __init__(self, path: Path, created: list[Path]):
        self.path = path
        #: directories this invocation created, outermost first (the run directory last)
        self.created = created
        self._lock: FileLock | None = None

    @property
    def owned(self) -> bool:
        """Whether this invocation created the run directory."""
        return bool(self.created) and self.created[-1] == self.path

    @classmethod
    def is_claimed(cls, path: str | os.PathLike) -> bool:
        """Whether this process already holds a claim on ``path``."""
        return Path(path).resolve() in cls._claims

    @classmethod
    def claim(cls, path: str | os.PathLike, lock: bool = True) -> RunDirectory:
        """Create ``path`` if needed (recording what was missing) and take its lock.

        Raises :class:`RunDirectoryBusyError` when another run holds the lock.
        """
        path = Path(path).resolve()
        existing = cls._claims.get(path)
        if existing is not None:
            return existing
        missing = [p for p in (path, *path.parents) if not p.exists()][::-1]
        path.mkdir(parents=True, exist_ok=True)
        claim = cls(path, missing)
        if lock:
            claim._acquire()
        cls._claims[path] = claim
        return claim

    def _acquire(self) -> None:
        lock = FileLock(str(self.path / LOCK_NAME), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise RunDirectoryBusyError(
                f"{self.path}: run directory in use by another mlip-train run ({self._holder()}); "
                "wait for it to finish or choose another hydra.run.dir"
            ) from None
        self._lock = lock
        (self.path / HOLDER_NAME).write_text(f"{socket.gethostname()}:{os.getpid()}\n")

    def _holder(self) -> str:
        try:
            host, _, pid = (self.path / HOLDER_NAME).read_text().strip().rpartition(":")
        except OSError:
            return "pid unknown"
        return f"pid {pid} on {host}" if host else f"pid {pid}"

    def release(self) -> None:
        """Drop the lock (the lock file stays: deleting it would race with a new run)."""
        if self._lock is not None:
            (self.path / HOLDER_NAME).unlink(missing_ok=True)
            self._lock.release()
            self._lock = None
        self._claims.pop(self.path, None)

    def has_checkpoint(self) -> bool:
        return any((self.path / "checkpoints").glob("*.ckpt"))

    def clean_failed(self) -> None:
        """After a user error: remove what this invocation created, if it created the run
        directory and no checkpoint is in it; otherwise delete nothing (and mark a directory
        with checkpoints ``FAILED`` so it does not look complete)."""
        if self.owned and not self.has_checkpoint():
            self.release()
            shutil.rmtree(self.path, ignore_errors=True)
            for parent in reversed(self.created[:-1]):
                try:
                    parent.rmdir()  # only while empty: never another run's or the user's files
                except OSError:
                    break
            return
        if self.has_checkpoint():
            (self.path / FAILED_MARKER).write_text("training stopped with an error; see the log\n")
        self.release()


class ClaimRunDirectory(Callback):
    """Hydra callback: claim ``hydra.run.dir`` before Hydra creates it and writes into it."""

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        if not is_launching_process():
            return
        try:
            RunDirectory.claim(str(config.hydra.run.dir))
        except MLIPError as exc:  # raised here, Hydra would turn it into a warning and carry on
            exit_with_user_error(exc)

    def on_run_end(self, config: Any, **kwargs: Any) -> None:
        claim = RunDirectory._claims.get(Path(str(config.hydra.run.dir)).resolve())
        if claim is not None:
            claim.release()
