"""Multi-site deployment with real processes on loopback: the portal, `sangsaeng coordinator up`
(Flower SuperLink with TLS and SuperNode authentication behind the fleet-only nginx gateway)
and three `sangsaeng client start` sites (stock flower-supernode + our worker).

Tests run in file order on one shared network; the revocation test comes last. The image-task
test restarts the sites on manifests of generated images and gives them their tables back.
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
from pathlib import Path

import httpx
import numpy as np
import pytest

from client import portal_commands as pc
from client.node import check_bundle
from coordinator.simulation import write_site_files
from models.datasets import SAMPLES, sample_path
from models.images import CACHE_FOLDER
from models.schema import read_table
from models.tasks import get_task

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
    pytest.skip("nginx is not installed (the fleet gateway; .ci/run installs it)", allow_module_level=True)
os.environ["PATH"] = f"{os.environ['PATH']}:/usr/sbin"

TASK = "predictive-maintenance"
PASSWORD = "deploy-test-password-1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "coordinator.cli", *args]


def wait_until(predicate, timeout: float, what: str, interval: float = 0.3):  # type: ignore[no-untyped-def]
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

    def start(self, name: str, command: list[str], **kwargs) -> subprocess.Popen:  # type: ignore[no-untyped-def]
        log = (self.root / f"{name}.log").open("ab")
        process = subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True, **kwargs)  # fmt: skip
        self.processes[name] = process
        return process

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")

    def admitted(self) -> dict:
        path = self.state / "admitted.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    net = Network(tmp_path_factory.mktemp("deploy"))
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
        net.start("coordinator", cli(
            "coordinator", "up", "--state", str(net.state), "--federation", str(net.fid), "--portal", net.portal,
            "--token-file", str(net.root / "coordinator.token"), "--public-host", "127.0.0.1",
            "--public-port", str(net.public_port), "--internal-port", str(net.internal_port), "--sync-interval", "0.5",
            "--advertise", f"localhost:{net.public_port}",
        ))  # fmt: skip
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


def listening_addresses(port: int) -> set[str]:
    """Local addresses (hex, as the kernel lists them) with a listening TCP socket on `port`."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port_hex = local.rsplit(":", 1)
            if state == "0A" and int(port_hex, 16) == port:
                found.add(address)
    return found


