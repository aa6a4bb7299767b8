"""Atomic, durable file writes, and the sweep of the temporaries a killed writer left behind.

Every file the package writes for the user or for itself (checkpoints, exported models,
nep.txt, the graph cache) goes through :func:`atomic_output`: the bytes go to a hidden
temporary ``.<name>.tmp<pid>`` in the *same directory* as the target, are flushed and
``fsync``-ed, and the temporary is renamed over the target with ``os.replace`` (atomic on POSIX
and Windows); the directory is then fsynced so the rename itself is durable. Any failure (disk
full, a crash in the serialiser, Ctrl-C) removes the temporary and leaves the previous target
untouched. Writing through a Python file handle also makes a full disk an ``OSError`` with
``errno.ENOSPC`` rather than torch's zip writer's ``RuntimeError: ... unexpected pos``.

A process killed outright (SIGKILL, out of memory) cannot clean up: :func:`sweep_stale_temporaries`
removes such leftovers later, but only those whose writer (the pid in the name) is no longer
running and that have not been touched for a minute (another host on a shared file system may
be writing one with a pid that is free here).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import torch

#: a temporary untouched for this long (s) and whose pid is not running here is stale
STALE_AFTER_S = 60.0
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.tmp(?P<pid>\d+)$")


def temporary_path(path: str | os.PathLike) -> Path:
    """The hidden same-directory temporary this process writes ``path`` through."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # Windows, some network file systems
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary handle whose content replaces ``path`` atomically when the block ends without error.

    The parent directory must exist (a missing one is ``FileNotFoundError``; the caller decides
    whether to create it).
    """
    path = Path(path)
    tmp = temporary_path(path)
    try:
        with open(tmp, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` through :func:`atomic_output`."""
    with atomic_output(path) as handle:
        torch.save(obj, handle)
    return Path(path)


def atomic_write_text(text: str, path: str | os.PathLike) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through :func:`atomic_output`."""
    with atomic_output(path) as handle:
        handle.write(text.encode("utf-8"))
    return Path(path)


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is a full disk or an exceeded quota."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    except OSError:  # e.g. Windows: treat as alive, never delete on doubt
        return True
    return True


def sweep_stale_temporaries(directory: str | os.PathLike, name_glob: str = "*",
                            stale_after_s: float = STALE_AFTER_S) -> list[Path]:
    """Remove ``.<name>.tmp<pid>`` files in ``directory`` (``name`` matching ``name_glob``) left by
    writers that are gone; returns what was removed. Files not named like our temporaries, and
    those of running processes, are never touched."""
    directory = Path(directory)
    removed = []
    now = time.time()
    try:
        candidates = list(directory.glob(f".{name_glob}.tmp*"))
    except OSError:
        return removed
    for candidate in candidates:
        match = _TEMPORARY.match(candidate.name)
        if match is None or int(match["pid"]) == os.getpid() or _pid_alive(int(match["pid"])):
            continue
        try:
            if not candidate.is_file() or now - candidate.stat().st_mtime < stale_after_s:
                continue
            candidate.unlink()
        except OSError:  # raced with another sweeper, or not ours to remove
            continue
        removed.append(candidate)
    return removed
