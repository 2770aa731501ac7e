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

from coordinator.config import DP_TRAINING_DEFAULTS
from models.architectures import ARCHITECTURES
from models.errors import SangsaengError

__all__ = ["app", "certs_app"]

app = typer.Typer(help="The anchor's coordinator on Flower's deployment runtime.", no_args_is_help=True)
certs_app = typer.Typer(help="The network CA and the SuperLink's server certificate.", no_args_is_help=True)
app.add_typer(certs_app, name="certs")
console = Console()

State = Annotated[Path, typer.Option("--state", help="The coordinator's state directory.")]
_DEFAULT_STATE = Path.home() / ".sangsaeng" / "coordinator-deploy"
# Shared with `sangsaeng demo` / `simulate` (coordinator.cli).
Model = Annotated[
    str | None,
    typer.Option(
        help=f"Model: {', '.join(ARCHITECTURES)} (default mlp; {DP_TRAINING_DEFAULTS['model']} with DP-SGD, "
        "see docs/privacy.md)."
    ),
]
Hidden = Annotated[
    str | None,
    typer.Option(help="Hidden layer widths, e.g. 64,32, or 'none' (default 64,32; none with DP-SGD)."),
]
CentralNoise = Annotated[
    float | None, typer.Option(min=1e-6, help="Supplier-level DP at the coordinator: noise multiplier.")
]
CentralClip = Annotated[
    float,
    typer.Option(min=1e-6, help="Supplier-level DP: clipping norm of each site's update (adaptive: its first value)."),
]
CentralAdaptive = Annotated[
    bool,
    typer.Option(
        "--central-dp-adaptive",
        help="Supplier-level DP: adapt the clipping norm every round to a quantile of the update norms "
        "(Andrew et al. 2021).",
    ),
]
CentralQuantile = Annotated[
    float, typer.Option(min=0.01, max=0.99, help="Adaptive clipping: the quantile of update norms to follow.")
]
_DEFAULT_KEY_DIR = Path.home() / ".sangsaeng" / "coordinator"


def _fail(exc: Exception | str) -> None:
    console.print(f"[bold red]error:[/] {exc}")
    raise typer.Exit(code=2)


@certs_app.command("init")
def certs_init(
    name: Annotated[str, typer.Option(help="The anchor's organisation name (CA subject).")],
    host: Annotated[list[str], typer.Option("--host", help="Name or IP suppliers use to reach the SuperLink.")],
    state: State = _DEFAULT_STATE,
) -> None:
    """Create the network CA and the SuperLink's first server certificate."""
    from coordinator.deploy import DeploymentLayout
    from coordinator.pki import init_network

    layout = DeploymentLayout(state)
    hosts = list(dict.fromkeys([*host, "localhost", "127.0.0.1"]))  # loopback for the anchor's own hops
    try:
        init_network(layout.certs, name=name, hosts=hosts)
    except SangsaengError as exc:
        _fail(exc)
    console.print(f"network CA: {layout.certs.ca_cert} (give this file to every supplier)")
    console.print(f"server certificate for {', '.join(hosts)}: {layout.certs.server_cert}")


@certs_app.command("rotate")
def certs_rotate(state: State = _DEFAULT_STATE) -> None:
    """Issue a new server certificate for the same hosts (restart `coordinator up` to use it)."""
    from cryptography import x509

    from coordinator.deploy import DeploymentLayout
    from coordinator.pki import issue_server_certificate, server_hosts

    certs = DeploymentLayout(state).certs
    try:
        old = x509.load_pem_x509_certificate(certs.server_cert.read_bytes())
        new = issue_server_certificate(certs, hosts=server_hosts(old))
    except (OSError, SangsaengError) as exc:
        _fail(exc)
    console.print(f"new server certificate, valid until {new.not_valid_after_utc:%Y-%m-%d}: {certs.server_cert}")


@certs_app.command("check")
def certs_check(state: State = _DEFAULT_STATE, host: Annotated[str | None, typer.Option()] = None) -> None:
    """Check the server certificate: issued by the network CA, in date, for HOST."""
    from coordinator.deploy import DeploymentLayout
    from coordinator.pki import check_server_certificate

    try:
        left = check_server_certificate(DeploymentLayout(state).certs, host=host)
    except SangsaengError as exc:
        _fail(exc)
    console.print(f"server certificate valid for {left.days} more day(s)")


