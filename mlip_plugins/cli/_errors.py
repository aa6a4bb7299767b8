"""The command-line tools' error contract, in one place.

A user-fixable error (:class:`mlip_plugins.errors.MLIPError` and its subclasses) becomes one
line on stderr, ``mlip-<name>: error: <message>``, and exit status 2. Anything else is an
internal bug and keeps its traceback. ``--debug`` on the command line (where the tool has it)
or ``MLIP_DEBUG=1`` in the environment re-raises user errors too, with their traceback.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Sequence
from typing import TypeVar

from mlip_plugins.errors import USER_ERROR_EXIT_STATUS, MLIPError

DEBUG_ENV = "MLIP_DEBUG"
Main = TypeVar("Main", bound=Callable[..., "int | None"])


class UsageError(MLIPError, ValueError):
    """A command-line argument that cannot work: an output onto the input, in a missing folder,
    or that cannot be written (a full disk)."""


def debug_requested(argv: Sequence[str] | None) -> bool:
    """Whether ``--debug`` is among the arguments or ``MLIP_DEBUG`` is set (to anything but 0)."""
    arguments = sys.argv[1:] if argv is None else argv
    return "--debug" in arguments or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line: the lines of a multi-line message (a list after a colon,
    such as the install hints of a missing plugin) joined with '; '."""
    lines = [line.strip().removeprefix("- ") for line in str(exc).splitlines() if line.strip()]
    text = ""
    for line in lines:
        text += ("" if not text else " " if text.endswith(":") else "; ") + line
    return text or type(exc).__name__


def cli_main(prog: str) -> Callable[[Main], Main]:
    """Decorate a ``main(argv=None) -> int | None`` so that an ``MLIPError`` prints
    ``<prog>: error: <message>`` and returns exit status 2."""

    def decorate(main: Main) -> Main:
        @functools.wraps(main)
        def wrapper(argv: Sequence[str] | None = None, *args, **kwargs):
            try:
                return main(argv, *args, **kwargs)
            except MLIPError as exc:
                if debug_requested(argv):
                    raise
                print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
                return USER_ERROR_EXIT_STATUS

        return wrapper  # type: ignore[return-value]

    return decorate
