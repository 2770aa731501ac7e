"""The anchor's side of a multi-site deployment: Flower's SuperLink behind a fleet-only gateway.

    sangsaeng coordinator up  --state DIR --portal URL --token FILE --federation F
    sangsaeng coordinator run --state DIR --federation F [--rounds N] [--dp-epsilon E] [--secagg]

Processes (all stock): ``flower-superlink`` with TLS, SuperNode authentication on and runtime
dependency installation off, listening on loopback only; ``nginx`` on the public address
terminating TLS with the network's server certificate and forwarding only Flower's Fleet API
(``/v1/fleet/``) to it. The Control API (registering nodes, submitting runs) and the
ServerApp Runtime API therefore stay on the anchor's loopback: a supplier that can reach the
public port can only be a SuperNode.

Admission follows the portal: `AdmissionSync` polls the portal's list of admitted site keys
and registers or unregisters them with ``flwr supernode register|unregister`` (Flower's CLI
on the Control API). A portal that cannot be reached leaves the last known set in place.

State directory layout::

    certs/            network CA and server certificate (coordinator/pki.py)
    flwr-home/        FLWR_HOME of the `flwr` CLI: config.toml naming this SuperLink
    superlink.db      the SuperLink's state
    gateway/          nginx.conf, logs
    admitted.json     fingerprint -> {site, node_id} of the keys registered now
    app/              the Flower app bundle source (configuration only; see `app_dir`)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coordinator.errors import DeploymentError
from coordinator.pki import NetworkCerts, check_server_certificate, rotate_if_due
from sangsaeng import airgap
from sangsaeng.errors import PortalRequestError
from sangsaeng.identity import APP_ID, CLIENTAPP_REF, SERVERAPP_REF, sangsaeng_version

__all__ = [
    "DeploymentLayout", "SuperLinkSettings", "FlowerControl", "AdmissionSync", "SiteKey",
    "start_superlink", "start_gateway", "write_app_dir", "wait_for_port", "program_name", "stop_interrupted_run",
    "CONNECTION",
]  # fmt: skip

log = logging.getLogger("sangsaeng.coordinator")

CONNECTION = "anchor"  # the connection name in the flwr CLI's config.toml
_FINISHED = "finished"  # how `flwr ls` starts the status of a run that ended ("finished:failed", ...)


ADMITTED_FILE = "admitted-file"
"""Run-config key: the coordinator's admitted.json (`DeploymentLayout.admitted`), a path.

The path, not the names: the run config also goes to every site, and one supplier is not told
who the others are."""


@dataclass(frozen=True)
class DeploymentLayout:
    """Paths inside the coordinator's state directory."""

    root: Path

    @property
    def certs(self) -> NetworkCerts:
        """The network CA and server certificate files (certs/)."""
        return NetworkCerts(self.root / "certs")

    @property
    def flwr_home(self) -> Path:
        """FLWR_HOME of the `flwr` CLI calls, holding config.toml that names this SuperLink."""
        return self.root / "flwr-home"

    @property
    def gateway_dir(self) -> Path:
        """nginx's configuration and logs for the fleet gateway."""
        return self.root / "gateway"

    @property
    def admitted(self) -> Path:
        """admitted.json: fingerprint -> {site, node_id} of the keys registered now."""
        return self.root / "admitted.json"

    @property
    def app_dir(self) -> Path:
        """Source directory of the Flower app bundle (configuration only, no code)."""
        return self.root / "app"

    @property
    def database(self) -> Path:
        """The SuperLink's state database."""
        return self.root / "superlink.db"


@dataclass(frozen=True)
class SuperLinkSettings:
    """Where the anchor's processes listen: public fleet gateway, loopback SuperLink."""

    layout: DeploymentLayout
    public_host: str = "0.0.0.0"
    public_port: int = 9092
    internal_port: int = 9093

    @property
    def internal_address(self) -> str:
        """The SuperLink's loopback address, which only the gateway and the `flwr` CLI reach."""
        return f"127.0.0.1:{self.internal_port}"


def flower_env(layout: DeploymentLayout) -> dict[str, str]:
    """Environment of every Flower process we start: air-gapped, our own FLWR_HOME."""
    env = {**os.environ, **airgap.AIRGAP_ENV, "FLWR_HOME": str(layout.flwr_home)}
    # The SuperLink's SuperExec asks it for a ServerApp to start every this many seconds: Flower's
    # default of 1 s adds at most a second to a run's start (0.1 s kept the SuperLink answering ten
    # authenticated database-backed asks a second for as long as it ran).
    env.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "1.0")
    return env


