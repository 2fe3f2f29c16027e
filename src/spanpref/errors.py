"""The one error family users see.

`spanpref` (the command) prints a `SpanprefError` as one line and exits with code 2; anything else is a bug or an
environment problem and keeps its traceback. Library code raises these for mistakes a user can fix: a bad option,
a file that is not there, a record that breaks the data contract, a stage with nothing to work on. The subclasses
also derive from the builtin a caller would expect (`ValueError`, `FileNotFoundError`), so `except ValueError`
keeps working.
"""

from __future__ import annotations


class SpanprefError(Exception):
    """A mistake the user can fix; its message says what is wrong and where."""


class UsageError(SpanprefError, ValueError):
    """An option, a recipe or a config file asks for something that cannot be done."""


class InputError(SpanprefError, ValueError):
    """Input data (a file, a record, a model's or judge's reply handed in by the user) is not what it should be."""


class MissingInputError(SpanprefError, FileNotFoundError):
    """A file, folder or config the command needs is not there."""
