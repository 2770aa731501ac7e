"""Multi-site deployment with real processes on loopback (tests/deployment_net.py): a run over TLS with
SuperNode authentication, its progress in the portal, a stock SuperNode, refused keys, plaintext and
foreign certificates, the fleet-only gateway, SecAgg+ with and without DP, and an image task.

Tests run in file order on one network of their own; the image-task test restarts the sites on
manifests of generated images and gives them their tables back. Faults (a site killed or stalled,
the coordinator killed and resumed, a site revoked) are in tests/test_deployment_faults.py, on a
second network, so that the two files run side by side under ``-n 2 --dist loadfile``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from client import portal_commands as pc
from client.node import check_bundle
from models.images import CACHE_FOLDER
from tests.deployment_net import (
    MARKS,
    TASK,
    Network,
    cli,
    coordinator_run,
    deployed_network,
    free_port,
    require_nginx,
    reset_ledgers,
    start_site,
    stop_sites,
)

pytestmark = MARKS
require_nginx()


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    """The network these tests share (its own ports and directories)."""
    with deployed_network(tmp_path_factory.mktemp("deploy")) as net:
        yield net


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
    reset_ledgers(network)
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
    # The union's ROC-AUC under per-site DP comes from noisy histograms: null (NaN) when the noise empties a class.
    roc = results["federated"]["global"]["roc_auc"]
    assert roc is None or 0.0 <= roc <= 1.0
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