def run_supernode(network: Network, log: Path, *args: str) -> tuple[int, str]:
    """A stock flower-supernode run to its end; its output goes to a file (its children hold pipes)."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["flower-supernode", "--max-retries", "1", "--port", str(free_port()), *args],
            env=network.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            code = process.wait(timeout=120)
        finally:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return code, log.read_text(errors="replace")


def coordinator_run(net: Network, name: str, *args: str, task: str = TASK, timeout: float = 400) -> dict:
    out = net.root / "runs" / name
    result = subprocess.run(
        cli("coordinator", "run", "--state", str(net.state), "--task", task, "--out", str(out),
            "--key-dir", str(net.root / "signing-key"), *args),
        env=net.env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    flower = (out / "flower.log").read_text(errors="replace") if (out / "flower.log").exists() else ""
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:] + flower[-3000:]
    (out / "run.log").write_text(result.stdout + result.stderr + flower)  # the command's lines, then Flower's log
    return json.loads((out / "results.json").read_text())


def test_run_completes_over_tls_with_node_authentication(network: Network) -> None:
    results = coordinator_run(network, "plain", "--rounds", "2", "--min-sites", "3")
    assert results["status"] == "completed" and results["runtime"] == "deployment"
    assert sorted(results["sites"]) == sorted(f"line-{n}" for n in network.sites)
    assert [sorted(r["sites_trained"]) for r in results["rounds"]] == [sorted(results["sites"])] * 2
    assert results["federated"]["global"]["roc_auc"] > 0.8
    assert (network.root / "runs" / "plain" / "metrics.png").stat().st_size > 1000
    # every site ran the membership-inference check on the final model at home and sent back its figure
    assert set(results["membership_inference"]) == set(results["sites"])
    # each site trained its local-only model on-site: "your line alone / with the network", printed too
    per_site = results["contribution"]["per_site"]
    assert all(0 <= s["alone"] <= 1 and 0 <= s["with_network"] <= 1 for s in per_site.values()), per_site
    assert "what each site gave" in (network.root / "runs" / "plain" / "run.log").read_text()
    # the sites ran the installed ClientApp in their warm worker, never the bundle
    assert "done" in network.log("site-h")


def test_a_run_reports_its_progress_to_the_portal_and_shows_its_rounds(network: Network) -> None:
    """`coordinator run --portal`: the ServerApp reports the run as running after each round, the end completes
    the same row; the terminal shows a line per round, Flower's own log goes to OUT/flower.log."""
    out = network.root / "runs" / "live"
    result = subprocess.run(
        cli("coordinator", "run", "--state", str(network.state), "--task", TASK, "--out", str(out), "--rounds", "2",
            "--min-sites", "3", "--key-dir", str(network.root / "signing-key"), "--portal", network.portal,
            "--federation", str(network.fid), "--token-file", str(network.root / "coordinator.token")),
        env=network.env, capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "round   1/2  sites 3" in result.stdout and "round   2/2  sites 3" in result.stdout, result.stdout
    flat = "".join(result.stdout.split())  # the console wraps long lines at its width
    assert f"Flower'slog:{out / 'flower.log'}" in flat and (out / "flower.log").stat().st_size > 0
    run_id = json.loads((out / "results.json").read_text())["run_id"]
    held = [r for r in network.anchor.get(f"/api/v1/federations/{network.fid}/runs").json() if r["run_ref"] == run_id]
    assert [(r["status"], len(r["rounds"])) for r in held] == [("completed", 2)]
    events = network.anchor.get(f"/api/v1/federations/{network.fid}/audit").json()["events"]
    first = [e for e in events if e["action"] == "run.reported" and e["detail"]["run_ref"] == run_id]
    assert [e["detail"]["status"] for e in first] == ["running"]  # reported while it ran, then completed in place
    token = (network.root / "coordinator.token").read_text().strip()
    assert token not in (out / "flower.log").read_text()


def test_a_stock_supernode_with_the_site_key_joins_and_trains(network: Network) -> None:
    site = network.sites["h"]
    stop_sites(network, "h")  # the site swaps `client start` for a hand-started stock SuperNode
    stock = network.start("stock-h", [
        "flower-supernode", "--superlink", f"localhost:{network.public_port}",
        "--root-certificates", str(network.state / "certs" / "ca.pem"),
        "--auth-supernode-private-key", str(site["dir"] / "site_key"),
        "--node-config", f'site="line-h" data-path="{site["data"]}"', "--port", str(free_port()),
    ])  # fmt: skip
    try:
        results = coordinator_run(network, "stock", "--rounds", "1", "--min-sites", "3")
        assert "line-h" in results["rounds"][0]["sites_trained"]
    finally:
        os.killpg(stock.pid, signal.SIGTERM)
        stock.wait(timeout=30)
        start_site(network, "h", site["data"])


def test_unknown_node_is_rejected(network: Network, tmp_path: Path) -> None:
    pc.generate_site_key(tmp_path)  # a key no portal admitted
    code, output = run_supernode(
        network, tmp_path / "unknown.log", "--superlink", f"localhost:{network.public_port}",
        "--root-certificates", str(network.state / "certs" / "ca.pem"),
        "--auth-supernode-private-key", str(tmp_path / "site_key"),
    )  # fmt: skip
    assert code != 0
    assert "Failed to activate SuperNode" in output


def test_plaintext_and_wrong_certificate_are_refused(network: Network, tmp_path: Path) -> None:
    # a SuperNode asked to speak plaintext gets no fleet service
    code, output = run_supernode(
        network, tmp_path / "plain.log", "--insecure", "--superlink", f"localhost:{network.public_port}",
        "--auth-supernode-private-key", str(network.sites["h"]["dir"] / "site_key"),
    )  # fmt: skip
    assert code != 0, output
    plain = httpx.post(f"http://127.0.0.1:{network.public_port}/v1/fleet/activate-node", content=b"x")
    assert plain.status_code == 400 and "HTTPS" in plain.text  # nginx: plain HTTP sent to an HTTPS port
    # a client that trusts another CA refuses the server's certificate
    from coordinator.pki import NetworkCerts, init_network

    other = NetworkCerts(tmp_path / "other")
    init_network(other, name="Impostor", hosts=["localhost"])
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"https://localhost:{network.public_port}/v1/fleet/", verify=str(other.ca_cert))


