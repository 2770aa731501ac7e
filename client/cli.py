"""``sangsaeng client``: a supplier site's commands.

    sangsaeng client validate --data EXPORT.csv --task TASK   check an export against a task's schema
    sangsaeng client enrol --portal URL --invite TOKEN         create the site's key pair, register it
    sangsaeng client start --superlink HOST:PORT ...            join the network (this site's SuperNode)
    sangsaeng client pull-model / predict                       fetch a published model, score local data

``enroll`` (the American spelling this command had first) still works, hidden from the help.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from client import node, portal_commands
from models.errors import SangsaengError
from sangsaeng.console import fail

__all__ = ["app"]

app = typer.Typer(help="Supplier site commands.", no_args_is_help=True)
app.command("enrol")(portal_commands.enroll_command)
app.command("enroll", hidden=True)(portal_commands.enroll_command)  # old scripts; users read "enrol"
app.command("start")(node.start_command)
app.command("pull-model")(portal_commands.pull_model_command)
app.command("predict")(portal_commands.predict_command)


@app.command("validate")
def validate(
    data: Annotated[Path, typer.Option(help="The site's CSV or Parquet export.")],
    task: Annotated[str, typer.Option(help="Built-in task name or task-spec TOML file.")],
) -> None:
    """Check a site's export against a task's schema before joining a federation."""
    from models.schema import load_site_data
    from models.tasks import get_task

    try:
        spec = get_task(task)
        frame = load_site_data(data, spec)
    except SangsaengError as exc:
        fail(exc)
    positives = f", {int(frame[spec.label].sum())} positive label(s)" if spec.kind == "binary" else ""
    typer.echo(f"ok: {data}: {len(frame)} rows fit task '{spec.name}'{positives}")
