"""`sangsaeng coordinator ...`: the anchor's deployment commands (see coordinator/deploy.py)."""

from __future__ import annotations

import json
import signal
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from coordinator.options import TrainingOptions, training_options
from sangsaeng.console import fail
from sangsaeng.errors import SangsaengError
from sangsaeng.paths import DEFAULT_DEPLOY_STATE

__all__ = ["app", "certs_app"]

app = typer.Typer(help="The anchor's coordinator on Flower's deployment runtime.", no_args_is_help=True)
certs_app = typer.Typer(help="The network CA and the SuperLink's server certificate.", no_args_is_help=True)
app.add_typer(certs_app, name="certs")
console = Console()

State = Annotated[Path, typer.Option("--state", help="The coordinator's state directory.")]


@certs_app.command("init")
def certs_init(
    name: Annotated[str, typer.Option(help="The anchor's organisation name (CA subject).")],
    host: Annotated[list[str], typer.Option("--host", help="Name or IP suppliers use to reach the SuperLink.")],
    state: State = DEFAULT_DEPLOY_STATE,
) -> None:
    """Create the network CA and the SuperLink's first server certificate."""
    from coordinator.deploy import DeploymentLayout
    from coordinator.pki import init_network

    layout = DeploymentLayout(state)
    hosts = list(dict.fromkeys([*host, "localhost", "127.0.0.1"]))  # loopback for the anchor's own hops
    try:
        init_network(layout.certs, name=name, hosts=hosts)
    except SangsaengError as exc:
        fail(exc)
    console.print(f"network CA: {layout.certs.ca_cert} (give this file to every supplier)")
    console.print(f"server certificate for {', '.join(hosts)}: {layout.certs.server_cert}")


@certs_app.command("rotate")
def certs_rotate(state: State = DEFAULT_DEPLOY_STATE) -> None:
    """Issue a new server certificate for the same hosts (restart `coordinator up` to use it)."""
    from cryptography import x509

    from coordinator.deploy import DeploymentLayout
    from coordinator.pki import issue_server_certificate, server_hosts

    certs = DeploymentLayout(state).certs
    try:
        old = x509.load_pem_x509_certificate(certs.server_cert.read_bytes())
        new = issue_server_certificate(certs, hosts=server_hosts(old))
    except (OSError, SangsaengError) as exc:
        fail(exc)
    console.print(f"new server certificate, valid until {new.not_valid_after_utc:%Y-%m-%d}: {certs.server_cert}")


@certs_app.command("check")
def certs_check(state: State = DEFAULT_DEPLOY_STATE, host: Annotated[str | None, typer.Option()] = None) -> None:
    """Check the server certificate: issued by the network CA, in date, for HOST."""
    from coordinator.deploy import DeploymentLayout
    from coordinator.pki import check_server_certificate

    try:
        left = check_server_certificate(DeploymentLayout(state).certs, host=host)
    except SangsaengError as exc:
        fail(exc)
    console.print(f"server certificate valid for {left.days} more day(s)")


