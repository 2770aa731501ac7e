"""Faults in a multi-site deployment with real processes on loopback (tests/deployment_net.py): a site's
machine killed mid-round, a stalled site, the coordinator's machine killed and resumed, a site revoked mid-run.

Tests run in file order on one network of their own (the revocation test comes last); the other
deployment tests are in tests/test_deployment.py, on a second network, so that the two files run
side by side under ``-n 2 --dist loadfile``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.deployment_net import (
    MARKS,
    TASK,
    Network,
    cli,
    coordinator_run,
    deployed_network,
    descendants,
    parent_pid,
    recorded_rounds,
    require_nginx,
    reset_ledgers,
    run_ended,
    start_coordinator,
    start_run,
    start_site,
    wait_until,
)

pytestmark = MARKS
require_nginx()

# The round deadline of the fault tests: long enough for a live site to train one round on CI's two
# cores while the other deployment file's network runs beside this one (20 s was tight at load 25+).
ROUND_TIMEOUT = 40


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    """The network these tests share (its own ports and directories)."""
    with deployed_network(tmp_path_factory.mktemp("faults")) as net:
        yield net


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
    reset_ledgers(network)
    run, out = start_run(network, "killed", "--rounds", "2", "--min-sites", "2", "--dp-epsilon", "8",
                         "--round-timeout", str(ROUND_TIMEOUT))  # fmt: skip
    wait_until(lambda: (out / "manifest.json").exists() or run.poll() is not None, 300, "the profiles")
    kill_machine(network, "l")
    before = activations(network, "l")
    wait_until(lambda: recorded_rounds(out) or run.poll() is not None, 300, "round 1")
    start_site(network, "l", network.sites["l"]["data"])
    results = run_ended(run, network, "killed")
    # The run waited for all three admitted sites (`coordinator.server_app.wait_for_nodes`): each was profiled.
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(manifest["sites"]) == ["line-h", "line-l", "line-m"] and "not_connected" not in manifest
    first, *later = results["rounds"]
    assert first["sites_trained"] == ["line-h", "line-m"] and first["sites_lost"] == ["line-l"]
    assert any(
        f"site 'line-l': no training reply within the round timeout of {ROUND_TIMEOUT} s" in f
        for f in first["failures"]
    )
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
    run, out = start_run(network, "stalled", "--rounds", "1", "--min-sites", "2", "--round-timeout", str(ROUND_TIMEOUT))
    wait_until(lambda: (out / "manifest.json").exists() or run.poll() is not None, 300, "the profiles")
    stalled = network.processes["site-m"]
    os.killpg(stalled.pid, signal.SIGSTOP)
    started = time.monotonic()
    try:
        wait_until(lambda: recorded_rounds(out) or run.poll() is not None, ROUND_TIMEOUT + 120, "round 1")
        waited = time.monotonic() - started
    finally:
        os.killpg(stalled.pid, signal.SIGCONT)
    results = run_ended(run, network, "stalled")
    (record,) = results["rounds"]
    assert record["sites_trained"] == ["line-h", "line-l"] and record["sites_lost"] == ["line-m"]
    assert ROUND_TIMEOUT <= waited < ROUND_TIMEOUT + 60, waited


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
            pid = parent_pid(pid)
        if pid == net.processes["coordinator"].pid:
            found.append(int(entry.name))
    return found


def kill_coordinator_machine(net: Network, run: subprocess.Popen) -> None:
    """SIGKILL everything on the anchor's machine at once, as a power cut would: `coordinator run`, the
    ServerApp, the SuperLink and its SuperExec, the fleet gateway and `coordinator up` (the portal lives on)."""
    coordinator = net.processes["coordinator"]
    doomed = [*descendants(coordinator.pid), coordinator.pid, *descendants(run.pid), run.pid]
    for pid in doomed:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for process in (coordinator, run):
        process.wait(timeout=30)


def test_a_coordinator_machine_killed_mid_run_resumes_to_the_uninterrupted_model(network: Network) -> None:
    # The anchor's machine dies after round 1's checkpoint (the sites are then evaluating round 1): the
    # ServerApp, `coordinator run`, the SuperLink, the gateway and `coordinator up`, all at once. `coordinator
    # up` starts again on the same state: the SuperLink's database (Flower's --database) still holds the node
    # registrations and the dead run; the sites' SuperNodes reconnect on their own. `--resume` stops the dead
    # Flower run and goes on from the checkpoint: same run id, round 2 from round 1's model and (no DP: training
    # is deterministic given the seed) the model of the same run uninterrupted, up to float32 summation order.
    coordinator_run(network, "uninterrupted", "--rounds", "2", "--min-sites", "3")
    run, out = start_run(network, "resumed", "--rounds", "2", "--min-sites", "3")
    wait_until(lambda: any(r.get("checkpoint") for r in recorded_rounds(out)) or run.poll() is not None, 300,
               "round 1's checkpoint")  # fmt: skip
    assert serverapp_processes(network), "no ServerApp process found"
    nodes = json.loads((network.state / "admitted.json").read_text())
    kill_coordinator_machine(network, run)
    assert not serverapp_processes(network) and not (out / "results.json").exists()
    killed = json.loads((out / "manifest.json").read_text())
    ready = lambda: network.log("coordinator").splitlines().count("ready")  # noqa: E731  (a line of its own)
    started = ready()
    start_coordinator(network)
    wait_until(lambda: ready() > started or network.processes["coordinator"].poll() is not None, 120,
               "the coordinator to start again")  # fmt: skip
    assert network.processes["coordinator"].poll() is None, network.log("coordinator")[-3000:]
    assert json.loads((network.state / "admitted.json").read_text()) == nodes  # nothing re-registered
    results = coordinator_run(network, "resumed", "--rounds", "2", "--min-sites", "3", "--resume")
    assert results["status"] == "completed" and results["run_id"] == killed["run_id"]
    # The restarted SuperLink still listed the killed run as running, and was told to stop it.
    said = (out / "run.log").read_text()
    assert f"stopped the interrupted Flower run {killed['flower_run_id']}" in said, said[:3000]
    assert json.loads((out / "manifest.json").read_text())["flower_run_id"] != killed["flower_run_id"]
    assert [r["round"] for r in results["rounds"]] == [1, 2]
    assert [sorted(r["sites_trained"]) for r in results["rounds"]] == [sorted(results["sites"])] * 2
    a = np.load(out / "checkpoints" / "round_002.npz")
    b = np.load(network.root / "runs" / "uninterrupted" / "checkpoints" / "round_002.npz")
    for key in b.files:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6)


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
