"""``sangsaeng client``: a supplier site's commands.

    sangsaeng client validate --data EXPORT.csv --task TASK   check an export against a task's schema
    sangsaeng client enrol --portal URL --invite TOKEN         create the site's key pair, register it
    sangsaeng client start --superlink HOST:PORT ...            join the network (this site's SuperNode)
    sangsaeng client pull-model / predict                       fetch a published model, score local data

``enroll`` (the American spelling this command had first) still works, hidden from the help.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from client import node, portal_commands
from models.errors import SangsaengError
from sangsaeng.console import fail

if TYPE_CHECKING:
    import pandas as pd

    from models.tasks import TaskSpec

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
    """Check a site's export against a task's schema before joining a federation.

    Binary tasks print their positives; multiclass tasks their rows per class (naming a declared
    class this site lacks: fine, sites differ); sequence tasks their groups, rows and windows;
    image tasks the images skipped (the first ten named) and those whose channels were converted.
    """
    from models.images import IMAGE_REPORT
    from models.schema import load_site_data
    from models.tasks import get_task

    try:
        spec = get_task(task)
        frame = load_site_data(data, spec)
    except SangsaengError as exc:
        fail(exc)
    positives = f", {int(frame[spec.label].sum())} positive label(s)" if spec.kind == "binary" else ""
    typer.echo(f"ok: {data}: {len(frame)} rows fit task '{spec.name}'{positives}")
    if spec.kind == "multiclass":
        typer.echo(_class_counts(frame[spec.label], spec.classes))
    if spec.sequence is not None:
        typer.echo(_window_counts(frame, spec))
    if spec.image is not None:
        for line in _image_lines(frame.attrs.get(IMAGE_REPORT), spec.image.channels):
            typer.echo(line)


def _image_lines(report: dict | None, channels: int) -> list[str]:
    """An image manifest's report: images read, bad images skipped (first ten named), channel conversions."""
    from models.images import describe_conversions

    if not report:
        return []
    lines = [f"images: {report['images']} in the manifest, {report['skipped']} skipped"]
    if report["skipped"]:
        shown = report["first_skipped"]
        more = f" (first {len(shown)})" if report["skipped"] > len(shown) else ""
        lines.append(f"skipped{more}:")
        lines.extend(f"  {problem}" for problem in shown)
    if report.get("converted"):
        lines.append(describe_conversions(report["converted"], channels))
    return lines


def _class_counts(labels: pd.Series, declared: tuple[str, ...]) -> str:
    """Rows per class, declared classes first (in their order), and the declared classes absent here."""
    counts = labels.astype(str).value_counts()
    names = [*declared, *sorted(c for c in counts.index if c not in declared)]
    line = "classes: " + ", ".join(f"{c} {int(counts.get(c, 0))}" for c in names)
    absent = [c for c in declared if c not in counts.index]
    if absent:
        line += f"; no row of class(es) {absent} at this site (fine: the federation's other sites may have them)"
    return line


def _window_counts(frame: pd.DataFrame, spec: TaskSpec) -> str:
    """Groups, rows and windows of a sequence task's validated rows, and what ``short = "drop"`` leaves out."""
    from models.sequence import plan_windows

    sequence = spec.sequence
    assert sequence is not None
    plan = plan_windows(frame[sequence.group].to_numpy(), frame[sequence.order].to_numpy(), sequence)
    line = (
        f"sequence: {len(plan.lengths)} group(s) of '{sequence.group}', {len(frame)} rows, {plan.n_windows} "
        f'window(s) of {sequence.window} rows (stride {sequence.stride}, short = "{sequence.short}")'
    )
    if sequence.short == "drop":
        line += (
            f"; dropped: {plan.dropped_groups} group(s) shorter than the window, {plan.dropped_rows} row(s) "
            "ending no full window"
        )
    return line
