"""`sangsaeng coordinator ...`: the anchor's deployment commands (see coordinator/deploy.py)."""

from __future__ import annotations

import json
import signal
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from coordinator.options import TrainingOptions, training_options
from sangsaeng.console import fail
from sangsaeng.errors import SangsaengError
from sangsaeng.files import write_json
from sangsaeng.paths import DEFAULT_DEPLOY_STATE

__all__ = ["app", "certs_app", "write_deployment_results"]

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
    code = subprocess.call([_executable("flwr"), "run", str(app_dir), CONNECTION, "--run-config", handle.name,
                            "--stream"], env=flower_env(layout))  # fmt: skip
    manifest_path = config.out_dir / "manifest.json"
    if not manifest_path.exists():
        fail(f"the run left no manifest in {config.out_dir} (flwr exit code {code}); see the log above")
    results = write_deployment_results(config.out_dir)
    if results["status"] != "completed":
        fail(f"run {results['run_id']} {results['status']}: {results.get('error', '')}")
    console.print(f"results: {config.out_dir / 'results.json'}, plot: {config.out_dir / 'metrics.png'}")


def write_deployment_results(out_dir: Path) -> dict[str, Any]:
    """results.json (+ metrics.png) of a deployment run, from its manifest.

    Same keys as a simulation's results where they exist. The coordinator holds no data in
    deployment, so there is no centralised or local-only reference: those keys are null, and
    the federated metrics are the sites' own held-out scores, weighted by rows.
    """
    from coordinator.report import plot_rounds
    from coordinator.simulation import _privacy_summary, round_summaries

    manifest = json.loads((out_dir / "manifest.json").read_text(encoding="utf-8"))
    rounds = sorted(manifest["rounds"], key=lambda r: r["round"])
    last: dict[str, Any] = next((r for r in reversed(rounds) if r.get("federated_eval")), {})
    sites = manifest.get("sites", {})
    results: dict[str, Any] = {
        "task": manifest["task"],
        "runtime": "deployment",
        "status": manifest.get("status"),
        "error": manifest.get("error"),
        "sites": sorted(sites),
        "site_rows": {name: {"train": s["n_train"], "held_out": s["n_test"]} for name, s in sites.items()},
        "excluded_sites": manifest.get("excluded_sites", {}),
        "held_out_rows": sum(s["n_test"] for s in sites.values()),
        "centralized": None,
        "local_only": None,
        "local_only_summary": None,
        "federated": {
            "global": {k: v for k, v in last.get("federated_eval", {}).items() if k != "loss"},
            "per_site": last.get("per_site", {}),
        },
        "rounds": round_summaries(rounds, metrics_key="federated_eval"),
        "privacy": _privacy_summary(out_dir, manifest),
        "config": manifest.get("config"),
        "run_id": manifest["run_id"],
    }
    write_json(out_dir / "results.json", results)
    if results["rounds"]:
        plot_rounds(results, out_dir / "metrics.png")
    return results