def test_supplier_reaches_only_the_fleet_api(network: Network) -> None:
    ca = str(network.state / "certs" / "ca.pem")
    base = f"https://localhost:{network.public_port}"
    for path in ("/v1/control/list-runs", "/v1/control/register-node", "/v1/runtime/pull-app-inputs", "/docs"):
        response = httpx.post(base + path, content=b"{}", verify=ca)
        assert response.status_code == 403 and "only the Fleet API" in response.text, path
    fleet = httpx.post(base + "/v1/fleet/activate-node", content=b"{}", verify=ca)
    assert fleet.status_code != 403 or "only the Fleet API" not in fleet.text  # reached Flower itself
    assert listening_addresses(network.internal_port) == {
        "0100007F"
    }  # the Control API is on the anchor's loopback only


def _reset_ledgers(network: Network) -> None:
    for site in network.sites.values():
        shutil.rmtree(Path(site["data"]).parent / ".sangsaeng-privacy", ignore_errors=True)


def test_secagg_sums_what_plain_aggregation_averages_and_carries_dp(network: Network) -> None:
    # SecAgg+ hides each site's update and sums them: without DP (training is then deterministic
    # given the seed) its round 1 equals the plain run's round 1 (test_run_completes_... above).
    secure = coordinator_run(network, "secagg", "--rounds", "1", "--min-sites", "3", "--secagg")
    assert sorted(secure["rounds"][0]["sites_trained"]) == sorted(secure["sites"])
    a = np.load(network.root / "runs" / "secagg" / "checkpoints" / "round_001.npz")
    b = np.load(network.root / "runs" / "plain" / "checkpoints" / "round_001.npz")
    for key in a.files:  # SecAgg+ quantises to 16 / 2**22 per unit: equal up to that
        np.testing.assert_allclose(a[key], b[key], atol=5e-5, rtol=0)
    assert "Secure aggregation completed" in (network.root / "runs" / "secagg" / "run.log").read_text()
    assert "Secure aggregation" not in (network.root / "runs" / "plain" / "run.log").read_text()
    # With per-site DP-SGD under SecAgg+ (fresh noise: no two DP runs are alike), each site's
    # ledger and the signed report account the profile and the round, within the target.
    _reset_ledgers(network)
    private = coordinator_run(network, "dp-secagg", "--rounds", "1", "--min-sites", "3", "--dp-epsilon", "3",
                              "--secagg")  # fmt: skip
    sites = private["privacy"]["sites"]
    assert sorted(sites) == sorted(private["sites"])
    assert all(0 < figures["epsilon"] <= 3.0 + 1e-9 for figures in sites.values()), sites
    assert "Secure aggregation completed" in (network.root / "runs" / "dp-secagg" / "run.log").read_text()
    assert (network.root / "runs" / "dp-secagg" / "privacy" / "report.json.sig").exists()


IMAGE_SPEC = """
[task]
name = "cell-brightness"
kind = "binary"
label = "defective"
id_columns = ["cell_type"]

[task.image]
column = "image"
size = [16, 16]
channels = 1
"""


