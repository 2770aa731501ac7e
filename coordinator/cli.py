"""The coordinator's commands that run a whole federation on one machine (mounted at the top by `sangsaeng.cli`).

sangsaeng demo       the whole network on the embedded sample data, on one machine
sangsaeng simulate   the same on any CSV/Parquet file, split into sites by a column
sangsaeng tasks      the built-in value-chain tasks and their reference figures

The root command line is `sangsaeng.cli`; `main` and `app` here are aliases of it, kept so that
an installed ``sangsaeng`` script naming ``coordinator.cli:main`` and ``python -m coordinator.cli``
keep working.
"""

from __future__ import annotations

from sangsaeng import airgap

airgap.apply()  # before Flower is imported

from pathlib import Path  # noqa: E402
from typing import Annotated, Any  # noqa: E402

import typer  # noqa: E402
from rich.console import Console  # noqa: E402

from coordinator.config import FederationConfig  # noqa: E402
from coordinator.options import TrainingOptions, training_options  # noqa: E402
from models.tasks import TaskSpec, builtin_tasks, get_task, load_task_spec  # noqa: E402
from sangsaeng.console import fail  # noqa: E402
from sangsaeng.errors import SangsaengError  # noqa: E402

__all__ = ["commands", "main"]

commands = typer.Typer(help="Federations on one machine.")
console = Console()


def _run(spec: TaskSpec, frame_source: Path, split_column: str, config: FederationConfig) -> None:
    import pandas as pd

    from coordinator.display import RichObserver
    from coordinator.report import (
        contribution_table,
        membership_line,
        operating_point_table,
        privacy_table,
        results_table,
    )
    from coordinator.simulation import run_experiment, write_site_files
    from models.schema import read_table
    from sangsaeng.extras import require

    require("coordinator", "a federation on one machine (Flower's simulation engine, the results plot)",
            modules=["ray", "matplotlib"])  # fmt: skip
    frame: pd.DataFrame = read_table(frame_source)
    if split_column not in frame.columns:
        fail(SangsaengError(f"{frame_source}: split column '{split_column}' is not in the data"))
    site_files, dropped = write_site_files(frame, split_column, config.out_dir, spec=spec, base_dir=frame_source.parent)
    console.print(
        f"[bold]{spec.name}[/]: {len(site_files)} supplier sites from {frame_source.name} split by "
        f"'{split_column}' ({', '.join(site_files)}); {config.num_rounds} rounds of {config.strategy}"
    )
    for name, rows in dropped.items():
        console.print(f"[yellow]dropped[/] group '{name}': only {rows} row(s)")
    with RichObserver(config.num_rounds, spec.primary_metric, console=console) as observer:
        results = run_experiment(spec, site_files, config, observer=observer, dropped=dropped)
    for site, problem in results["excluded_sites"].items():
        console.print(f"[yellow]site {site} left out:[/] {problem}")
    console.print(results_table(results))
    if results.get("contribution"):
        console.print(contribution_table(results["contribution"]))
    if results.get("operating_point"):
        console.print(operating_point_table(results["operating_point"]))
    console.print(f"results: {config.out_dir / 'results.json'}   plot: {results['plot']}")
    if results.get("privacy"):
        console.print(privacy_table(results["privacy"]))
        console.print(f"privacy report: {config.out_dir / 'privacy' / 'report.json'} (signed; report.html for people)")
    line = membership_line(results)
    if line:
        console.print(line, markup=False)


def _config(spec: TaskSpec, out: Path, options: TrainingOptions) -> FederationConfig:
    try:
        return options.federation_config(spec, out_dir=out)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