def _executable(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if not found:
        raise DeploymentError(f"`{name}` is not installed (it comes with {'nginx' if name == 'nginx' else 'flwr'})")
    return found


def program_name(process: subprocess.Popen) -> str:
    """The name of the program ``process`` runs (``flower-superlink``, ``nginx``), for messages."""
    args = process.args
    first = args if isinstance(args, str | bytes | os.PathLike) else args[0]
    return Path(os.fsdecode(first)).name


def wait_for_port(host: str, port: int, *, timeout: float, process: subprocess.Popen | None = None) -> None:
    """Wait until something accepts TCP connections on host:port (or the process died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise DeploymentError(f"{program_name(process)} exited with code {process.returncode} while starting")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise DeploymentError(f"nothing listens on {host}:{port} after {timeout:.0f} s")


def start_superlink(settings: SuperLinkSettings, *, log_file: Path) -> subprocess.Popen:
    """Start flower-superlink: TLS, SuperNode authentication, no runtime installs, loopback only."""
    layout = settings.layout
    certs = layout.certs
    check_server_certificate(certs, host="127.0.0.1")
    command = [
        _executable("flower-superlink"),
        "--ssl-ca-certfile", str(certs.ca_cert),
        "--ssl-certfile", str(certs.server_cert),
        "--ssl-keyfile", str(certs.server_key),
        "--enable-supernode-auth",
        "--disable-runtime-dependency-installation",
        "--host", "127.0.0.1",
        "--port", str(settings.internal_port),
        "--database", str(layout.database),
    ]  # fmt: skip
    log_file.parent.mkdir(parents=True, exist_ok=True)
    handle = log_file.open("ab")
    process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=flower_env(layout),
                               start_new_session=True)  # fmt: skip
    wait_for_port("127.0.0.1", settings.internal_port, timeout=60, process=process)
    return process


_NGINX_CONF = """\
# Written by `sangsaeng coordinator up`: only Flower's Fleet API is reachable from outside.
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
    client_max_body_size 0;
    server_tokens off;
    server {{
        listen {host}:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        location /v1/fleet/ {{
            proxy_pass https://127.0.0.1:{internal};
            proxy_ssl_trusted_certificate {ca};
            proxy_ssl_verify on;
            proxy_ssl_name localhost;
            proxy_http_version 1.1;
            proxy_request_buffering off;
            proxy_buffering off;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
        }}
        location / {{
            default_type text/plain;
            return 403 "Sangsaeng: only the Fleet API is served here; the Control API is on the anchor's loopback.\\n";
        }}
    }}
}}
"""


def start_gateway(settings: SuperLinkSettings) -> subprocess.Popen:
    """Start nginx as the public, fleet-only TLS front of the SuperLink."""
    layout = settings.layout
    directory = layout.gateway_dir
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (directory / "tmp" / sub).mkdir(parents=True, exist_ok=True)
    conf = directory / "nginx.conf"
    certs = layout.certs
    conf.write_text(_NGINX_CONF.format(
        dir=directory, host=settings.public_host, port=settings.public_port, internal=settings.internal_port,
        cert=certs.server_cert, key=certs.server_key, ca=certs.ca_cert,
    ), encoding="utf-8")  # fmt: skip
    nginx = _executable("nginx")
    test_config = [nginx, "-t", "-q", "-p", str(directory), "-c", str(conf), "-e", str(directory / "error.log")]
    check = subprocess.run(test_config, capture_output=True, text=True)
    if check.returncode != 0:
        raise DeploymentError(f"nginx rejected the gateway configuration {conf}: {check.stderr.strip()}")
    process = subprocess.Popen(
        [nginx, "-p", str(directory), "-c", str(conf), "-e", str(directory / "error.log"), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL, stderr=(directory / "nginx.out").open("ab"), start_new_session=True,
    )  # fmt: skip
    host = "127.0.0.1" if settings.public_host in ("0.0.0.0", "::") else settings.public_host
    wait_for_port(host, settings.public_port, timeout=20, process=process)
    return process


def write_app_dir(layout: DeploymentLayout) -> Path:
    """The Flower app bundle's source: configuration only, no code.

    Both components name modules of the installed `sangsaeng` package, so the bundle the
    coordinator pushes carries no code: each party runs the Sangsaeng version it installed,
    and a SuperNode's worker refuses a bundle that names other components or another version.
    """
    from coordinator.config import FederationConfig
    from coordinator.portal_progress import PORTAL_KEYS
    from models.tasks import get_task

    defaults = FederationConfig(task=get_task("injection-molding-quality")).to_run_config()
    # Flower refuses run-config overrides the app does not declare: the portal keys and the admitted
    # sites' file, off by default.
    defaults |= {key: "none" for key in (*PORTAL_KEYS, ADMITTED_FILE)}
    directory = layout.app_dir
    directory.mkdir(parents=True, exist_ok=True)
    config_lines = "\n".join(f"{key} = {_toml_value(value)}" for key, value in defaults.items())
    (directory / "pyproject.toml").write_text(
        f"""[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "{APP_ID}"
version = "{sangsaeng_version()}"
description = "Sangsaeng federated run: configuration only; code comes from each party's installed sangsaeng"
license = "Apache-2.0"
dependencies = ["sangsaeng=={sangsaeng_version()}"]

[tool.flwr.app]
publisher = "{APP_ID}"

[tool.flwr.app.components]
serverapp = "{SERVERAPP_REF}"
clientapp = "{CLIENTAPP_REF}"

[tool.flwr.app.config]
{config_lines}
""",
        encoding="utf-8",
    )
    return directory


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


# -- Flower's Control API, through Flower's own CLI -------------------------------------------------
class FlowerControl:
    """`flwr` CLI calls against this SuperLink's Control API (loopback, TLS with the network CA)."""

    def __init__(self, layout: DeploymentLayout, internal_address: str | None = None) -> None:
        """With `internal_address` (`coordinator up`), write the CLI's config.toml naming it; else use the one there."""
        self.layout = layout
        if internal_address is None:
            return
        layout.flwr_home.mkdir(parents=True, exist_ok=True)
        (layout.flwr_home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "{internal_address}"\nroot-certificates = "{layout.certs.ca_cert}"\n',
            encoding="utf-8",
        )

    def _flwr(self, *args: str, timeout: float = 120) -> dict[str, Any]:
        result = subprocess.run([_executable("flwr"), *args, "--format", "json"], capture_output=True, text=True,
                                env=flower_env(self.layout), timeout=timeout)  # fmt: skip
        try:
            payload = json.loads(result.stdout[result.stdout.index("{") :])
        except ValueError:
            raise DeploymentError(f"flwr {args[0]} {args[1] if len(args) > 1 else ''} failed: "
                                  f"{(result.stderr or result.stdout).strip()[-500:]}") from None  # fmt: skip
        if not payload.get("success", False):
            raise DeploymentError(f"flwr {' '.join(args[:2])}: {payload.get('error-message', payload)}")
        return payload

    def register(self, public_key_file: Path, name: str) -> int:
        """Register a site's public key as a SuperNode; returns its node id."""
        payload = self._flwr("supernode", "register", str(public_key_file), CONNECTION)
        return int(payload["node-id"])

    def unregister(self, node_id: int) -> None:
        """Remove the SuperNode `node_id`: that key can no longer connect."""
        self._flwr("supernode", "unregister", str(node_id), CONNECTION)

    def nodes(self) -> list[dict[str, Any]]:
        """The SuperNodes the SuperLink knows, as ``flwr supernode list`` reports them."""
        return list(self._flwr("supernode", "list", CONNECTION)["nodes"])

    def run_status(self, run_id: int) -> str | None:
        """Flower's status of run `run_id` (``flwr ls``: "running", "finished:failed", ...), None if unknown."""
        runs = self._flwr("ls", CONNECTION, "--run-id", str(run_id)).get("runs", [])
        return str(runs[0]["status"]) if runs else None

    def stop_run(self, run_id: int) -> None:
        """Stop run `run_id` (``flwr stop``): the SuperLink fails its tasks and refuses its messages."""
        self._flwr("stop", str(run_id), CONNECTION)


def stop_interrupted_run(layout: DeploymentLayout, manifest: dict[str, Any]) -> str | None:
    """Before `coordinator run --resume`: stop the run the manifest was written by, if the SuperLink still runs it.

    A ServerApp that was killed leaves its run "running" in the SuperLink until Flower misses its
    heartbeats, and the sites go on receiving and answering its messages meanwhile. Stopped, the
    SuperLink fails the run's tasks and refuses its messages, so the sites drop it. Returns a line
    saying what was done (None when the manifest names no Flower run: written before this existed).
    """
    flower_run = manifest.get("flower_run_id")
    if flower_run is None:
        return None
    control = FlowerControl(layout)
    try:
        status = control.run_status(int(flower_run))
    except DeploymentError as exc:  # e.g. a SuperLink restarted on a fresh database: nothing left to stop
        return f"interrupted Flower run {flower_run}: not listed by the SuperLink ({exc})"
    if status is None or status.startswith(_FINISHED):
        return f"interrupted Flower run {flower_run}: {status or 'unknown to the SuperLink'}, nothing to stop"
    control.stop_run(int(flower_run))
    return f"stopped the interrupted Flower run {flower_run} (it was {status}): the sites drop its tasks"


# -- admission follows the portal -------------------------------------------------------------------
@dataclass(frozen=True)
class SiteKey:
    """One admitted site key as the portal lists it."""

    site: str
    fingerprint: str
    public_key: str


def portal_site_keys(portal: str, token: str, federation: int, *, http: Any = None) -> list[SiteKey]:
    """The portal's admitted site keys for `federation` (coordinator token).

    Raises `PortalRequestError` when the portal cannot be reached or refuses the list.
    """
    from portal.protocol import API_PREFIX
    from sangsaeng.portal_api import PortalAPI

    # A short timeout: admission is polled every few seconds and keeps the last set on failure.
    with PortalAPI(portal, token, timeout=10, http=http) as api:
        keys = api.get(f"{API_PREFIX}/federations/{federation}/site-keys", what="listing the admitted site keys").json()
    return [SiteKey(site=k["site_name"], fingerprint=k["fingerprint"], public_key=k["public_key"]) for k in keys]


def publish_network(
    portal: str, token: str, federation: int, *, ca_cert: Path, superlink: str, http: Any = None
) -> str:
    """Tell the portal the network CA certificate and the SuperLink address its sites enrol with.

    Enrolment then hands both to every site, and invitations carry the certificate's
    fingerprint, which the site checks. Returns that fingerprint; raises `PortalRequestError`.
    """
    from portal.protocol import API_PREFIX
    from sangsaeng.portal_api import PortalAPI

    body = {"ca_cert_pem": ca_cert.read_text(encoding="ascii"), "superlink_address": superlink}
    with PortalAPI(portal, token, timeout=10, http=http) as api:
        answer = api.request(
            "PUT", f"{API_PREFIX}/federations/{federation}/network", what="publishing the network", json=body
        ).json()
    return str(answer["network_ca_fingerprint"])


@dataclass
class AdmissionSync:
    """Keep the SuperLink's registered node keys equal to the portal's admitted site keys."""

    layout: DeploymentLayout
    control: FlowerControl
    fetch: Callable[[], list[SiteKey]]
    on_event: Callable[[str], None] = field(default=lambda message: log.info(message))
    admitted: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.layout.admitted.exists():
            self.admitted = json.loads(self.layout.admitted.read_text(encoding="utf-8"))

    def _save(self) -> None:
        tmp = self.layout.admitted.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.admitted, indent=2, sort_keys=True), encoding="utf-8")
        os.replace(tmp, self.layout.admitted)

    def sync_once(self) -> bool:
        """One pass; returns False when the portal could not be asked (last known set kept)."""
        try:
            wanted = {key.fingerprint: key for key in self.fetch()}
        except (DeploymentError, PortalRequestError) as exc:
            self.on_event(f"portal unreachable, keeping the {len(self.admitted)} admitted site(s) known: {exc}")
            return False
        for fingerprint in sorted(set(self.admitted) - set(wanted)):
            entry = self.admitted[fingerprint]
            try:
                self.control.unregister(int(entry["node_id"]))
            except DeploymentError as exc:
                self.on_event(f"could not remove site {entry['site']!r} (node {entry['node_id']}): {exc}")
                continue
            del self.admitted[fingerprint]
            self._save()
            self.on_event(f"removed site {entry['site']!r} (node {entry['node_id']}): no longer admitted by the portal")
        for fingerprint in sorted(set(wanted) - set(self.admitted)):
            key = wanted[fingerprint]
            key_file = self.layout.root / "site-keys" / f"{fingerprint.replace(':', '')[:32]}.pub"
            key_file.parent.mkdir(parents=True, exist_ok=True)
            key_file.write_text(key.public_key.strip() + "\n", encoding="utf-8")
            try:
                node_id = self.control.register(key_file, key.site)
            except DeploymentError as exc:
                self.on_event(f"could not admit site {key.site!r}: {exc}")
                continue
            self.admitted[fingerprint] = {"site": key.site, "node_id": node_id}
            self._save()
            self.on_event(f"admitted site {key.site!r} as node {node_id}")
        return True

    def run_forever(self, interval: float, stop: Callable[[], bool]) -> None:
        """Sync every `interval` seconds until `stop()` is true (checked every 0.1 s)."""
        while not stop():
            self.sync_once()
            deadline = time.monotonic() + interval
            while time.monotonic() < deadline and not stop():
                time.sleep(0.1)


def stop_processes(processes: Iterable[subprocess.Popen], timeout: float = 10) -> None:
    """Terminate our child process groups (SuperLink also starts SuperExec and ServerApp children)."""
    processes = [p for p in processes if p.poll() is None]
    for process in processes:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def ensure_certificate(layout: DeploymentLayout) -> str:
    """Renew the server certificate if it expires soon (CA key present); returns a status line."""
    certs = layout.certs
    if certs.ca_key.exists() and rotate_if_due(certs):
        return f"server certificate renewed: {certs.server_cert}"
    left = check_server_certificate(certs)
    return f"server certificate valid for {left.days} more day(s)"