def test_an_image_task_trains_on_the_same_sites_under_per_site_dp(network: Network) -> None:
    # The sites swap their tables for manifests of images (16x16 grayscale PNGs made here,
    # brighter when defective) and the same network trains the cnn, two rounds of DP-SGD, from
    # a task spec file: the spec travels in the run config, the images never leave the sites.
    from models.architectures import weight_shapes
    from privacy.ledger import PrivacyLedger
    from privacy.report import verify_report
    from tests.factories import image_manifest

    spec = network.root / "cells.toml"
    spec.write_text(IMAGE_SPEC)
    manifests = {name: image_manifest(network.root / "images" / name, 40, seed=i, size=(16, 16))
                 for i, name in enumerate(sorted(network.sites))}  # fmt: skip
    with manifests["h"].open("a") as listed:  # one image the manifest names is missing: skipped and named
        listed.write("gone.png,3,1,mono\n")
    stop_sites(network, *network.sites)
    for name in network.sites:
        start_site(network, name, manifests[name])
    try:
        results = coordinator_run(network, "images", "--rounds", "2", "--min-sites", "3", "--dp-epsilon", "8",
                                  "--hidden", "4,8", "--batch-size", "16", "--local-epochs", "1",
                                  task=str(spec))  # fmt: skip
    finally:  # the tables back for the tests that follow
        stop_sites(network, *network.sites)
        for name, site in network.sites.items():
            start_site(network, name, site["data"])
    out = network.root / "runs" / "images"
    assert results["status"] == "completed" and results["runtime"] == "deployment"
    assert results["task"] == {"name": "cell-brightness", "kind": "binary", "primary_metric": "roc_auc"}
    assert [sorted(r["sites_trained"]) for r in results["rounds"]] == [sorted(results["sites"])] * 2
    assert 0.0 <= results["federated"]["global"]["roc_auc"] <= 1.0
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["config"]["model"], manifest["config"]["hidden"]) == ("cnn", [4, 8])
    with np.load(out / "checkpoints" / "round_002.npz") as npz:
        shapes = [npz[k].shape for k in sorted((k for k in npz.files if k.startswith("w")), key=lambda k: int(k[1:]))]
    assert shapes == weight_shapes("cnn", 1, (4, 8), 1)
    # Each site's image report, over the real network: counts and the site's own file names.
    images = results["site_images"]
    assert images["line-l"] == images["line-m"] == {"images": 40, "skipped": 0, "first_skipped": [],
                                                    "converted": {}}  # fmt: skip
    assert (images["line-h"]["images"], images["line-h"]["skipped"]) == (41, 1)
    assert "data row 41: image file not found" in images["line-h"]["first_skipped"][0]
    assert "gone.png" in images["line-h"]["first_skipped"][0]
    # The signed report recomputes every epsilon; each site's own ledger holds exactly that spend.
    report = verify_report(out / "privacy" / "report.json", out / "privacy" / "coordinator.pub.pem")
    for name, path in manifests.items():
        site = f"line-{name}"
        entry = report["sites"][site]
        assert [r["round"] for r in entry["rounds"]] == [1, 2]
        assert 0 < entry["epsilon"] <= 8.0 * (1 + 1e-9)
        assert results["privacy"]["sites"][site]["epsilon"] == pytest.approx(entry["epsilon"], rel=1e-12)
        ledger = PrivacyLedger(path.parent / ".sangsaeng-privacy" / f"{site}.ledger.json", site)
        assert ledger.spent(delta=entry["delta"]) == pytest.approx(entry["epsilon"], rel=1e-9)
        # decoded once at the site, next to its manifest; both rounds read the cache
        assert len(list((path.parent / CACHE_FOLDER).glob("*.npy"))) == 40


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


def training_entries(net: Network, name: str, run_id: str) -> list[dict]:
    """Site `name`'s own ledger: the DP-SGD rounds it recorded for run `run_id`."""
    from privacy.ledger import PrivacyLedger

    site = f"line-{name}"
    ledger = PrivacyLedger(Path(net.sites[name]["data"]).parent / ".sangsaeng-privacy" / f"{site}.ledger.json", site)
    return [e for e in ledger.load()["entries"] if e["run_id"] == run_id and "mechanism" not in e and e["round"] >= 1]


def kill_machine(net: Network, name: str) -> None:
    """SIGKILL site `name`'s `client start` and its SuperNode (a session of its own), as a power cut would."""
    worker = net.processes[f"site-{name}"]
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if entry.name.isdigit() and int(fields[1]) == worker.pid:  # a child: the SuperNode
            os.killpg(int(entry.name), signal.SIGKILL)
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait(timeout=30)


def activations(net: Network, name: str) -> int:
    """How many times site `name`'s SuperNode was activated by the SuperLink (its log names the node id)."""
    return (net.sites[name]["dir"] / "supernode.log").read_text(errors="replace").count("SuperNode ID:")


