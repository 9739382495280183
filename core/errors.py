"""The one exception type users see.

Every stage raises :class:`UserError` (or a subclass) for problems the user can fix: a missing or
corrupt file, a wrong schema, a NaN, an unknown method.  Entry points in ``pipelines/`` catch it,
print its message on one line and exit non-zero; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input, with a message that names the problem and the fix."""

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(problem if fix is None else f"{problem} Fix: {fix}")


class DataError(UserError):
    """A dataset file or row that does not meet its contract (see :mod:`data.schemas`)."""
