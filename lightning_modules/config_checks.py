"""Check a config section against the signature of what it configures, before calling it.

``+trainer.foo=1`` or ``trainer.max_epochs=abc`` would otherwise surface as a TypeError deep
inside Lightning (or, for a wrong type, only when the value is first used). These checks turn
them into a :class:`~mlip_plugins.models.builder.ConfigError` naming the config key, with the
closest known key for a typo.
"""

from __future__ import annotations

import difflib
import inspect
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from mlip_plugins.models.builder import ConfigError


def accepted_keywords(target: Callable) -> set[str] | None:
    """Keyword names ``target`` takes, or None when it takes ``**kwargs`` (anything goes)."""
    params = inspect.signature(target).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return None
    return {name for name, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def check_keywords(target: Callable, values: Mapping[str, Any], group: str, exclude: Iterable[str] = ()) -> None:
    """Raise ConfigError for a key of ``values`` that ``target`` does not accept.

    ``exclude``: parameters the caller passes itself (not settable from this config group).
    """
    exclude = set(exclude)
    known = accepted_keywords(target)
    if known is None:
        return
    known -= exclude
    for key in values:
        if key in exclude:
            raise ConfigError(f"{group}.{key}: set by mlip-train itself, not from the config")
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            listing = ", ".join(sorted(known)) if len(known) <= 20 else f"see the arguments of {getattr(target, '__qualname__', target)}"
            hint = f"; did you mean {group}.{close[0]}?" if close else f"; known: {listing}"
            raise ConfigError(f"{group}.{key}: not an option of {getattr(target, '__qualname__', target)}{hint}")


def _matches(hint: Any, value: Any) -> bool | None:
    """Whether ``value`` fits a simple type hint; None where the hint is not simple enough to tell."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        results = [_matches(arg, value) for arg in typing.get_args(hint)]
        return True if True in results else (False if all(r is False for r in results) else None)
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    return None


def check_types(target: Callable, values: Mapping[str, Any], group: str) -> None:
    """Raise ConfigError for a value whose type contradicts ``target``'s annotation (simple
    hints only: int, float, bool, str, None, Literal and their unions)."""
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # noqa: BLE001 - unresolvable annotations: nothing to check against
        return
    for key, value in values.items():
        if key in hints and _matches(hints[key], value) is False:
            raise ConfigError(f"{group}.{key}: {value!r} is not a valid value (expected {_describe(hints[key])})")


def _describe(hint: Any) -> str:
    return str(hint).replace("typing.", "").replace("NoneType", "null")


#: Trainer arguments mlip-train passes itself (``trainer.<key>`` cannot set them)
TRAINER_MANAGED = ("callbacks", "logger", "default_root_dir", "inference_mode", "plugins")


def check_trainer_config(trainer_cfg: Mapping[str, Any]) -> None:
    """Keys, simple value types and the accelerator of the ``trainer`` section."""
    import lightning as L
    import torch

    check_keywords(L.Trainer, trainer_cfg, "trainer", exclude=TRAINER_MANAGED)
    check_types(L.Trainer.__init__, trainer_cfg, "trainer")
    accelerator = str(trainer_cfg.get("accelerator", "auto")).lower()
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.accelerator={accelerator}: no CUDA GPU is available on this machine; "
                          "use trainer=default (accelerator auto) or trainer.accelerator=cpu")


#: config groups whose default a user may want to switch off entirely
OPTIONAL_GROUPS = ("logger", "callbacks")


def check_group_overrides(args: Iterable[str]) -> None:
    """``logger=null`` is refused by Hydra with a traceback (a config group cannot be null);
    say what does work instead."""
    for arg in args:
        key, sep, value = arg.partition("=")
        if sep and key.lstrip("+") in OPTIONAL_GROUPS and value.strip().lower() in ("null", "none", "~"):
            group = key.lstrip("+")
            raise ConfigError(f"{arg}: a config group cannot be null; use {group}=[] to train without any {group}")
