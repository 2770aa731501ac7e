"""`sangsaeng coordinator ...`: the anchor's deployment commands (see coordinator/deploy.py)."""

from __future__ import annotations

import json
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from coordinator.config import FederationConfig
from coordinator.follow import ManifestFollower
from coordinator.options import TrainingOptions, training_options
from coordinator.portal_progress import PortalTarget
from sangsaeng.console import fail
from sangsaeng.errors import PortalRequestError, SangsaengError
from sangsaeng.paths import DEFAULT_DEPLOY_STATE

if TYPE_CHECKING:
    from coordinator.deploy import DeploymentLayout

__all__ = ["app", "certs_app"]

app = typer.Typer(help="The anchor's coordinator on Flower's deployment runtime.", no_args_is_help=True)
certs_app = typer.Typer(help="The network CA and the SuperLink's server certificate.", no_args_is_help=True)
app.add_typer(certs_app, name="certs")
console = Console()

FLOWER_LOG = "flower.log"  # `flwr run`'s own output, in the run directory: the terminal shows rounds instead
FOLLOW_INTERVAL = 1.0  # seconds between looks at the run's manifest

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
    advertise: Annotated[
        str | None,
        typer.Option(
            help="HOST:PORT suppliers dial, a name in the server certificate (default: PUBLIC_HOST:PUBLIC_PORT "
            "unless that is 0.0.0.0). The portal hands it, with the CA certificate, to every site that enrols."
        ),
    ] = None,
) -> None:
    """Start the SuperLink (TLS, node authentication) behind a fleet-only gateway; follow the portal.

    The network CA certificate and the advertised address go to the portal, so that enrolment
    gives each site what it needs to join (`client start --data FILE`).
    """
    from coordinator.deploy import (
        AdmissionSync,
        DeploymentLayout,
        FlowerControl,
        SuperLinkSettings,
        ensure_certificate,
        portal_site_keys,
        program_name,
        publish_network,
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
        address = advertise or (f"{public_host}:{public_port}" if public_host != "0.0.0.0" else None)
        published: list[str] = []
        if address is None:
            console.print("no --advertise address: the portal cannot tell enrolling sites where to connect")

        def fetch() -> list:
            if address is not None and not published:
                try:
                    published.append(publish_network(portal, token, federation, ca_cert=layout.certs.ca_cert,
                                                     superlink=address))  # fmt: skip
                    console.print(f"portal: sites enrol with {address}, CA {published[0][:16]}…", highlight=False)
                except PortalRequestError as exc:  # retried on the next pass; admission goes on
                    console.print(f"portal: network not published yet ({exc})", highlight=False)
            return portal_site_keys(portal, token, federation)

        sync = AdmissionSync(layout, FlowerControl(layout, settings.internal_address), fetch=fetch,
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
    task: Annotated[str, typer.Option(help="Built-in task name or task-spec TOML file.")] = "injection-molding-quality",
    secagg: Annotated[bool, typer.Option("--secagg", help="Secure aggregation (Flower SecAgg+).")] = False,
    out: Annotated[Path, typer.Option(help="Run directory (manifest, checkpoints, results, privacy report).")] = Path(
        "sangsaeng-run"
    ),
    state: State = DEFAULT_DEPLOY_STATE,
    portal: Annotated[
        str | None,
        typer.Option(
            help="Record the run in this portal: its progress after every round, and when it ends the run, its "
            "signed privacy report, a draft."
        ),
    ] = None,
    token_file: Annotated[Path | None, typer.Option(help="File holding the coordinator token (with --portal).")] = None,
    federation: Annotated[int | None, typer.Option(help="The portal federation (with --portal).")] = None,
    version: Annotated[
        str | None, typer.Option(help="Version of the draft release (default 0.0.0-run.RUN_ID).")
    ] = None,
    upload_retry_for: Annotated[
        float, typer.Option(min=0, help="Seconds to keep retrying while the portal cannot be reached.")
    ] = 600.0,
    round_timeout: Annotated[
        float | None,
        typer.Option(
            min=0.1,
            help="Seconds a round waits for the sites' replies; a site that has not replied by then is left out "
            "of that round (the round goes on if --min-sites replied). Default: wait for every reply.",
        ),
    ] = None,
    node_wait_timeout: Annotated[
        float,
        typer.Option(
            min=1,
            help="Seconds the run waits for every admitted site to connect (then it goes on with those there, "
            "if --min-sites), and for each site's profile reply.",
        ),
    ] = FederationConfig.node_wait_timeout,
    *,
    options: TrainingOptions,
) -> None:
    """Train on the admitted sites through the running SuperLink (`coordinator up`).

    Shows a line per round done; Flower's own log goes to OUT/flower.log. With --portal the
    run reports its progress there after every round (the run page follows it live) and
    records itself there when it ends. While the portal cannot be
    reached the upload stays queued in OUT/portal-upload.json and is retried (nothing is
    lost); `sangsaeng portal upload-run OUT` finishes it later.

    With --resume the run recorded in --out continues from its last checkpoint after the
    coordinator was killed: same run id, global model, round counter and strategy state; the
    sites' ledgers keep what they spent (a round trained again is charged again, as it is a
    new release). Pass the settings the run was started with.
    """
    from sangsaeng.extras import require

    try:  # the run's TOML config here, results.json's plot in the ServerApp when the run ends
        require("coordinator", "sangsaeng coordinator run", modules=["tomli_w", "matplotlib"])
    except SangsaengError as exc:
        fail(exc)
    import tomli_w

    from coordinator.deploy import ADMITTED_FILE, CONNECTION, DeploymentLayout, _executable, flower_env, write_app_dir
    from models.tasks import get_task

    layout = DeploymentLayout(state)
    token = None
    if portal is not None:
        if token_file is None or federation is None:
            fail("--portal needs --token-file and --federation")
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            fail(f"cannot read the coordinator token: {exc}")
    try:
        # Resolved here: the server app runs from another directory.
        config = options.federation_config(
            get_task(task), out_dir=out.resolve(), key_dir=options.key_dir.resolve(), secagg=secagg,
            round_timeout=round_timeout, node_wait_timeout=node_wait_timeout,
        )  # fmt: skip
    except (SangsaengError, ValueError) as exc:
        fail(exc)
    app_dir = write_app_dir(layout)
    run_config = config.to_run_config()
    if layout.admitted.exists():  # the ServerApp waits for the admitted sites and names those it misses
        run_config[ADMITTED_FILE] = str(layout.admitted.resolve())
    target = None
    if portal is not None and token_file is not None and federation is not None:
        # The ServerApp (on this machine) reports each round; the run config, which the sites also
        # receive, carries the token file's path, never the token.
        target = PortalTarget(url=portal, federation=federation, token_file=token_file.resolve())
        run_config |= target.to_run_config()
    with tempfile.NamedTemporaryFile("wb", suffix=".toml", delete=False) as handle:
        tomli_w.dump(run_config, handle)
    console.print(f"run on {CONNECTION} SuperLink: {task}, {config.num_rounds} round(s), secagg={secagg}, "
                  f"dp={options.dp_epsilon}")  # fmt: skip
    results_path = config.out_dir / "results.json"
    before = results_path.stat().st_mtime_ns if results_path.exists() else None
    config.out_dir.mkdir(parents=True, exist_ok=True)
    flower_log = config.out_dir / FLOWER_LOG
    console.print(f"Flower's log: {flower_log}", highlight=False)
    if config.resume:
        _stop_interrupted_run(layout, config.out_dir)
    follower = ManifestFollower(config.out_dir, num_rounds=config.num_rounds, primary_metric=config.task.primary_metric)
    with flower_log.open("ab") as log:
        command = [_executable("flwr"), "run", str(app_dir), CONNECTION, "--run-config", handle.name, "--stream"]
        process = subprocess.Popen(command, env=flower_env(layout), stdout=log, stderr=subprocess.STDOUT)
        try:
            while process.poll() is None:
                for line in follower.poll():
                    console.print(line, highlight=False)
                time.sleep(FOLLOW_INTERVAL)
        finally:
            if process.poll() is None:  # interrupted: stop the `flwr run` client (the SuperLink's run goes on)
                process.terminate()
                process.wait(timeout=30)
    for line in follower.poll(ended=True):
        console.print(line, highlight=False)
    code = process.returncode
    # The ServerApp writes results.json when the run ends (coordinator.server_app.write_deployment_results).
    if not results_path.exists() or results_path.stat().st_mtime_ns == before:
        fail(f"the run left no results in {config.out_dir} (flwr exit code {code}); see {flower_log}")
    try:
        results = json.loads(results_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        fail(f"{results_path}: unreadable ({exc})")
    if results["status"] != "completed":
        if target is not None:  # the portal's row, running until now, records that the run failed
            _record_failure(config.out_dir, target)
        fail(f"run {results['run_id']} {results['status']}: {results.get('error', '')}; see {flower_log}")
    from coordinator.report import contribution_table, operating_point_table

    if results.get("contribution"):  # each site's line alone / with the network, measured at the site
        console.print(contribution_table(results["contribution"]))
    if results.get("operating_point"):
        console.print(operating_point_table(results["operating_point"]))
    console.print(f"results: {results_path}, plot: {config.out_dir / 'metrics.png'}")
    if portal is not None and token is not None and federation is not None:
        _record_in_portal(config.out_dir, portal=portal, token=token, federation=federation,
                          version=version or f"0.0.0-run.{results['run_id']}", retry_for=upload_retry_for)  # fmt: skip


def _stop_interrupted_run(layout: DeploymentLayout, out: Path) -> None:
    """`--resume`: the SuperLink stops the run whose ServerApp died, so that the sites drop its tasks first."""
    from coordinator.checkpoint import MANIFEST, read_manifest
    from coordinator.deploy import stop_interrupted_run

    if not (out / MANIFEST).exists():
        return  # nothing recorded: the ServerApp says there is nothing to resume
    try:
        line = stop_interrupted_run(layout, read_manifest(out))
    except SangsaengError as exc:
        fail(f"cannot stop the interrupted run before resuming it: {exc}")
    if line is not None:
        console.print(line, highlight=False, soft_wrap=True)  # one line, whatever the terminal's width


def _record_failure(out: Path, target: PortalTarget) -> None:
    """Report the failed run to the portal (its rounds so far, status failed); a failure is said, not raised."""
    from portal.protocol import API_PREFIX
    from portal.uploader import run_report
    from sangsaeng.portal_api import PortalAPI

    try:
        report = run_report(out, signed_privacy=False) | {"status": "failed"}
        report.pop("contribution", None)
        with PortalAPI(target.url, target.token_file.read_text(encoding="utf-8").strip()) as api:
            api.post(f"{API_PREFIX}/federations/{target.federation}/runs", json=report, what="reporting the failed run")
    except (OSError, SangsaengError) as exc:
        console.print(f"portal: the failure was not recorded ({exc})", highlight=False)


def _record_in_portal(out: Path, *, portal: str, token: str, federation: int, version: str, retry_for: float) -> None:
    """Upload the finished run (queued on disk first, retried while the portal is unreachable)."""
    from portal.uploader import queue_upload, upload_with_retry

    queue = queue_upload(out, portal=portal, federation=federation, version=version)
    console.print(f"recording the run in {portal} (federation {federation}, draft {version}); queued in {queue}",
                  highlight=False)  # fmt: skip
    try:
        done = upload_with_retry(out, token, retry_for=retry_for,
                                 on_event=lambda line: console.print(line, highlight=False))  # fmt: skip
    except SangsaengError as exc:
        fail(f"the portal refused the run: {exc}")
    if done is None:
        raise typer.Exit(code=4)
