"""Errors that mean "the user's input is wrong", as opposed to a bug in vrl.

``python -m vrl`` prints these as one line (``[vrl] config error: ...`` / ``[vrl] data error: ...``) and exits
with status 2, before anything heavy where possible; the message names the file, row, field or config key and
says what to change. Everything else is a bug or an environment failure and keeps its traceback.
"""

from __future__ import annotations


class UserInputError(ValueError):
    """Bad input from the user: a config key, a data row, a path. The message is the whole report."""

    kind = "input"


class ConfigError(UserInputError):
    """A config key has an unknown name, a wrong type or an invalid value; the message names the key."""

    kind = "config"


class DataError(UserInputError):
    """A data file or row cannot be used; the message names the file, the row and the field."""

    kind = "data"