@app.command("up")
def up(
    federation: Annotated[int, typer.Option(help="The portal federation whose admitted sites may join.")],
    portal: Annotated[str, typer.Option(help="Portal URL.")],
    token_file: Annotated[Path, typer.Option(help="File holding the coordinator token (from the portal).")],
    state: State = DEFAULT_DEPLOY_STATE,
    public_host: Annotated[str, typer.Option(help="Address suppliers connect to (fleet gateway).")] = "0.0.0.0",
    public_port: Annotated[int, typer.Option(help="Port suppliers connect to.")] = 9092,
    internal_port: Annotated[int, typer.Option(help="The SuperLink's loopback port (Control API).")] = 9093,
    sync_interval: Annotated[float, typer.Option(min=0.2, help="Seconds between portal checks.")] = 5.0,
) -> None:
    """Start the SuperLink (TLS, node authentication) behind a fleet-only gateway; follow the portal."""
    from coordinator.deploy import (
        AdmissionSync,
        DeploymentLayout,
        FlowerControl,
        SuperLinkSettings,
        ensure_certificate,
        portal_site_keys,
        program_name,
        start_gateway,
        start_superlink,
        stop_processes,
    )  # fmt: skip

    layout = DeploymentLayout(state)
    settings = SuperLinkSettings(layout, public_host=public_host, public_port=public_port, internal_port=internal_port)
    try:
        token = token_file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        fail(f"cannot read the coordinator token: {exc}")
    processes: list[subprocess.Popen] = []
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    try:
        console.print(ensure_certificate(layout))
        processes.append(start_superlink(settings, log_file=layout.root / "superlink.log"))
        processes.append(start_gateway(settings))
        console.print(f"SuperLink on {settings.internal_address} (loopback: Control API), "
                      f"fleet gateway on {public_host}:{public_port}", highlight=False)  # fmt: skip
        sync = AdmissionSync(layout, FlowerControl(layout, settings.internal_address),
                             fetch=lambda: portal_site_keys(portal, token, federation),
                             on_event=lambda line: console.print(line, highlight=False))  # fmt: skip
        console.print("ready", highlight=False)
        sync.run_forever(sync_interval, stop=lambda: stopping.is_set() or any(p.poll() is not None for p in processes))
        dead = [p for p in processes if p.poll() is not None]
        if dead and not stopping.is_set():
            fail(f"{program_name(dead[0])} stopped (exit code {dead[0].returncode}); see {layout.root}")
    except SangsaengError as exc:
        fail(exc)
    finally:
        stop_processes(processes)


@app.command("run")
@training_options
def run(
    task: Annotated[str, typer.Option(help="Built-in task name.")] = "injection-molding-quality",
    secagg: Annotated[bool, typer.Option("--secagg", help="Secure aggregation (Flower SecAgg+).")] = False,
    out: Annotated[Path, typer.Option(help="Run directory (manifest, checkpoints, results, privacy report).")] = Path(
        "sangsaeng-run"
    ),
    state: State = DEFAULT_DEPLOY_STATE,
    *,
    options: TrainingOptions,
) -> None:
    """Train on the admitted sites through the running SuperLink (`coordinator up`)."""
    import tomli_w

    from coordinator.deploy import CONNECTION, DeploymentLayout, _executable, flower_env, write_app_dir
    from models.tasks import get_task

    layout = DeploymentLayout(state)
    try:
        # Resolved here: the server app runs from another directory.
        config = options.federation_config(
            get_task(task), out_dir=out.resolve(), key_dir=options.key_dir.resolve(), secagg=secagg
        )
    except (SangsaengError, ValueError) as exc:
        fail(exc)
    app_dir = write_app_dir(layout)
    with tempfile.NamedTemporaryFile("wb", suffix=".toml", delete=False) as handle:
        tomli_w.dump(config.to_run_config(), handle)
    console.print(f"run on {CONNECTION} SuperLink: {task}, {config.num_rounds} round(s), secagg={secagg}, "
                  f"dp={options.dp_epsilon}")  # fmt: skip
    results_path = config.out_dir / "results.json"
    before = results_path.stat().st_mtime_ns if results_path.exists() else None
    code = subprocess.call([_executable("flwr"), "run", str(app_dir), CONNECTION, "--run-config", handle.name,
                            "--stream"], env=flower_env(layout))  # fmt: skip
    # The ServerApp writes results.json when the run ends (coordinator.server_app.write_deployment_results).
    if not results_path.exists() or results_path.stat().st_mtime_ns == before:
        fail(f"the run left no results in {config.out_dir} (flwr exit code {code}); see the log above")
    try:
        results = json.loads(results_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        fail(f"{results_path}: unreadable ({exc})")
    if results["status"] != "completed":
        fail(f"run {results['run_id']} {results['status']}: {results.get('error', '')}")
    if results.get("operating_point"):
        from coordinator.report import operating_point_table

        console.print(operating_point_table(results["operating_point"]))
    console.print(f"results: {results_path}, plot: {config.out_dir / 'metrics.png'}")