@commands.command()
@training_options
def demo(
    task: Annotated[str, typer.Option(help="Built-in task.")] = "injection-molding-quality",
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("sangsaeng-demo"),
    *,
    options: TrainingOptions,
) -> None:
    """Train a shared model across supplier sites built from the embedded sample data."""
    from models.datasets import SAMPLES, demo_data

    try:
        if task not in SAMPLES:
            raise SangsaengError(f"unknown demo task '{task}' (choose from {sorted(SAMPLES)})")
        spec = get_task(task)
        config = _config(spec, out, options)
        _run(spec, demo_data(task, out), SAMPLES[task].split_by, config)
    except SangsaengError as exc:
        fail(exc)


@commands.command()
@training_options
def simulate(
    data: Annotated[Path, typer.Option(help="CSV or Parquet file with every site's rows.")],
    task_spec: Annotated[Path, typer.Option(help="Task-spec TOML file.")],
    split_by: Annotated[str, typer.Option(help="Column whose values name the supplier sites.")],
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("sangsaeng-run"),
    *,
    options: TrainingOptions,
) -> None:
    """Simulate a federation on any table, one site per value of --split-by."""
    try:
        spec = load_task_spec(task_spec)
        config = _config(spec, out, options)
        _run(spec, data, split_by, config)
    except SangsaengError as exc:
        fail(exc)


def reference_line(name: str, reference: dict[str, Any]) -> str | None:
    """The reference figures `bench/zoo.py` measured for task `name` (models/reference.json), as one line."""
    figures = reference.get("tasks", {}).get(name)
    if not figures:
        return None
    seeds = figures.get("seeds", reference.get("seeds", []))
    parts = [
        f"federated {figures['federated']:.3f}",
        f"centralised {figures['centralized']:.3f}",
        f"local-only mean {figures['local_only_mean']:.3f}",
        f"DP eps {reference.get('dp_epsilon', 3):g} {figures['dp_epsilon_3']:.3f}",
    ]
    if "per_row_federated" in figures:
        parts.append(f"per-row federated {figures['per_row_federated']:.3f}")
    better = "higher" if figures["higher_is_better"] else "lower"
    runs = f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''}"
    return (
        f"reference (BENCHMARKS.md, {runs}, {reference.get('date', '?')}; {figures['metric']}, "
        f"{better} is better): {', '.join(parts)}"
    )


def load_reference() -> dict[str, Any]:
    """The built-in tasks' reference figures (`models/reference.json`, written by `bench/zoo.py`); {} if absent."""
    import json
    from importlib import resources

    path = resources.files("models") / "reference.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    return data if isinstance(data, dict) else {}


@commands.command("tasks")
def list_tasks() -> None:
    """List the built-in value-chain tasks: kind, label, sample split, metric and the reference figures."""
    from rich.markup import escape

    from models.datasets import SAMPLES

    reference = load_reference()
    for spec in builtin_tasks().values():
        split = f"split by '{SAMPLES[spec.name].split_by}'" if spec.name in SAMPLES else "no sample data"
        sequence = f", windows of {spec.sequence.window} rows per '{spec.sequence.group}'" if spec.sequence else ""
        if spec.image is not None:
            height, width = spec.image.size
            inputs = f"{height}x{width} images, {spec.image.channels} channel(s)"
        else:
            inputs = f"{len(spec.features)} features"
        summary = f"{spec.kind}, label '{spec.label}', {inputs}{sequence}, {split}, metric {spec.primary_metric}"
        # Descriptions hold brackets (`pip install "sangsaeng[vision]"`): text, not console markup.
        console.print(f"[bold]{escape(spec.name)}[/] ({escape(summary)}): {escape(spec.description)}")
        line = reference_line(spec.name, reference)
        if line:
            console.print(f"  {line}", highlight=False)


def main() -> None:
    """Alias of `sangsaeng.cli.main`: the ``sangsaeng`` script installed before the root moved names this one."""
    from sangsaeng.cli import main as root

    root()


def __getattr__(name: str) -> Any:
    # `from coordinator.cli import app`: the root command line, as before it moved to sangsaeng.cli.
    if name == "app":
        from sangsaeng.cli import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    main()
