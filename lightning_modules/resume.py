"""Checks before resuming from ``ckpt_path``: the file is a readable training checkpoint, and
the model it holds is the model the config describes.

Lightning loads a checkpoint whose weights fit the new model even when ``model.cutoff`` (or
any other key that changes what the weights mean, but not their shapes) differs, and trains
on silently. So the resumed ``model`` section is compared key by key with the checkpoint's
saved ``hyper_parameters['model']`` and a mismatch is refused, listing the differing keys.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from mlip_plugins.models.builder import ConfigError

#: how many differing keys the error message lists
MAX_LISTED = 6


def read_training_checkpoint(path: str | os.PathLike) -> dict:
    """The checkpoint dict at ``path`` (tensors and plain containers only), or a ConfigError
    saying why it cannot be resumed from."""
    where = f"ckpt_path={path}"
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{where}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise ConfigError(f"{where}: the file is empty (an interrupted copy?); use the run's checkpoints/last.ckpt")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch's message advises weights_only=False: never pass it on
        with open(path, "rb") as handle:
            is_zip = handle.read(4) == b"PK\x03\x04"  # torch's file format is a zip archive
        reason = ("it holds objects other than tensors and plain containers, refused for safety"
                  if is_zip and isinstance(exc, pickle.UnpicklingError)
                  else "not a PyTorch checkpoint (corrupt, truncated or another kind of file)")
        raise ConfigError(f"{where}: cannot resume: {reason}") from None
    if not isinstance(raw, Mapping) or "state_dict" not in raw or "hyper_parameters" not in raw:
        kind = "an exported model (mlip-export), not a training checkpoint" if isinstance(raw, Mapping) and "model_config" in raw \
            else "not an mlip-train checkpoint"
        raise ConfigError(f"{where}: cannot resume: {kind}; resume from a run's checkpoints/last.ckpt")
    return raw


def _flatten(value: Any, path: str, out: dict[str, Any]) -> dict[str, Any]:
    if isinstance(value, Mapping):
        for key, item in value.items():
            _flatten(item, f"{path}.{key}", out)
        if not value:
            out[path] = {}
    elif isinstance(value, (list, tuple)) and any(isinstance(item, (Mapping, list, tuple)) for item in value):
        for k, item in enumerate(value):
            _flatten(item, f"{path}[{k}]", out)
        out[f"{path}.__len__"] = len(value)
    else:
        out[path] = list(value) if isinstance(value, tuple) else value
    return out


def model_differences(saved: Mapping, current: Mapping) -> list[str]:
    """``model.<key> (checkpoint X, now Y)`` for every key whose value differs."""
    before, now = _flatten(saved, "model", {}), _flatten(current, "model", {})
    missing = object()
    changes = []
    for key in sorted(set(before) | set(now)):
        a, b = before.get(key, missing), now.get(key, missing)
        if a != b:
            show = lambda v: "unset" if v is missing else repr(v)  # noqa: E731
            changes.append(f"{key.removesuffix('.__len__')} (checkpoint {show(a)}, now {show(b)})")
    return changes


def check_resume(ckpt_path: str | os.PathLike, model_cfg: Mapping) -> None:
    """Refuse to resume from ``ckpt_path`` unless it is a readable training checkpoint whose
    model config equals ``model_cfg`` (the resolved ``model`` section, elements as numbers)."""
    raw = read_training_checkpoint(ckpt_path)
    saved = raw["hyper_parameters"].get("model")
    if not isinstance(saved, Mapping):
        raise ConfigError(f"ckpt_path={ckpt_path}: cannot resume: the checkpoint holds no model config")
    changes = model_differences(saved, model_cfg)
    if changes:
        listed = "; ".join(changes[:MAX_LISTED]) + (f"; and {len(changes) - MAX_LISTED} more" if len(changes) > MAX_LISTED else "")
        raise ConfigError(
            f"ckpt_path={ckpt_path}: the model config differs from the checkpoint's: {listed}; resume with the "
            "checkpoint's model settings (its run's config.yaml), or drop ckpt_path to train a new model"
        )
