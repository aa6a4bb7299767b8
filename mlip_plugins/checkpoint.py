"""Save and load potentials without unpickling arbitrary objects.

Two file kinds load into a ``Potential``:

* a Lightning training checkpoint (``.ckpt``): the model config lives in
  ``hyper_parameters['model']``, weights under ``state_dict['model.*']`` (or the EMA copy
  ``ema.module.*`` when present);
* an exported model (``.pt``, written by :func:`export_potential`): ``{'format',
  'model_config', 'state_dict', 'metadata'}``.

Both are read with ``torch.load(weights_only=True)``: only tensors and plain containers.
The model config inside may only name registered plugins: a dotted path would import and
call arbitrary code, so it needs ``trusted=True`` (or ``MLIP_PLUGINS_TRUST_MODEL_FILES=1``).
"""

from __future__ import annotations

import contextlib
import os
import re
from importlib import metadata as importlib_metadata
from pathlib import Path

import torch

from mlip_plugins.atomic_files import atomic_torch_save
from mlip_plugins.dtypes import default_dtype
from mlip_plugins.errors import MLIPError

EXPORT_FORMAT = "mlip-plugins/potential-v1"
TRUST_ENV = "MLIP_PLUGINS_TRUST_MODEL_FILES"


class CheckpointError(MLIPError, ValueError):
    """A model file that is not (or no longer) a loadable mlip-plugins checkpoint, exported model or nep.txt."""


class ModelFileNotFoundError(MLIPError, FileNotFoundError):
    """The model file named on the command line or in the API call does not exist."""


#: what the message of a failed load says, never torch's advice to load with weights_only=False
NOT_A_MODEL_FILE = "not a mlip-plugins checkpoint or nep.txt"


def _load_failure(path: Path, exc: BaseException) -> CheckpointError:
    """A one-line error for a failed ``torch.load`` of ``path`` (empty, truncated, random bytes, pickled code)."""
    message = str(exc)
    refused = re.search(r"Unsupported global: GLOBAL (\S+)", message)
    if refused:
        return CheckpointError(f"{path}: not a loadable checkpoint (UnpicklingError: it holds a pickled Python object "
                               f"{refused[1]}, which mlip-plugins never unpickles: model files hold tensors only)")
    if isinstance(exc, EOFError):
        reason = "the file is empty or cut short"
    elif "weights_only" in message or "Weights only" in message:
        reason = "unreadable pickle data"
    else:
        reason = f"corrupt or cut short: {type(exc).__name__}: {message.splitlines()[0][:200] if message else '-'}"
    return CheckpointError(f"{NOT_A_MODEL_FILE}: {path} ({reason})")


def _version() -> str:
    try:
        return importlib_metadata.version("mlip-plugins")
    except importlib_metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


def checkpoint_metadata(potential) -> dict:
    """Provenance saved with every checkpoint: package version and the plugins the model uses."""
    try:
        from mlip_plugins.provenance import model_plugins

        plugins = model_plugins(potential)
    except ImportError:
        plugins = []
    return {"version": _version(), "plugins": plugins, "atomic_numbers": list(potential.atomic_numbers)}


def _check_plugins(meta: dict | None) -> None:
    if not meta or not meta.get("plugins"):
        return
    try:
        from mlip_plugins.provenance import check_plugins_installed
    except ImportError:
        return
    check_plugins_installed(meta["plugins"])


def load_torch_file(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """The dict in a torch file, loaded weights-only; any failure is one :class:`CheckpointError`
    (or :class:`ModelFileNotFoundError`) naming the file."""
    path = Path(path)
    if not path.exists():
        raise ModelFileNotFoundError(f"{path}: checkpoint not found")
    try:
        raw = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - report corrupt or unsafe files clearly
        raise _load_failure(path, exc) from exc
    if not isinstance(raw, dict):
        raise CheckpointError(f"{NOT_A_MODEL_FILE}: {path} (holds a {type(raw).__name__}, not a checkpoint dict)")
    return raw


def split_checkpoint(raw: dict, path: str | os.PathLike = "<checkpoint>", use_ema: bool = True) -> tuple[dict, dict, dict | None]:
    """(model config, model state dict, provenance metadata) from a loaded checkpoint dict."""
    if raw.get("format") == EXPORT_FORMAT:
        return raw["model_config"], raw["state_dict"], raw.get("metadata")
    if "hyper_parameters" in raw and "state_dict" in raw:
        config = raw["hyper_parameters"]["model"]
        state = raw["state_dict"]
        prefix = "ema.module." if use_ema and any(k.startswith("ema.module.") for k in state) else "model."
        weights = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        return config, weights, raw.get("mlip_plugins")
    raise CheckpointError(f"{path}: neither a training checkpoint nor an exported mlip-plugins model")


def load_potential(path: str | os.PathLike, map_location: str | torch.device = "cpu", use_ema: bool = True,
                   trusted: bool | None = None):
    """A ``Potential`` from a training checkpoint or an exported model, in the saved dtype.

    ``trusted`` (default: ``MLIP_PLUGINS_TRUST_MODEL_FILES`` set to 1) allows plugins named by
    dotted path in the file; otherwise only registered plugins are built (no arbitrary code).
    """
    from mlip_plugins import registry
    from mlip_plugins.models.builder import build_potential

    raw = load_torch_file(path, map_location)
    config, weights, meta = split_checkpoint(raw, path, use_ema)
    if trusted is None:
        trusted = os.environ.get(TRUST_ENV, "") not in ("", "0")
    if not trusted:  # provenance records of unregistered classes would import their modules
        unregistered = [r.get("target") or r.get("name") for r in (meta or {}).get("plugins") or [] if not r.get("group")]
        if unregistered:
            raise registry.PluginError(f"{path}: uses unregistered classes {unregistered}; load it with trusted=True "
                                       f"(or {TRUST_ENV}=1) only if you trust where it comes from")
    dtype = next((v.dtype for v in weights.values() if torch.is_floating_point(v)), torch.get_default_dtype())
    with default_dtype(dtype), registry.registered_only(str(path)) if not trusted else contextlib.nullcontext():
        try:
            _check_plugins(meta)
        except registry.PluginError as exc:  # say which file needs the plugin
            raise type(exc)(f"{path}: {exc}") from exc
        potential = build_potential(config)
    potential.load_state_dict(weights, strict=True)
    potential.eval()
    return potential


def export_potential(potential, path: str | os.PathLike) -> Path:
    """Write a self-contained model file (config + weights + provenance), atomically (a failed
    write leaves neither a partial file nor its temporary; the folder must exist)."""
    path = Path(path)
    payload = {
        "format": EXPORT_FORMAT,
        "model_config": potential.model_config(),
        "state_dict": {k: v.detach().cpu() for k, v in potential.state_dict().items()},
        "metadata": checkpoint_metadata(potential),
    }
    return atomic_torch_save(payload, path)
