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
    from coordinator.simulation import write_site_files
    from models.schema import read_table

    _require_engine()
    frame = read_table(frame_source)
    if split_column not in frame.columns:
        fail(SangsaengError(f"{frame_source}: split column '{split_column}' is not in the data"))
    site_files, dropped = write_site_files(frame, split_column, config.out_dir, spec=spec, base_dir=frame_source.parent)
    console.print(
        f"[bold]{spec.name}[/]: {len(site_files)} supplier sites from {frame_source.name} split by "
        f"'{split_column}' ({_site_list(list(site_files))}); {config.num_rounds} rounds of {config.strategy}"
    )
    for name, rows in dropped.items():
        console.print(f"[yellow]dropped[/] group '{name}': only {rows} row(s)")
    _federate(spec, site_files, dropped, config)


def _run_dirichlet(
    spec: TaskSpec, frame_source: Path, config: FederationConfig, *, sites: int, alpha: float, rows_per_site: int | None
) -> None:
    import numpy as np

    from models.dirichlet import write_dirichlet_sites
    from models.schema import read_table

    _require_engine()
    frame = read_table(frame_source)
    if spec.label not in frame.columns:
        fail(SangsaengError(f"{frame_source}: a Dirichlet split needs the label column '{spec.label}' in the data"))
    with console.status(f"writing {sites} site files"):
        site_files, plan = write_dirichlet_sites(
            frame, spec, config.out_dir, n_sites=sites, alpha=alpha, seed=config.seed, rows_per_site=rows_per_site
        )
    q = np.quantile(plan.sizes, [0.0, 0.5, 1.0])
    console.print(
        f"[bold]{spec.name}[/]: {sites} supplier sites drawn from {frame_source.name} ({len(frame)} rows, resampled "
        f"with replacement to {int(plan.sizes.sum())}) by a Dirichlet split, alpha {alpha:g}, seed {config.seed}; "
        f"rows per site min {q[0]:.0f} / median {q[1]:.0f} / max {q[2]:.0f}; {config.num_rounds} rounds of "
        f"{config.strategy}, {config.fraction_fit:.0%} of sites training and {config.fraction_evaluate:.0%} "
        "evaluating per round"
    )
    _federate(spec, site_files, {}, config)


def _site_list(names: list[str], shown: int = 12) -> str:
    """Site names for one line: all of a small federation, the first few and a count of a large one."""
    if len(names) <= shown:
        return ", ".join(names)
    return f"{', '.join(names[:shown])} and {len(names) - shown} more"


def _require_engine() -> None:
    from sangsaeng.extras import require

    require("coordinator", "a federation on one machine (Flower's simulation engine, the results plot)",
            modules=["ray", "matplotlib"])  # fmt: skip


def _federate(spec: TaskSpec, site_files: dict[str, Path], dropped: dict[str, int], config: FederationConfig) -> None:
    from coordinator.display import RichObserver
    from coordinator.report import (
        SITE_ROWS,
        contribution_table,
        membership_line,
        operating_point_table,
        privacy_table,
        results_table,
    )
    from coordinator.simulation import run_experiment

    with RichObserver(config.num_rounds, spec.primary_metric, console=console) as observer:
        results = run_experiment(spec, site_files, config, observer=observer, dropped=dropped)
    excluded = list(results["excluded_sites"].items())
    for site, problem in excluded[:10]:
        console.print(f"[yellow]site {site} left out:[/] {problem}")
    if len(excluded) > 10:
        console.print(f"[yellow]and {len(excluded) - 10} more sites left out[/] (results.json: excluded_sites)")
    console.print(results_table(results))
    if results.get("contribution") and len(results["contribution"].get("per_site", {})) <= SITE_ROWS:
        console.print(contribution_table(results["contribution"]))
    elif results.get("contribution"):  # a row per site would be thousands of lines
        console.print(f"contribution of {len(results['contribution']['per_site'])} sites: results.json (contribution)")
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
    data: Annotated[
        Path | None,
        typer.Option(help="CSV or Parquet file with every site's rows (default with --sites: --task's sample)."),
    ] = None,
    task_spec: Annotated[Path | None, typer.Option(help="Task-spec TOML file (or --task).")] = None,
    split_by: Annotated[str | None, typer.Option(help="Column whose values name the supplier sites.")] = None,
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("sangsaeng-run"),
    task: Annotated[
        str | None,
        typer.Option(help="Built-in task, instead of --task-spec (with --sites: its sample data by default)."),
    ] = None,
    sites: Annotated[
        int | None,
        typer.Option(min=1, max=100_000, help="Draw this many synthetic sites by a Dirichlet split (no --split-by)."),
    ] = None,
    dirichlet: Annotated[
        float,
        typer.Option(min=1e-3, help="With --sites: the Dirichlet concentration; small = skewed sizes and labels."),
    ] = 0.5,
    rows_per_site: Annotated[
        int | None, typer.Option(min=30, help="With --sites: mean rows per site (rows are resampled with replacement).")
    ] = None,
    *,
    options: TrainingOptions,
) -> None:
    """Simulate a federation on a table: one site per value of --split-by, or --sites N by a Dirichlet split."""
    try:
        if task is not None and task_spec is None:
            spec = get_task(task)
        elif task_spec is not None and task is None:
            spec = load_task_spec(task_spec)
        else:
            raise SangsaengError("give one of --task (a built-in task) or --task-spec (a TOML file)")
        config = _config(spec, out, options)
        if sites is not None:
            if split_by is not None:
                raise SangsaengError("--sites draws the sites by a Dirichlet split: leave out --split-by")
            _run_dirichlet(spec, data or _sample_of(spec.name), config, sites=sites, alpha=dirichlet,
                           rows_per_site=rows_per_site)  # fmt: skip
        else:
            if data is None or split_by is None:
                raise SangsaengError("give --data and --split-by, or --sites N for a Dirichlet split")
            _run(spec, data, split_by, config)
    except SangsaengError as exc:
        fail(exc)


def _sample_of(task: str) -> Path:
    from models.datasets import SAMPLES, sample_path

    if task not in SAMPLES or SAMPLES[task].external:
        raise SangsaengError(f"task '{task}' has no embedded sample table: give --data")
    return sample_path(task)


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
