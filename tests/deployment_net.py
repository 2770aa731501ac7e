"""A whole deployment on loopback, for the deployment test files: the portal, `sangsaeng coordinator up`
(Flower SuperLink with TLS and SuperNode authentication behind the fleet-only nginx gateway) and three
`sangsaeng client start` sites (stock flower-supernode + our worker), all real processes.

Not a test module: tests/test_deployment.py and tests/test_deployment_faults.py each start one network
(`deployed_network`, module scope) so that under ``-n 2 --dist loadfile`` the two files run side by
side on the two workers. Every port is `free_port()` and every file is under the network's own root,
so two networks on one machine do not share anything.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

TASK = "predictive-maintenance"
PASSWORD = "deploy-test-password-1"
MARKS = [pytest.mark.slow, pytest.mark.timeout(900)]


def require_nginx() -> None:
    """Skip the calling test module when nginx (the fleet gateway) is missing; put /usr/sbin on PATH."""
    if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
        pytest.skip("nginx is not installed (the fleet gateway; .ci/run installs it)", allow_module_level=True)
    if "/usr/sbin" not in os.environ["PATH"].split(os.pathsep):
        os.environ["PATH"] = f"{os.environ['PATH']}{os.pathsep}/usr/sbin"


def free_port() -> int:
    """A TCP port free on loopback now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cli(*args: str) -> list[str]:
    """The command line of ``sangsaeng ARGS`` in this interpreter."""
    return [sys.executable, "-m", "coordinator.cli", *args]


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.3) -> Any:
    """Poll `predicate` until it is truthy (returned); AssertionError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class Network:
    """Handles on the running network."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.processes: dict[str, subprocess.Popen] = {}
        self.env = {**os.environ, "SANGSAENG_PORTAL_DATA_DIR": str(root / "portal"),
                    "SANGSAENG_PORTAL_SECRET_KEY": uuid.uuid4().hex}  # fmt: skip
        self.env.pop("DATABASE_URL", None)
        self.portal_port, self.public_port, self.internal_port = free_port(), free_port(), free_port()
        self.portal = f"http://127.0.0.1:{self.portal_port}"
        self.state = root / "coordinator"
        self.sites: dict[str, dict] = {}
        self.anchor: httpx.Client
        self.fid: int

    def start(self, name: str, command: list[str], **kwargs: Any) -> subprocess.Popen:
        """Start `command` in a session of its own, its output appended to ROOT/NAME.log."""
        log = (self.root / f"{name}.log").open("ab")
        process = subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True, **kwargs)  # fmt: skip
        self.processes[name] = process
        return process

    def log(self, name: str) -> str:
        """What process `name` has written so far."""
        return (self.root / f"{name}.log").read_text(errors="replace")

    def admitted(self) -> dict:
        """The coordinator's admitted.json (fingerprint -> site and node id)."""
        path = self.state / "admitted.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def stop(self) -> None:
        """End every process started here (SIGTERM to its session, SIGKILL after 15 s)."""
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


