"""The one error hierarchy of the package.

Every problem a user can cause, fix or must know about is a :class:`MantikError`; the CLI prints it
as its :meth:`~MantikError.lines` on stderr and exits 1, never with a traceback. Any other exception is
a bug and keeps its traceback. Each layer raises its own subclass (``SpecError``, ``GitError``,
``TrackingError``, ``BackendError``, ``LockError``, ``StalePlanError``, ``UserError``...), and decisions
read the subclass and its typed fields, never the message.

This module imports nothing, so every layer (and ``validate``/``--help``) can use it.
"""

from __future__ import annotations


class MantikError(Exception):
    """A problem for the user: the message is one line that says what is wrong and, where known, the fix."""

    def lines(self) -> list[str]:
        """What the CLI prints for it, one line each."""
        return [f"Error: {self}"]


class UserError(MantikError):
    """A verb cannot do what it was asked with the arguments or the project as they are."""