def test_a_site_killed_mid_round_is_left_out_its_ledger_holds_what_it_trained_and_it_comes_back(
    network: Network,
) -> None:
    # Site l's machine dies as round 1 begins: the round waits out its deadline, completes with h and m,
    # and the coordinator accounts only the releases that reached it. Restarted, l is let in again once
    # the SuperLink has missed its old session's heartbeats (Flower: 2 x 30 s) and trains in later runs.
    _reset_ledgers(network)
    run, out = start_run(network, "killed", "--rounds", "2", "--min-sites", "2", "--dp-epsilon", "8",
                         "--round-timeout", "20")  # fmt: skip
    wait_until(lambda: (out / "manifest.json").exists() or run.poll() is not None, 300, "the profiles")
    kill_machine(network, "l")
    before = activations(network, "l")
    wait_until(lambda: recorded_rounds(out) or run.poll() is not None, 300, "round 1")
    start_site(network, "l", network.sites["l"]["data"])
    results = run_ended(run, network, "killed")
    first, *later = results["rounds"]
    assert first["sites_trained"] == ["line-h", "line-m"] and first["sites_lost"] == ["line-l"]
    assert any("site 'line-l': no training reply within the round timeout of 20 s" in f for f in first["failures"])
    assert all({"line-h", "line-m"} <= set(r["sites_trained"]) for r in later)
    report = json.loads((out / "privacy" / "report.json").read_text())
    assert report["replies_lost"]["sites"]["line-l"]["training"][0] == 1
    assert "own ledger is the authority" in report["replies_lost"]["note"]
    # The site's own ledger is the authority: the rounds the coordinator heard of from l are in it with
    # the same epsilon; a round it recorded but whose reply was lost is there too, and only those.
    manifest_rounds = recorded_rounds(out)
    entries = training_entries(network, "l", results["run_id"])
    reported = {r["round"]: r["dp"]["line-l"]["epsilon"] for r in manifest_rounds if "line-l" in r.get("dp", {})}
    lost = {r["round"] for r in manifest_rounds if "line-l" in r.get("sites_lost", [])}
    assert set(reported) <= {e["round"] for e in entries} <= set(reported) | lost
    for entry in entries:
        if entry["round"] in reported:
            assert entry["epsilon"] == pytest.approx(reported[entry["round"]], rel=1e-12)
    for name in ("h", "m"):  # the others: ledger and coordinator agree round for round
        site = f"line-{name}"
        assert [e["round"] for e in training_entries(network, name, results["run_id"])] == [
            r["round"] for r in manifest_rounds if site in r.get("dp", {})
        ]
    # back: `client start` retried while the SuperLink still counted the dead session online
    wait_until(lambda: activations(network, "l") > before, 180, "site l to be let in again")  # it trains next test


def test_a_stalled_site_is_left_out_when_the_deadline_passes(network: Network) -> None:
    # Site m's worker freezes (SIGSTOP; its SuperNode, a session of its own, still answers heartbeats)
    # as round 1 begins and thaws once the round completed without it: only the deadline ended the wait.
    # Site l, killed in the test before, trains again here.
    run, out = start_run(network, "stalled", "--rounds", "1", "--min-sites", "2", "--round-timeout", "20")
    wait_until(lambda: (out / "manifest.json").exists() or run.poll() is not None, 300, "the profiles")
    stalled = network.processes["site-m"]
    os.killpg(stalled.pid, signal.SIGSTOP)
    started = time.monotonic()
    try:
        wait_until(lambda: recorded_rounds(out) or run.poll() is not None, 120, "round 1")
        waited = time.monotonic() - started
    finally:
        os.killpg(stalled.pid, signal.SIGCONT)
    results = run_ended(run, network, "stalled")
    (record,) = results["rounds"]
    assert record["sites_trained"] == ["line-h", "line-l"] and record["sites_lost"] == ["line-m"]
    assert 20 <= waited < 55, waited