@contextmanager
def deployed_network(root: Path) -> Iterator[Network]:
    """Portal, coordinator and three enrolled, admitted and started sites (h, l, m) under `root`; all stopped after.

    Two sites enrol before the network exists (they are given its address by hand), the third
    after `coordinator up` published it (enrolment gives it the address and the CA certificate).
    """
    from client import portal_commands as pc
    from coordinator.simulation import write_site_files
    from models.datasets import SAMPLES, sample_path
    from models.schema import read_table
    from models.tasks import get_task

    net = Network(root)
    try:
        net.start("portal", cli("portal", "serve", "--port", str(net.portal_port)))
        wait_until(lambda: _get(f"{net.portal}/api/v1/keys/release-signing") == 200, 60, "the portal")
        subprocess.run(cli("portal", "create-admin", "--email", "anchor@hyundai.example", "--org", "Anchor Motors",
                           "--password", PASSWORD), env=net.env, check=True, capture_output=True)  # fmt: skip
        token = httpx.post(
            f"{net.portal}/api/v1/login/access-token", data={"username": "anchor@hyundai.example", "password": PASSWORD}
        ).json()["access_token"]
        net.anchor = httpx.Client(base_url=net.portal, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        net.fid = net.anchor.post("/api/v1/federations", json={"name": "Maintenance", "task_name": TASK,
                                                               "threshold": 0.5}).json()["id"]  # fmt: skip
        files, _ = write_site_files(read_table(sample_path(TASK)), SAMPLES[TASK].split_by, net.root / "data",
                                    spec=get_task(TASK))  # fmt: skip

        def enrol(name: str, path: Path) -> dict:
            invite = net.anchor.post(
                f"/api/v1/federations/{net.fid}/invites",
                json={"organisation_name": f"Supplier {name}", "site_name": f"line-{name}"},
            ).json()
            record = pc.enroll(net.portal, invite["invitation"], net.root / f"site-{name}")
            assert net.anchor.post(f"/api/v1/memberships/{record['membership_id']}/approve").status_code == 200
            net.sites[name] = {"dir": net.root / f"site-{name}", "data": path, "membership": record["membership_id"]}
            return record

        *early, (late, late_path) = files.items()
        for name, path in early:  # before the network exists: these sites are told its address by hand
            assert "superlink" not in enrol(name, path)
        coordinator_token = net.anchor.post(f"/api/v1/federations/{net.fid}/tokens", json={"name": "ci"}).json()[
            "token"
        ]
        (net.root / "coordinator.token").write_text(coordinator_token)

        subprocess.run(cli("coordinator", "certs", "init", "--state", str(net.state), "--name", "Anchor Motors",
                           "--host", "localhost"), env=net.env, check=True, capture_output=True)  # fmt: skip
        start_coordinator(net)
        published = lambda: net.anchor.get(f"/api/v1/federations/{net.fid}").json()["superlink_address"]  # noqa: E731
        wait_until(lambda: published() or net.processes["coordinator"].poll() is not None, 120,
                   "the coordinator to publish the network")  # fmt: skip
        # Enrolled once the network is published: the invitation carries the CA fingerprint, and enrolment
        # gives the site the checked CA certificate and the address, so `client start` needs only the data.
        late_record = enrol(late, late_path)
        assert late_record["superlink"] == f"localhost:{net.public_port}", net.log("coordinator")
        assert (net.sites[late]["dir"] / "network-ca.pem").read_bytes() == (net.state / "certs" / "ca.pem").read_bytes()
        wait_until(lambda: len(net.admitted()) == 3 or net.processes["coordinator"].poll() is not None, 120,
                   "the coordinator to admit the three approved sites")  # fmt: skip
        assert len(net.admitted()) == 3, net.log("coordinator")
        for name, site in net.sites.items():
            start_site(net, name, site["data"])
        yield net
    finally:
        net.stop()


def start_coordinator(net: Network) -> subprocess.Popen:
    """The anchor's `sangsaeng coordinator up` (SuperLink on its state database, fleet gateway, admission sync)."""
    return net.start("coordinator", cli(
        "coordinator", "up", "--state", str(net.state), "--federation", str(net.fid), "--portal", net.portal,
        "--token-file", str(net.root / "coordinator.token"), "--public-host", "127.0.0.1",
        "--public-port", str(net.public_port), "--internal-port", str(net.internal_port), "--sync-interval", "1",
        "--advertise", f"localhost:{net.public_port}",
    ))  # fmt: skip


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (children in sessions of their own included), deepest last."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            children.setdefault(parent_pid(int(entry.name)), []).append(int(entry.name))
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def start_site(net: Network, name: str, data: Path) -> subprocess.Popen:
    """Site `name`'s `sangsaeng client start` (its enrolled key and folder) serving the export `data`."""
    site = net.sites[name]
    # A site enrolled after the network was published needs only its data: enrolment gave it the rest.
    enrolled_with_network = "superlink" in json.loads((site["dir"] / "site.json").read_text())
    by_hand = [] if enrolled_with_network else ["--superlink", f"localhost:{net.public_port}",
                                                "--ca-cert", str(net.state / "certs" / "ca.pem")]  # fmt: skip
    return net.start(f"site-{name}", cli(
        "client", "start", *by_hand, "--data", str(data),
        "--site-dir", str(site["dir"]), "--runtime-port", str(free_port()),
    ))  # fmt: skip


def stop_sites(net: Network, *names: str) -> None:
    """End these sites' `client start` (and the SuperNodes they started), all at once."""
    workers = [net.processes[f"site-{name}"] for name in names]
    for worker in workers:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
    for worker in workers:
        worker.wait(timeout=30)


def _get(url: str) -> int:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return 0


def reset_ledgers(net: Network) -> None:
    """Remove every site's privacy ledgers (a test that checks epsilons starts from zero)."""
    for site in net.sites.values():
        shutil.rmtree(Path(site["data"]).parent / ".sangsaeng-privacy", ignore_errors=True)


def coordinator_run(net: Network, name: str, *args: str, task: str = TASK, timeout: float = 400) -> dict:
    """`coordinator run` to its end into ROOT/runs/NAME (it must succeed); its results.json.

    The command's lines, then Flower's log, are kept in ROOT/runs/NAME/run.log.
    """
    out = net.root / "runs" / name
    result = subprocess.run(
        cli("coordinator", "run", "--state", str(net.state), "--task", task, "--out", str(out),
            "--key-dir", str(net.root / "signing-key"), *args),
        env=net.env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    flower = (out / "flower.log").read_text(errors="replace") if (out / "flower.log").exists() else ""
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:] + flower[-3000:]
    (out / "run.log").write_text(result.stdout + result.stderr + flower)
    return json.loads((out / "results.json").read_text())


def start_run(net: Network, name: str, *args: str) -> tuple[subprocess.Popen, Path]:
    """`coordinator run` in the background (a process group of its own); its output goes to runs/NAME.log."""
    out = net.root / "runs" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    run = subprocess.Popen(
        cli("coordinator", "run", "--state", str(net.state), "--task", TASK, "--out", str(out),
            "--key-dir", str(net.root / "signing-key"), *args),
        env=net.env, stdout=(net.root / "runs" / f"{name}.log").open("wb"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    return run, out


def recorded_rounds(out: Path) -> list[dict]:
    """The rounds the run's manifest records so far (none before it exists)."""
    manifest = out / "manifest.json"
    return json.loads(manifest.read_text())["rounds"] if manifest.exists() else []


def run_ended(run: subprocess.Popen, net: Network, name: str) -> dict:
    """Wait for a background run; its results (it must have completed)."""
    code = run.wait(timeout=400)
    log = (net.root / "runs" / f"{name}.log").read_text(errors="replace")
    assert code == 0, log[-4000:]
    return json.loads((net.root / "runs" / name / "results.json").read_text())


def parent_pid(pid: int) -> int:
    """The parent of process `pid` (0 once it is gone)."""
    try:
        return int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0
