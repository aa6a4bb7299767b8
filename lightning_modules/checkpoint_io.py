"""``AtomicCheckpointIO``: checkpoints that are either the old file or the complete new one.

A run killed (SIGKILL, out of memory, node failure, power loss) while Lightning writes
``last.ckpt`` must still resume. Lightning's default ``TorchCheckpointIO`` writes local files
through an fsspec transaction whose temporary file lives in the system temp folder: moving it
to the run directory can be a copy onto the target (not atomic across file systems), and
nothing is fsynced, so after a power loss the renamed file may be empty.

This plugin serialises (through :mod:`mlip_plugins.atomic_files`) to a temporary file in the
*same directory* as the target, flushes and ``fsync``s it, renames it over the target with
``os.replace`` (atomic on POSIX and Windows) and fsyncs the directory, so the rename itself is durable. A crash at any moment
leaves the previous checkpoint intact; at worst a hidden ``.<name>.tmp<pid>`` file of the
killed process is left behind, which no ``*.ckpt`` glob (and no resume) picks up. Remote
paths (``s3://`` ...) fall back to Lightning's writer.

Used by ``mlip-train`` (``plugins=[AtomicCheckpointIO()]`` in :mod:`lightning_modules.train`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

from mlip_plugins.atomic_files import atomic_torch_save as _atomic_torch_save


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to ``path`` (its folder created) through a same-directory temporary, fsync and
    ``os.replace`` (:func:`mlip_plugins.atomic_files.atomic_torch_save`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return _atomic_torch_save(obj, path)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning CheckpointIO whose saves are atomic and durable on local file systems, and
    whose loads (``ckpt_path=`` resume) never unpickle objects (``weights_only=True``)."""

    def load_checkpoint(self, path, map_location: Any = lambda storage, loc: storage, weights_only: bool | None = None) -> dict:
        return super().load_checkpoint(path, map_location=map_location, weights_only=True)

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options")
        if type(get_filesystem(path)).__name__ != "LocalFileSystem":
            super().save_checkpoint(checkpoint, path)
            return
        atomic_torch_save(checkpoint, path)
