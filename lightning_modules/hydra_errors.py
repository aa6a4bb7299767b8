"""One-line messages for Hydra's composition errors (``mlip-train``'s bad overrides).

Hydra reports a misspelt group option with the whole config search path (17-24 lines) and an
unknown key with a hint only for appending. :func:`explain` turns each into one line that
names the override and the closest known options or keys (``difflib``), so that ``mlip-train``
can print it and exit with status 2, like every other input error.
"""

from __future__ import annotations

import difflib
import re

from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException

#: the Hydra errors that are the user's overrides (or config files) being wrong
COMPOSITION_ERRORS = (ConfigCompositionException, OverrideParseException)


def _suggest(word: str, known: list[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(word, known, n=3, cutoff=0.6)
    return f"did you mean {' or '.join(prefix + c for c in close)}?" if close else ""


def group_options(group: str) -> list[str]:
    """The options of config group ``group`` on mlip-train's search path (plugins' configs included)."""
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module("mlip_plugins.conf", version_base=None):
        return list(GlobalHydra.instance().config_loader().get_group_options(group))


def _missing_option(path: str, options: list[str] | None, fallback: str) -> str:
    group, _, option = path.rpartition("/")
    options = [str(o) for o in (options or [])] or (group_options(group) if group else [])
    if not group or not options:  # a missing primary config or a search-path problem
        return fallback
    hint = _suggest(option, options, f"{group}=")
    return f"{group}={option}: no such option in config group '{group}'{'; ' + hint if hint else ''} (options: {', '.join(options)})"


def _unknown_key(message: str, cause: BaseException | None) -> str | None:
    match = re.search(r"Could not override '([^']+)'", message)
    if not match:
        return None
    full_key = match.group(1)
    parent, _, key = full_key.rpartition(".")
    node = getattr(cause, "parent_node", None)
    known = [str(k) for k in node.keys()] if node is not None and hasattr(node, "keys") else []
    hint = _suggest(key, known, f"{parent}." if parent else "")
    add = f"+{full_key}=..."
    return f"{full_key}: no such key{'; ' + hint if hint else ''} (to add a key the config does not declare: {add})"


def explain(exc: BaseException) -> str:
    """One line saying what is wrong with the overrides behind ``exc`` (a Hydra composition error)."""
    message = str(exc).strip()
    if isinstance(exc, MissingConfigException):
        return _missing_option(exc.missing_cfg_file or "", exc.options, message.splitlines()[0])
    not_loaded = re.search(r"Could not load '([^']+)'", message)  # an option inside a list: logger=[csv,tensorbord]
    if not_loaded:
        return _missing_option(not_loaded.group(1), None, message.splitlines()[0])
    if isinstance(exc, OverrideParseException):
        override = " ".join(exc.override.split())
        why = "an override is one line (join the lines)" if "\n" in exc.override else exc.message.strip().splitlines()[0]
        return f"cannot parse the override '{override[:120]}': {why}"
    unknown = _unknown_key(message, exc.__cause__)
    if unknown:
        return unknown
    appended = re.search(r"An item is already at '([^']+)'", message)
    if appended:
        return f"+{appended.group(1)}: the key already exists; set it without the '+' ({appended.group(1)}=...)"
    return " ".join(line.strip() for line in message.splitlines() if line.strip())
