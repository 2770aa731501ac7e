"""``sangsaeng network up`` / ``network down``: the whole network on this machine, with real processes.

    sangsaeng network up [--dir sangsaeng-network] [--task predictive-maintenance] [--rounds 3]
    sangsaeng network down [--dir sangsaeng-network]

`up` starts, as separate processes that keep running after it returns, what a real network
runs on several machines: the portal, the coordinator (SuperLink behind its nginx fleet
gateway, TLS, SuperNode authentication) and three supplier sites made from the task's
embedded sample data. It then walks the lifecycle a real network goes through, each step
through the same command or API a person would use:

1. the anchor's admin account, a federation with a DP policy, an auditor organisation and its login;
2. the network CA, the coordinator's report-signing key, a coordinator token that pins it;
3. `coordinator up --advertise`: the portal learns the CA certificate and the fleet address;
4. per supplier: an invitation, `client enrol` with its own key made on-site (and its admin
   login), approval, `client start --data` (enrolment gave it the rest);
5. `coordinator run` with per-site DP-SGD and SecAgg+, which records itself in the portal;
6. the anchor approves and publishes the draft release;
7. each site pulls it (signature and hash verified) and scores its own file.

It prints the portal address and the logins of the anchor, one supplier and the auditor and
writes them, with every process id, to DIR/network.json (mode 0600). `down` stops every
process `up` started (their whole process groups) and checks none is left.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from sangsaeng.console import fail
from sangsaeng.files import write_private

__all__ = ["app", "STATE_FILE"]

app = typer.Typer(help="The whole network on this machine: portal, coordinator and three supplier sites.")
console = Console()

STATE_FILE = "network.json"
DEFAULT_DIR = Path("sangsaeng-network")
STEPS = 7


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _sangsaeng(*args: str) -> list[str]:
    return [sys.executable, "-m", "sangsaeng", *args]


def _wait(predicate: Callable[[], Any], timeout: float, what: str, logs: Path | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except Exception:  # not up yet
            value = None
        if value:
            return value
        time.sleep(0.3)
    fail(f"timed out after {timeout:.0f} s waiting for {what}" + (f"; see the logs in {logs}" if logs else ""))


class _Network:
    """The processes `up` started and the facts `down` and the user need, kept in DIR/network.json."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.env = {
            **os.environ,
            "SANGSAENG_PORTAL_DATA_DIR": str(root / "portal"),
            "SANGSAENG_PORTAL_SECRET_KEY": secrets.token_hex(32),
        }
        self.env.pop("DATABASE_URL", None)
        self.state: dict[str, Any] = {"processes": {}, "status": "starting"}

    def save(self) -> None:
        write_private(self.root / STATE_FILE, json.dumps(self.state, indent=2).encode())

    def start(self, name: str, command: list[str]) -> subprocess.Popen:
        log = (self.logs / f"{name}.log").open("ab")
        process = subprocess.Popen(
            command,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.state["processes"][name] = process.pid
        self.save()
        return process

    def run(self, name: str, command: list[str], *, input: str | None = None, timeout: float = 900) -> str:
        done = subprocess.run(command, env=self.env, input=input, capture_output=True, text=True, timeout=timeout)
        (self.logs / f"{name}.log").write_text(done.stdout + done.stderr, encoding="utf-8")
        if done.returncode != 0:
            fail(f"{name} failed (exit code {done.returncode}): {(done.stderr or done.stdout).strip()[-1500:]}")
        return done.stdout


def _step(number: int, text: str) -> None:
    console.print(f"[bold][{number}/{STEPS}][/bold] {text}", highlight=False)


@app.command("up")
def up(
    directory: Annotated[Path, typer.Option("--dir", help="Where the network keeps its files.")] = DEFAULT_DIR,
    task: Annotated[str, typer.Option(help="Built-in task with embedded sample data.")] = "predictive-maintenance",
    rounds: Annotated[int, typer.Option(min=1, help="Rounds of the DP run.")] = 3,
    epsilon: Annotated[float, typer.Option(min=0.1, help="Each site's privacy budget for the run.")] = 8.0,
) -> None:
    """Start the portal, the coordinator and three supplier sites here, and walk a whole DP run to a release."""
    import httpx

    from sangsaeng.errors import SangsaengError
    from sangsaeng.extras import require

    try:  # every role runs here: the anchor's coordinator and the portal server too
        require("coordinator", "sangsaeng network up")
        require("portal", "sangsaeng network up")
    except SangsaengError as exc:
        fail(exc)

    from coordinator.simulation import write_site_files
    from models.datasets import SAMPLES, sample_path
    from models.schema import read_table
    from models.tasks import get_task

    root = directory.resolve()
    if (root / STATE_FILE).exists():
        fail(f"{root} already holds a network; `sangsaeng network down --dir {directory}` first, or use another --dir")
    if root.exists() and any(root.iterdir()):
        fail(f"{root} is not empty (an earlier network's files?): give an empty or new --dir")
    if task not in SAMPLES or SAMPLES[task].external:
        fail(f"task '{task}' has no embedded sample data to make sites from (try predictive-maintenance)")
    spec = get_task(task)
    net = _Network(root)
    ports = {"portal": _free_port(), "fleet": _free_port(), "superlink": _free_port()}
    portal = f"http://127.0.0.1:{ports['portal']}"
    logins = {
        "anchor": {"email": "anchor@anchor-motors.example", "password": secrets.token_urlsafe(12)},
        "auditor": {"email": "auditor@kqa.example", "password": secrets.token_urlsafe(12)},
    }
    net.state |= {"portal": portal, "ports": ports, "task": task, "logins": logins}
    net.save()

    _step(1, f"portal on {portal}: the anchor's admin, a DP federation, an auditor")
    net.start("portal", _sangsaeng("portal", "serve", "--port", str(ports["portal"])))
    _wait(
        lambda: httpx.get(f"{portal}/api/v1/keys/release-signing", timeout=2).status_code == 200,
        90,
        "the portal",
        net.logs,
    )
    net.run(
        "create-admin",
        _sangsaeng(
            "portal",
            "create-admin",
            "--email",
            logins["anchor"]["email"],
            "--org",
            "Anchor Motors",
            "--password",
            logins["anchor"]["password"],
        ),
    )
    login = httpx.post(
        f"{portal}/api/v1/login/access-token",
        data={"username": logins["anchor"]["email"], "password": logins["anchor"]["password"]},
    )
    anchor = httpx.Client(
        base_url=f"{portal}/api/v1", timeout=60, headers={"Authorization": f"Bearer {login.json()['access_token']}"}
    )

    def ask(method: str, path: str, **kwargs: Any) -> Any:
        answer = anchor.request(method, path, **kwargs)
        if not answer.is_success:
            fail(f"portal refused {method} {path}: {answer.status_code} {answer.text[:500]}")
        return answer.json()

    federation = ask(
        "POST", "/federations", json={"name": f"{spec.name} network", "task_name": task, "threshold": 0.5}
    )["id"]
    ask("PUT", f"/federations/{federation}/privacy-policy", json={"dp_max_epsilon": epsilon})
    auditor_org = ask("POST", "/organisations", json={"name": "Korea Quality Audit", "kind": "auditor"})["id"]
    ask(
        "POST",
        "/users",
        json={
            "email": logins["auditor"]["email"],
            "password": logins["auditor"]["password"],
            "organisation_id": auditor_org,
        },
    )
    ask("POST", f"/federations/{federation}/auditors", json={"organisation_id": auditor_org})
    net.state["federation"] = federation

    _step(2, "network CA, the coordinator's report-signing key, its token (the portal pins the key)")
    coordinator = root / "coordinator"
    net.run(
        "certs",
        _sangsaeng(
            "coordinator",
            "certs",
            "init",
            "--state",
            str(coordinator),
            "--name",
            "Anchor Motors",
            "--host",
            "localhost",
        ),
    )
    keys = root / "signing-key"
    net.run("init-key", _sangsaeng("privacy", "init-key", "--key-dir", str(keys)))
    token = ask(
        "POST",
        f"/federations/{federation}/tokens",
        json={
            "name": "coordinator",
            "days": 30,
            "coordinator_public_key_pem": (keys / "coordinator.pub.pem").read_text(),
        },
    )
    write_private(root / "coordinator.token", token["token"].encode())

    _step(3, f"coordinator: SuperLink behind the fleet gateway on localhost:{ports['fleet']} (TLS, node keys)")
    net.start(
        "coordinator",
        _sangsaeng(
            "coordinator",
            "up",
            "--state",
            str(coordinator),
            "--federation",
            str(federation),
            "--portal",
            portal,
            "--token-file",
            str(root / "coordinator.token"),
            "--public-host",
            "127.0.0.1",
            "--public-port",
            str(ports["fleet"]),
            "--internal-port",
            str(ports["superlink"]),
            "--sync-interval",
            "0.5",
            "--advertise",
            f"localhost:{ports['fleet']}",
        ),
    )
    _wait(lambda: ask("GET", f"/federations/{federation}")["superlink_address"], 120, "the coordinator", net.logs)

    _step(4, "three suppliers: invitation, enrolment with a key made on-site, approval, `client start --data`")
    files, _ = write_site_files(read_table(sample_path(task)), SAMPLES[task].split_by, root / "data", spec=spec)
    sites: dict[str, dict[str, Any]] = {}
    for n, (name, path) in enumerate(sorted(files.items()), start=1):
        site = f"line-{name}".lower()
        invite = ask(
            "POST",
            f"/federations/{federation}/invites",
            json={"organisation_name": f"Supplier {name}", "site_name": site},
        )
        site_dir = root / "sites" / site
        email, password = f"admin@supplier-{n}.example", secrets.token_urlsafe(12)
        net.run(
            f"enrol-{site}",
            _sangsaeng(
                "client",
                "enrol",
                "--portal",
                portal,
                "--invite",
                invite["invitation"],
                "--site-dir",
                str(site_dir),
                "--admin-email",
                email,
            ),
            input=f"{password}\n{password}\n",
        )
        ask("POST", f"/memberships/{invite['membership']['id']}/approve", json={"reason": "network up"})
        sites[site] = {"dir": str(site_dir), "data": str(path), "login": {"email": email, "password": password}}
    logins["supplier"] = next(iter(sites.values()))["login"]
    net.state |= {"sites": sites, "logins": logins}
    net.save()
    admitted = coordinator / "admitted.json"
    _wait(
        lambda: admitted.exists() and len(json.loads(admitted.read_text())) == len(sites),
        120,
        "the coordinator to admit the approved sites",
        net.logs,
    )
    for site, facts in sites.items():
        net.start(
            f"site-{site}",
            _sangsaeng(
                "client",
                "start",
                "--data",
                facts["data"],
                "--site-dir",
                facts["dir"],
                "--runtime-port",
                str(_free_port()),
                "--max-epsilon",
                str(epsilon),
            ),
        )

    _step(5, f"a DP run (epsilon {epsilon} per site) under SecAgg+, {rounds} round(s); it records itself in the portal")
    run_dir = root / "runs" / "run-1"
    net.run(
        "run-1",
        _sangsaeng(
            "coordinator",
            "run",
            "--state",
            str(coordinator),
            "--task",
            task,
            "--rounds",
            str(rounds),
            "--min-sites",
            str(len(sites)),
            "--dp-epsilon",
            str(epsilon),
            "--secagg",
            "--key-dir",
            str(keys),
            "--out",
            str(run_dir),
            "--portal",
            portal,
            "--token-file",
            str(root / "coordinator.token"),
            "--federation",
            str(federation),
            "--version",
            "1.0.0",
        ),
    )
    results = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))

    _step(6, "the anchor approves and publishes release 1.0.0")
    release = next(r for r in ask("GET", f"/federations/{federation}/releases") if r["version"] == "1.0.0")
    for action in ("approve", "publish"):
        ask("POST", f"/releases/{release['id']}/{action}")

    _step(7, "each site pulls the signed release, verifies it and scores its own file")
    for site, facts in sites.items():
        net.run(f"pull-{site}", _sangsaeng("client", "pull-model", "--site-dir", facts["dir"]))
        model = next(Path(facts["dir"], "models").glob("*.zip"))
        scores = Path(facts["dir"]) / "predictions.csv"
        net.run(f"predict-{site}", _sangsaeng("client", "predict", str(model), facts["data"], "--out", str(scores)))
        facts["predictions"] = str(scores)
    primary = spec.primary_metric
    net.state |= {
        "status": "running",
        "run": {"dir": str(run_dir), "run_id": results["run_id"], "release_id": release["id"]},
    }
    net.save()
    figure = (results.get("federated") or {}).get("global", {}).get(primary)
    console.print(
        f"\nthe network is up: federated {primary} {figure:.3f}" if figure is not None else "\nthe network is up"
    )
    console.print(f"portal      {portal}", highlight=False)
    for role in ("anchor", "supplier", "auditor"):
        console.print(f"{role:<11} {logins[role]['email']}  password {logins[role]['password']}", highlight=False)
    console.print(f"files       {root} (logins and process ids in {root / STATE_FILE}, mode 0600)", highlight=False)
    console.print(f"stop it     sangsaeng network down --dir {directory}", highlight=False)


def _alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@app.command("down")
def down(
    directory: Annotated[Path, typer.Option("--dir", help="The directory `network up` used.")] = DEFAULT_DIR,
) -> None:
    """Stop every process `network up` started (whole process groups) and check that none is left."""
    path = directory.resolve() / STATE_FILE
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        fail(f"no network to stop in {directory} ({exc})")
    pids = {name: int(pid) for name, pid in state.get("processes", {}).items()}
    # Sites first, the coordinator next, the portal last: nothing waits on what is already gone.
    order = sorted(pids, key=lambda n: (not n.startswith("site-"), n == "portal"))
    for name in order:
        if _alive(pids[name]):
            os.killpg(pids[name], signal.SIGTERM)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids.values()):
        time.sleep(0.2)
    for name, pid in pids.items():
        if _alive(pid):
            console.print(f"{name} (process group {pid}) did not stop on SIGTERM: killed", highlight=False)
            os.killpg(pid, signal.SIGKILL)
    left = [name for name, pid in pids.items() if _alive(pid)]
    if left:
        fail(f"still running: {', '.join(left)}")
    path.rename(path.with_name("network.stopped.json"))
    console.print(f"stopped {len(pids)} process group(s): {', '.join(order)}", highlight=False)
