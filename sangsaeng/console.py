"""What every ``sangsaeng`` command does when it gives up: one line on stderr, exit code 2."""

from __future__ import annotations

from typing import NoReturn

import typer

__all__ = ["fail", "EXIT_USAGE"]

EXIT_USAGE = 2  # click's own code for a usage error: scripts see one code for "you asked for something wrong"


def fail(problem: Exception | str) -> NoReturn:
    """Print ``error: <problem>`` to stderr and end the command with exit code 2.

    The message is printed as it is (no rich markup), so a column such as ``Torque [Nm]``
    keeps its brackets.
    """
    typer.secho(f"error: {problem}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=EXIT_USAGE)