def _parent(pid: int) -> int:
    try:
        return int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def serverapp_processes(net: Network) -> list[int]:
    """Process ids of the ServerApp processes (`flwr-serverapp`) started below this network's `coordinator up`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"flwr-serverapp" not in command:
            continue
        pid = int(entry.name)
        while pid > 1 and pid != net.processes["coordinator"].pid:
            pid = _parent(pid)
        if pid == net.processes["coordinator"].pid:
            found.append(int(entry.name))
    return found


@pytest.mark.skip(
    reason="blocked: after the ServerApp is SIGKILLed the sites' workers stop taking tasks (the "
    "resumed run's profile request is received by the SuperNodes but never served); not yet diagnosed"
)
def test_a_killed_coordinator_resumes_to_the_uninterrupted_model(network: Network) -> None:
    # `coordinator run` and its ServerApp die after round 1's checkpoint; `--resume` goes on from it:
    # same run id, round 2 from round 1's model, and (no DP: training is deterministic given the seed)
    # the model of the uninterrupted run `plain` (test_run_completes_...), up to float32 summation order.
    run, out = start_run(network, "resumed", "--rounds", "2", "--min-sites", "3")
    wait_until(lambda: any(r.get("checkpoint") for r in recorded_rounds(out)) or run.poll() is not None, 300,
               "round 1's checkpoint")  # fmt: skip
    serverapps = serverapp_processes(network)
    assert serverapps, "no ServerApp process found"
    for pid in serverapps:
        os.kill(pid, signal.SIGKILL)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait(timeout=30)
    first_id = json.loads((out / "manifest.json").read_text())["run_id"]
    assert not (out / "results.json").exists()
    results = coordinator_run(network, "resumed", "--rounds", "2", "--min-sites", "3", "--resume")
    assert results["status"] == "completed" and results["run_id"] == first_id
    assert [r["round"] for r in results["rounds"]] == [1, 2]
    a = np.load(out / "checkpoints" / "round_002.npz")
    b = np.load(network.root / "runs" / "plain" / "checkpoints" / "round_002.npz")
    for key in b.files:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_bundle_check_refuses_code_and_other_versions() -> None:
    import io
    import zipfile

    def bundle(files: dict[str, str]) -> bytes:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as zf:
            for name, text in files.items():
                zf.writestr(name, text)
        return buffer.getvalue()

    from sangsaeng.identity import sangsaeng_version

    good = '[tool.flwr.app.components]\nclientapp = "client.client_app:app"\n'
    version = sangsaeng_version()
    assert check_bundle("sangsaeng/sangsaeng", version, bundle({"pyproject.toml": good})) is None
    assert "asks for sangsaeng/sangsaeng 9.9.9" in check_bundle("sangsaeng/sangsaeng", "9.9.9", bundle({}))
    with_code = bundle({"pyproject.toml": good, "client/client_app.py": "import os"})
    assert "carries code" in check_bundle("sangsaeng/sangsaeng", version, with_code)
    evil = bundle({"pyproject.toml": '[tool.flwr.app.components]\nclientapp = "evil:app"\n'})
    assert "names ClientApp 'evil:app'" in check_bundle("sangsaeng/sangsaeng", version, evil)


def test_revoked_site_cannot_join_the_next_round(network: Network) -> None:
    out = network.root / "runs" / "revoke"
    run = subprocess.Popen(
        cli("coordinator", "run", "--state", str(network.state), "--task", TASK, "--out", str(out), "--rounds", "5",
            "--min-sites", "2", "--key-dir", str(network.root / "signing-key")),
        env=network.env, stdout=(network.root / "revoke-run.log").open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    manifest = out / "manifest.json"
    wait_until(lambda: manifest.exists() and json.loads(manifest.read_text())["rounds"], 300, "round 1")
    revoked = network.sites["m"]
    response = network.anchor.post(f"/api/v1/memberships/{revoked['membership']}/revoke",
                                   json={"reason": "left the supply chain"})  # fmt: skip
    assert response.status_code == 200, response.text
    revoked_at_round = len(json.loads(manifest.read_text())["rounds"])
    wait_until(lambda: "line-m" not in {e["site"] for e in network.admitted().values()}, 30, "the key's removal")
    assert run.wait(timeout=400) == 0, (network.root / "revoke-run.log").read_text()[-3000:]
    rounds = json.loads((out / "results.json").read_text())["rounds"]
    assert len(rounds) == 5
    later = [r for r in rounds if r["round"] > revoked_at_round + 1]
    assert later and all("line-m" not in r["sites_trained"] for r in later)
    assert all(sorted(r["sites_trained"]) == ["line-h", "line-l"] for r in later)
    assert "removed site 'line-m'" in network.log("coordinator")
