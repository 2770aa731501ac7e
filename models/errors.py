"""Errors raised by the model zoo, with messages that name the file, column and problem.

Exception tree::

    SangsaengError (sangsaeng.errors: the root of every tree)
     ├── TaskSpecError      a task definition is unusable; refused before any training
     ├── SiteDataError      a site's data file does not match its task's schema
     └── MissingExtraError  an optional extra (`pip install "sangsaeng[vision]"`) is needed
                            (defined in sangsaeng.errors: every role raises it)
"""

from __future__ import annotations

from pathlib import Path

from sangsaeng.errors import MissingExtraError, SangsaengError

__all__ = ["MissingExtraError", "SangsaengError", "SiteDataError", "TaskSpecError"]


class TaskSpecError(SangsaengError):
    """A task specification is invalid (unknown kind, leak column as feature, ...)."""


class SiteDataError(SangsaengError):
    """A site's data file is missing, unreadable or does not fit the task schema.

    >>> str(SiteDataError("line1.csv", "problem is here", column="Torque"))
    "line1.csv: column 'Torque': problem is here"
    """

    def __init__(self, source: str | Path, problem: str, *, column: str | None = None):
        self.source = str(source)
        self.column = column
        self.problem = problem
        where = f"{self.source}: column '{column}'" if column else self.source
        super().__init__(f"{where}: {problem}")

    def __reduce__(self):  # keep the keyword argument when pickled across processes
        return (_rebuild_site_data_error, (self.source, self.problem, self.column))


def _rebuild_site_data_error(source: str, problem: str, column: str | None) -> SiteDataError:
    return SiteDataError(source, problem, column=column)