@app.command("up")
def up(
    federation: Annotated[int, typer.Option(help="The portal federation whose admitted sites may join.")],
    portal: Annotated[str, typer.Option(help="Portal URL.")],
    token_file: Annotated[Path, typer.Option(help="File holding the coordinator token (from the portal).")],
    state: State = _DEFAULT_STATE,
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
        start_gateway,
        start_superlink,
        stop_processes,
    )  # fmt: skip

    layout = DeploymentLayout(state)
    settings = SuperLinkSettings(layout, public_host=public_host, public_port=public_port, internal_port=internal_port)
    try:
        token = token_file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        _fail(f"cannot read the coordinator token: {exc}")
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
            _fail(f"{Path(str(dead[0].args[0])).name} stopped (exit code {dead[0].returncode}); see {layout.root}")
    except SangsaengError as exc:
        _fail(exc)
    finally:
        stop_processes(processes)


@app.command("run")
def run(
    task: Annotated[str, typer.Option(help="Built-in task name.")] = "injection-molding-quality",
    rounds: Annotated[int, typer.Option(min=1)] = 10,
    min_sites: Annotated[int, typer.Option(min=1)] = 2,
    dp_epsilon: Annotated[float | None, typer.Option(min=0.01, help="Per-site DP-SGD budget of the run.")] = None,
    secagg: Annotated[bool, typer.Option("--secagg", help="Secure aggregation (Flower SecAgg+).")] = False,
    central_dp_noise: CentralNoise = None,
    central_dp_clip: CentralClip = 1.0,
    central_dp_adaptive: CentralAdaptive = False,
    central_dp_quantile: CentralQuantile = 0.5,
    model: Model = None,
    hidden: Hidden = None,
    seed: Annotated[int, typer.Option()] = 0,
    out: Annotated[Path, typer.Option(help="Run directory (manifest, checkpoints, results, privacy report).")] = Path(
        "sangsaeng-run"
    ),
    key_dir: Annotated[Path, typer.Option(help="The coordinator's signing key directory.")] = _DEFAULT_KEY_DIR,
    state: State = _DEFAULT_STATE,
) -> None:
    """Train on the admitted sites through the running SuperLink (`coordinator up`)."""
    import tomli_w

    from coordinator.config import FederationConfig, parse_hidden
    from coordinator.deploy import CONNECTION, DeploymentLayout, _executable, flower_env, write_app_dir
    from models.tasks import get_task

    layout = DeploymentLayout(state)
    try:
        config = FederationConfig.with_defaults(
            task=get_task(task), num_rounds=rounds, min_sites=min_sites, dp_epsilon=dp_epsilon, secagg=secagg,
            seed=seed, out_dir=out.resolve(), key_dir=key_dir.resolve(), model=model, hidden=parse_hidden(hidden),
            central_dp_noise=central_dp_noise, central_dp_clip=central_dp_clip, central_dp_adaptive=central_dp_adaptive,
            central_dp_quantile=central_dp_quantile,
        )  # fmt: skip
    except (SangsaengError, ValueError) as exc:
        _fail(exc)
    app_dir = write_app_dir(layout)
    with tempfile.NamedTemporaryFile("wb", suffix=".toml", delete=False) as handle:
        tomli_w.dump(config.to_run_config(), handle)
    console.print(f"run on {CONNECTION} SuperLink: {task}, {rounds} round(s), secagg={secagg}, dp={dp_epsilon}")
    results_path = config.out_dir / "results.json"
    before = results_path.stat().st_mtime_ns if results_path.exists() else None
    code = subprocess.call([_executable("flwr"), "run", str(app_dir), CONNECTION, "--run-config", handle.name,
                            "--stream"], env=flower_env(layout))  # fmt: skip
    # The ServerApp writes results.json when the run ends (coordinator.server_app.write_deployment_results).
    if not results_path.exists() or results_path.stat().st_mtime_ns == before:
        _fail(f"the run left no results in {config.out_dir} (flwr exit code {code}); see the log above")
    try:
        results = json.loads(results_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        _fail(f"{results_path}: unreadable ({exc})")
    if results["status"] != "completed":
        _fail(f"run {results['run_id']} {results['status']}: {results.get('error', '')}")
    console.print(f"results: {results_path}, plot: {config.out_dir / 'metrics.png'}")
