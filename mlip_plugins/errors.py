"""The project's own error base class.

Every error a user can fix from its message alone (bad input file, bad config value, missing
plugin, unknown element, ...) derives from :class:`MLIPError`. The command-line tools turn an
``MLIPError`` into one line on stderr and exit status 2; any other exception is an internal bug
and keeps its traceback. Subclasses also derive from the builtin they specialise (``ValueError``,
``LookupError``, ...) so that callers catching those keep working.
"""

from __future__ import annotations


class MLIPError(Exception):
    """A user-fixable error: its message names the file, structure/config path and field."""


#: exit status of a command that stopped on a user-fixable error
USER_ERROR_EXIT_STATUS = 2
