"""Which kind of model file a path holds, decided by its content, and loading any of them.

Three kinds load into a ``Potential``: a Lightning training checkpoint and an exported model
(both torch files: a zip archive, magic ``PK\\x03\\x04``, or torch's legacy pickle stream,
``\\x80`` + protocol byte), and a GPUMD nep.txt (text whose first word is ``nep3``, ``nep4``,
``nep4_zbl``, ...). The file *name* decides nothing: ``nep_model.ckpt`` is a checkpoint and
``potential.txt`` may be a nep.txt. :func:`load_model_file` is what ``MLIPCalculator.from_file``,
``mlip-eval``, ``mlip-export``, ``mlip-fim`` and ``mlip-moe`` load models with.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

import torch

from mlip_plugins.checkpoint import NOT_A_MODEL_FILE, CheckpointError, ModelFileNotFoundError, load_potential

ZIP_MAGIC = b"PK\x03\x04"
_LEGACY_PICKLE = re.compile(rb"\A\x80[\x02-\x05]")
_NEP_HEADER = re.compile(rb"\A\s*nep\d+(_\w+)?\s")


def model_file_format(path: str | os.PathLike) -> Literal["torch", "nep"]:
    """``"torch"`` (checkpoint or exported model) or ``"nep"`` (GPUMD nep.txt), from the first bytes."""
    path = Path(path)
    if not path.exists():
        raise ModelFileNotFoundError(f"{path}: model file not found")
    if path.is_dir():
        raise CheckpointError(f"{NOT_A_MODEL_FILE}: {path} (a directory)")
    with open(path, "rb") as handle:
        head = handle.read(256)
    if not head:
        raise CheckpointError(f"{NOT_A_MODEL_FILE}: {path} (the file is empty)")
    if head.startswith(ZIP_MAGIC) or _LEGACY_PICKLE.match(head):
        return "torch"
    if _NEP_HEADER.match(head + b"\n"):
        return "nep"
    raise CheckpointError(f"{NOT_A_MODEL_FILE}: {path} (neither a torch file nor a text file starting with 'nep3'/'nep4')")


def load_model_file(path: str | os.PathLike, map_location: str | torch.device = "cpu", use_ema: bool = True,
                    trusted: bool | None = None):
    """A ``Potential`` from a training checkpoint, an exported model or a nep.txt (float64).

    ``use_ema``, ``trusted``: see :func:`mlip_plugins.checkpoint.load_potential`.
    """
    if model_file_format(path) == "nep":
        from mlip_plugins.nep.nep_txt import load_nep_potential

        return load_nep_potential(path)
    return load_potential(path, map_location=map_location, use_ema=use_ema, trusted=trusted)
