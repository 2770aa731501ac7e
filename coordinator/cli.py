"""The ``sangsaeng`` command line, with sub-commands per role.

sangsaeng demo       the whole network on the embedded sample data, on one machine
sangsaeng simulate   the same on any CSV/Parquet file, split into sites by a column
sangsaeng tasks      the built-in value-chain tasks
sangsaeng client     a supplier's commands (validate an export, enroll, start, pull-model, predict)
sangsaeng coordinator  the anchor on Flower's deployment runtime (certs, up, run)
sangsaeng portal     the membership and release portal (serve, create-admin, invite, approve, release...)
"""

from __future__ import annotations

from sangsaeng import airgap

airgap.apply()  # before Flower is imported

from pathlib import Path  # noqa: E402
from typing import Annotated  # noqa: E402

import typer  # noqa: E402
from rich.console import Console  # noqa: E402

from client import node, portal_commands  # noqa: E402
from coordinator import deploy_cli  # noqa: E402
from coordinator.config import DP_TRAINING_DEFAULTS, STRATEGIES, FederationConfig, parse_hidden  # noqa: E402
from coordinator.deploy_cli import (  # noqa: E402
    CentralAdaptive,
    CentralClip,
    CentralNoise,
    CentralQuantile,
    Hidden,
    Model,
)
from models.tasks import TaskSpec, builtin_tasks, get_task, load_task_spec  # noqa: E402
from portal import cli as portal_cli  # noqa: E402
from privacy import cli as privacy_cli  # noqa: E402
from sangsaeng.errors import SangsaengError  # noqa: E402

__all__ = ["app", "main"]

app = typer.Typer(help="Sangsaeng: federated learning for manufacturing supply chains.", no_args_is_help=True)
client_app = typer.Typer(help="Supplier site commands.", no_args_is_help=True)
app.add_typer(client_app, name="client")
app.add_typer(privacy_cli.app, name="privacy")
app.add_typer(portal_cli.app, name="portal")
client_app.command("enroll")(portal_commands.enroll_command)
client_app.command("pull-model")(portal_commands.pull_model_command)
client_app.command("predict")(portal_commands.predict_command)
client_app.command("start")(node.start_command)
app.add_typer(deploy_cli.app, name="coordinator")
console = Console()

