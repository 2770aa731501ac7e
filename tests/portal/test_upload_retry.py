"""A deployment run records itself in the portal exactly once, even when the portal is away for a while.

Real parts: the portal app behind a real uvicorn server on a loopback port that is closed at
first (connection refused, as for a portal that is down) and opened mid-retry; real run
directories written by the coordinator's RunRecorder with a signed privacy report.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import uvicorn

from portal.uploader import QUEUE_FILE, queue_upload, queued_upload, upload_run, upload_with_retry
from sangsaeng.errors import PortalRequestError
from sangsaeng.portal_api import PortalAPI
from tests.conftest import explain, sangsaeng
from tests.portal.factories import API, network
from tests.portal.test_site_client import make_run_dir

DP = {"alpha-line-1": {"budget_epsilon": 8.0}, "beta-line-1": {"budget_epsilon": 8.0}}  # a real signed report


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def _serve(app, port: int) -> Iterator[str]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _held(client, net) -> tuple[list, list]:
    runs = client.get(f"{API}/federations/{net.fid}/runs", headers=net.anchor.headers).json()
    releases = client.get(f"{API}/federations/{net.fid}/releases", headers=net.anchor.headers).json()
    return runs, releases


def test_an_upload_repeated_after_a_lost_answer_leaves_one_run_one_report_one_release(portal, client, tmp_path):
    net = network(portal)
    run_dir, _ = make_run_dir(tmp_path, privacy=DP)
    client.headers.update(net.coordinator)
    first_run, first_release = upload_run(client, net.fid, run_dir, version="1.0.0")
    again_run, again_release = upload_run(client, net.fid, run_dir, version="1.0.0")  # the answer was lost: again
    client.headers.pop("Authorization")
    assert (again_run["id"], again_release["id"]) == (first_run["id"], first_release["id"])
    assert first_run["privacy_report"]["sha256"] and again_run["privacy_report"] == {"already_stored": True}
    stored = client.get(f"{API}/runs/{first_run['id']}/privacy-report", headers=net.anchor.headers)
    assert stored.status_code == 200 and stored.json()["sha256"] == first_run["privacy_report"]["sha256"]
    runs, releases = _held(client, net)
    assert [r["id"] for r in runs] == [first_run["id"]] and [r["id"] for r in releases] == [first_release["id"]]

    # Another run cannot take the version this run's model holds: still refused.
    other, _ = make_run_dir(tmp_path / "other", privacy=None)
    with pytest.raises(PortalRequestError, match="409"):
        upload_run(PortalAPI("http://testserver", net.coordinator["Authorization"][7:], http=client), net.fid, other,
                   version="1.0.0")  # fmt: skip


def test_an_upload_waits_for_the_portal_and_lands_once_when_it_is_back(app, portal, client, tmp_path):
    net = network(portal)
    token = net.coordinator["Authorization"].removeprefix("Bearer ")
    run_dir, _ = make_run_dir(tmp_path, privacy=DP)
    port = _free_port()
    queue_upload(run_dir, portal=f"http://127.0.0.1:{port}", federation=net.fid, version="1.1.0")
    events: list[str] = []
    outcome: dict = {}

    def upload() -> None:
        outcome["result"] = upload_with_retry(run_dir, token, retry_for=60, first_wait=0.3, max_wait=1.0,
                                              on_event=events.append)  # fmt: skip

    worker = threading.Thread(target=upload)
    worker.start()
    deadline = time.monotonic() + 30
    while not any("unreachable" in e for e in events):  # the portal is down: refused connections, retried
        assert time.monotonic() < deadline and worker.is_alive(), events
        time.sleep(0.05)
    assert queued_upload(run_dir)["status"] == "pending"
    with _serve(app, port):
        worker.join(timeout=60)
    assert not worker.is_alive() and outcome["result"] is not None, events
    run, release = outcome["result"]
    record = json.loads((run_dir / QUEUE_FILE).read_text())
    assert record["status"] == "done" and record["attempts"] >= 2 and record["run_id"] == run["id"]
    runs, releases = _held(client, net)
    assert [r["id"] for r in runs] == [run["id"]] and [r["version"] for r in releases] == ["1.1.0"]
    assert run["privacy_report"]["sha256"]


def test_an_upload_still_queued_when_time_runs_out_is_finished_by_upload_run(app, portal, client, tmp_path):
    net = network(portal)
    token = net.coordinator["Authorization"].removeprefix("Bearer ")
    run_dir, _ = make_run_dir(tmp_path)
    port = _free_port()
    queue_upload(run_dir, portal=f"http://127.0.0.1:{port}", federation=net.fid, version="2.0.0")
    events: list[str] = []
    assert upload_with_retry(run_dir, token, retry_for=0.5, first_wait=0.2, on_event=events.append) is None
    assert "stays queued" in events[-1] and f"portal upload-run {run_dir}" in events[-1]
    assert queued_upload(run_dir)["status"] == "pending"
    with _serve(app, port):
        result = sangsaeng("portal", "upload-run", str(run_dir), "--token", token)  # everything else from the queue
        assert result.exit_code == 0, explain(result)
        assert "release 2.0.0" in result.output
        again = sangsaeng("portal", "upload-run", str(run_dir), "--token", token)
        assert again.exit_code == 0, explain(again)
    assert queued_upload(run_dir)["status"] == "done"
    runs, releases = _held(client, net)
    assert len(runs) == 1 and [r["version"] for r in releases] == ["2.0.0"]


def test_a_refusal_is_not_retried_and_is_recorded(app, portal, client, tmp_path):
    net = network(portal)
    other = network(portal)  # another anchor's federation: the coordinator token does not reach it
    token = net.coordinator["Authorization"].removeprefix("Bearer ")
    run_dir, _ = make_run_dir(tmp_path)
    port = _free_port()
    with _serve(app, port):
        queue_upload(run_dir, portal=f"http://127.0.0.1:{port}", federation=other.fid, version="1.0.0")
        started = time.monotonic()
        with pytest.raises(PortalRequestError, match="404"):
            upload_with_retry(run_dir, token, retry_for=30, first_wait=5)
        assert time.monotonic() - started < 5  # no waiting: a refusal does not get better by asking again
    record = queued_upload(run_dir)
    assert record["status"] == "refused" and "404" in record["last_error"] and record["attempts"] == 1


def test_a_run_that_reported_its_progress_is_completed_in_the_same_row_exactly_once(portal, client, tmp_path):
    from portal.uploader import report_progress
    from sangsaeng.files import read_checked_json, write_checked_json

    net = network(portal)
    run_dir, _ = make_run_dir(tmp_path, privacy=DP)
    finished = read_checked_json(run_dir / "manifest.json")
    first = {**finished["rounds"][0], "dp": {s: {"epsilon": 1.25, "budget_epsilon": 8.0} for s in DP}}
    write_checked_json(run_dir / "manifest.json", {**finished, "status": "running", "rounds": [first]})
    client.headers.update(net.coordinator)
    live = report_progress(client, net.fid, run_dir)
    assert live["status"] == "running" and [r["round"] for r in live["rounds"]] == [1]
    assert live["privacy"]["alpha-line-1"]["epsilon"] == 1.25  # spent so far, from the manifest

    write_checked_json(run_dir / "manifest.json", finished)
    run, release = upload_run(client, net.fid, run_dir, version="1.0.0")
    again, _ = upload_run(client, net.fid, run_dir, version="1.0.0")  # the answer was lost: again
    with pytest.raises(PortalRequestError, match="409"):  # a late progress report does not reopen it
        report_progress(client, net.fid, run_dir)
    client.headers.pop("Authorization")
    assert run["id"] == again["id"] == live["id"] and run["status"] == "completed"
    runs, releases = _held(client, net)
    assert [(r["id"], r["status"], len(r["rounds"])) for r in runs] == [(live["id"], "completed", 2)]
    assert [r["id"] for r in releases] == [release["id"]]
    assert runs[0]["privacy"]["alpha-line-1"]["epsilon"] != 1.25  # the signed report's spend replaced the progress