Rounds = Annotated[int, typer.Option("--rounds", min=1, help="Federated rounds.")]
Strategy = Annotated[
    str,
    typer.Option(
        help=f"Aggregation: {', '.join(STRATEGIES)}. fedmedian and fedtrimmedavg resist a few poisoned updates."
    ),
]
_DP = DP_TRAINING_DEFAULTS
LocalEpochs = Annotated[
    int | None,
    typer.Option(min=1, help=f"Local epochs per round at each site (default 2; {_DP['local_epochs']} with DP-SGD)."),
]
BatchSize = Annotated[
    int | None, typer.Option(min=1, help=f"Local batch size (default 64; {_DP['batch_size']} with DP-SGD).")
]
LearningRate = Annotated[
    float | None, typer.Option(min=1e-6, help=f"Local learning rate (default 0.003; {_DP['lr']} with DP-SGD).")
]
FractionFit = Annotated[float, typer.Option(min=0.01, max=1.0, help="Fraction of sites per round.")]
MinSites = Annotated[int, typer.Option(min=1, help="Fewest healthy sites a run accepts.")]
Seed = Annotated[int, typer.Option(help="Seed of splits, initial weights and shuffles.")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue the run recorded in --out from its last checkpoint.")]
DpEpsilon = Annotated[
    float | None,
    typer.Option(min=0.01, help="Record-level DP-SGD at every site; the per-site epsilon of the whole run."),
]
DpClip = Annotated[
    float | None,
    typer.Option(min=1e-6, help=f"Per-sample gradient clipping norm of DP-SGD (default {_DP['dp_max_grad_norm']:g})."),
]
KeyDir = Annotated[Path, typer.Option(help="The coordinator's signing key directory (created on first use).")]
_DEFAULT_KEY_DIR = Path.home() / ".sangsaeng" / "coordinator"


def _fail(exc: Exception) -> None:
    console.print(f"[bold red]error:[/] {exc}")
    raise typer.Exit(code=2)


def _run(spec: TaskSpec, frame_source: Path, split_column: str, config: FederationConfig) -> None:
    import pandas as pd

    from coordinator.display import RichObserver
    from coordinator.report import privacy_table, results_table
    from coordinator.simulation import run_experiment, write_site_files
    from models.schema import read_table

    frame: pd.DataFrame = read_table(frame_source)
    if split_column not in frame.columns:
        _fail(SangsaengError(f"{frame_source}: split column '{split_column}' is not in the data"))
    site_files, dropped = write_site_files(frame, split_column, config.out_dir, spec=spec)
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
    console.print(f"results: {config.out_dir / 'results.json'}   plot: {results['plot']}")
    if results.get("privacy"):
        console.print(privacy_table(results["privacy"]))
        console.print(f"privacy report: {config.out_dir / 'privacy' / 'report.json'} (signed; report.html for people)")


def _config(spec: TaskSpec, out: Path, hidden: str | None = None, **kwargs: object) -> FederationConfig:
    try:
        return FederationConfig.with_defaults(task=spec, out_dir=out, hidden=parse_hidden(hidden), **kwargs)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


@app.command()
def demo(
    task: Annotated[str, typer.Option(help="Built-in task.")] = "injection-molding-quality",
    rounds: Rounds = 10,
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("sangsaeng-demo"),
    strategy: Strategy = "fedavg",
    local_epochs: LocalEpochs = None,
    batch_size: BatchSize = None,
    lr: LearningRate = None,
    model: Model = None,
    hidden: Hidden = None,
    fraction_fit: FractionFit = 1.0,
    min_sites: MinSites = 2,
    seed: Seed = 0,
    resume: Resume = False,
    dp_epsilon: DpEpsilon = None,
    dp_max_grad_norm: DpClip = None,
    central_dp_noise: CentralNoise = None,
    central_dp_clip: CentralClip = 1.0,
    central_dp_adaptive: CentralAdaptive = False,
    central_dp_quantile: CentralQuantile = 0.5,
    key_dir: KeyDir = _DEFAULT_KEY_DIR,
) -> None:
    """Train a shared model across supplier sites built from the embedded sample data."""
    from models.datasets import SAMPLES, sample_path

    try:
        if task not in SAMPLES:
            raise SangsaengError(f"unknown demo task '{task}' (choose from {sorted(SAMPLES)})")
        spec = get_task(task)
        config = _config(spec, out, num_rounds=rounds, strategy=strategy, local_epochs=local_epochs,
                         fraction_fit=fraction_fit, min_sites=min_sites, seed=seed, resume=resume,
                         batch_size=batch_size, lr=lr, model=model, hidden=hidden,
                         dp_epsilon=dp_epsilon, dp_max_grad_norm=dp_max_grad_norm, central_dp_noise=central_dp_noise,
                         central_dp_clip=central_dp_clip, central_dp_adaptive=central_dp_adaptive,
                         central_dp_quantile=central_dp_quantile, key_dir=key_dir)  # fmt: skip
        _run(spec, sample_path(task), SAMPLES[task].split_by, config)
    except SangsaengError as exc:
        _fail(exc)


@app.command()
def simulate(
    data: Annotated[Path, typer.Option(help="CSV or Parquet file with every site's rows.")],
    task_spec: Annotated[Path, typer.Option(help="Task-spec TOML file.")],
    split_by: Annotated[str, typer.Option(help="Column whose values name the supplier sites.")],
    rounds: Rounds = 10,
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("sangsaeng-run"),
    strategy: Strategy = "fedavg",
    local_epochs: LocalEpochs = None,
    batch_size: BatchSize = None,
    lr: LearningRate = None,
    model: Model = None,
    hidden: Hidden = None,
    fraction_fit: FractionFit = 1.0,
    min_sites: MinSites = 2,
    seed: Seed = 0,
    resume: Resume = False,
    dp_epsilon: DpEpsilon = None,
    dp_max_grad_norm: DpClip = None,
    central_dp_noise: CentralNoise = None,
    central_dp_clip: CentralClip = 1.0,
    central_dp_adaptive: CentralAdaptive = False,
    central_dp_quantile: CentralQuantile = 0.5,
    key_dir: KeyDir = _DEFAULT_KEY_DIR,
) -> None:
    """Simulate a federation on any table, one site per value of --split-by."""
    try:
        spec = load_task_spec(task_spec)
        config = _config(spec, out, num_rounds=rounds, strategy=strategy, local_epochs=local_epochs,
                         fraction_fit=fraction_fit, min_sites=min_sites, seed=seed, resume=resume,
                         batch_size=batch_size, lr=lr, model=model, hidden=hidden,
                         dp_epsilon=dp_epsilon, dp_max_grad_norm=dp_max_grad_norm, central_dp_noise=central_dp_noise,
                         central_dp_clip=central_dp_clip, central_dp_adaptive=central_dp_adaptive,
                         central_dp_quantile=central_dp_quantile, key_dir=key_dir)  # fmt: skip
        _run(spec, data, split_by, config)
    except SangsaengError as exc:
        _fail(exc)


@app.command("tasks")
def list_tasks() -> None:
    """List the built-in value-chain tasks."""
    for spec in builtin_tasks().values():
        summary = f"{spec.kind}, label '{spec.label}', {len(spec.features)} features"
        console.print(f"[bold]{spec.name}[/] ({summary}): {spec.description}")


@client_app.command("validate")
def client_validate(
    data: Annotated[Path, typer.Option(help="The site's CSV or Parquet export.")],
    task: Annotated[str, typer.Option(help="Built-in task name or task-spec TOML file.")],
) -> None:
    """Check a site's export against a task's schema before joining a federation."""
    from models.schema import load_site_data

    try:
        spec = get_task(task)
        frame = load_site_data(data, spec)
    except SangsaengError as exc:
        _fail(exc)
        return
    positives = f", {int(frame[spec.label].sum())} positive label(s)" if spec.kind == "binary" else ""
    console.print(f"[green]ok:[/] {data}: {len(frame)} rows fit task '{spec.name}'{positives}")


def main() -> None:
    """Entry point of the ``sangsaeng`` console script."""
    app()


if __name__ == "__main__":
    main()
