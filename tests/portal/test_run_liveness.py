"""A run whose coordinator died hard: shown as stalled, marked interrupted by the anchor, reopened by --resume.

A coordinator killed with SIGKILL (or a machine that lost power) never reports its run's end,
so the row would stay "running" for ever. Every report stamps `updated_at`; a running run
without a report for `run_stall_minutes` reads `stalled`; only the federation's anchor may mark
it interrupted (audited), and the coordinator's next report of it reopens it.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from portal.models import TrainingRun, utcnow
from tests.portal.factories import API, network, tenant
from tests.portal.test_run_progress import _post, _report, _runs
from tests.portal.test_web import csrf_of, sign_in


def _age(portal, run_id: int, minutes: float) -> None:  # type: ignore[no-untyped-def]
    """Move the run's last report `minutes` into the past (as if its coordinator had gone silent then)."""
    with portal.session() as session:
        row = session.get(TrainingRun, run_id)
        row.updated_at = utcnow() - timedelta(minutes=minutes)
        session.add(row)
        session.commit()


def _interrupt(client, run_id: int, who: dict[str, str], reason: str = "coordinator host lost power") -> Any:  # type: ignore[no-untyped-def]
    return client.post(f"{API}/runs/{run_id}/interrupt", headers=who, json={"reason": reason})


def test_a_running_run_without_a_report_for_the_stall_time_reads_stalled(portal, client):
    net = network(portal)
    run = _post(client, net, _report("quiet-1", 1)).json()
    assert run["stalled"] is False and run["updated_at"]
    _age(portal, run["id"], 14)
    assert client.get(f"{API}/runs/{run['id']}", headers=net.anchor.headers).json()["stalled"] is False
    _age(portal, run["id"], 16)  # past the default 15 minutes
    for who in (net.anchor.headers, net.coordinator, net.supplier_a.headers):
        seen = client.get(f"{API}/runs/{run['id']}", headers=who).json()
        assert seen["stalled"] is True and seen["status"] == "running", who
    assert [r["stalled"] for r in _runs(client, net)] == [True]
    # Its coordinator reports again: no longer stalled.
    again = _post(client, net, _report("quiet-1", 2))
    assert again.status_code == 201 and again.json()["stalled"] is False
    # An ended run is never stalled, however old.
    _post(client, net, _report("quiet-1", 3, "completed"))
    _age(portal, run["id"], 600)
    assert client.get(f"{API}/runs/{run['id']}", headers=net.anchor.headers).json()["stalled"] is False


def test_the_anchor_marks_a_dead_run_interrupted_and_resume_reopens_it(portal, client):
    net = network(portal)
    run = _post(client, net, _report("dead-1", 2)).json()
    _age(portal, run["id"], 30)
    marked = _interrupt(client, run["id"], net.anchor.headers)
    assert marked.status_code == 200, marked.text
    body = marked.json()
    assert body["status"] == "interrupted" and body["stalled"] is False
    assert body["interrupted_reason"].startswith(f"marked interrupted by {net.anchor.email} (anchor: ")
    assert "; last report at " in body["interrupted_reason"]
    assert body["interrupted_reason"].endswith(": coordinator host lost power")
    # Not twice, and no signed privacy report while its spend may still grow.
    again = _interrupt(client, run["id"], net.anchor.headers)
    assert again.status_code == 409 and "only a running run" in again.json()["detail"]
    report = {"report_b64": "e30=", "signature_b64": "AAAA", "public_key_pem": "x"}
    refused = client.post(f"{API}/runs/{run['id']}/privacy-report", headers=net.coordinator, json=report)
    assert refused.status_code == 409 and "still interrupted" in refused.json()["detail"], refused.text
    # `coordinator run --resume` reports the same run_ref: reopened, rounds only grow, then it completes.
    fewer = _post(client, net, _report("dead-1", 1))
    assert fewer.status_code == 409 and "2 round(s)" in fewer.json()["detail"]
    resumed = _post(client, net, _report("dead-1", 3))
    assert resumed.status_code == 201 and resumed.json()["id"] == run["id"]
    assert resumed.json()["status"] == "running" and resumed.json()["interrupted_reason"] is None
    assert _post(client, net, _report("dead-1", 4, "completed")).status_code == 201
    [held] = _runs(client, net)
    assert held["status"] == "completed" and [r["round"] for r in held["rounds"]] == [1, 2, 3, 4]
    trail = client.get(f"{API}/federations/{net.fid}/audit", headers=net.anchor.headers).json()
    actions = [e["action"] for e in trail["events"] if e["target"] == f"run {run['id']}"]
    assert sorted(actions) == sorted(["run.reported", "run.interrupted", "run.resumed", "run.updated"])
    [event] = [e for e in trail["events"] if e["action"] == "run.interrupted"]
    assert event["detail"]["reason"] == "coordinator host lost power" and event["detail"]["rounds"] == 2


def test_only_the_federations_anchor_marks_a_run_interrupted(portal, client):
    net = network(portal)
    run = _post(client, net, _report("dead-2", 1)).json()
    other = tenant(portal, "Mallory")
    refusals = {
        "coordinator": (net.coordinator, 403),
        "supplier": (net.supplier_a.headers, 403),
        "site": (net.site_a.headers, 403),
        "auditor": (net.auditor.headers, 403),  # read-only access, named
        "other anchor": (other.anchor.headers, 404),
        "other coordinator": (other.coordinator, 403),  # machine tokens: a route for signed-in people
    }
    for name, (who, status) in refusals.items():
        refused = _interrupt(client, run["id"], who)
        assert refused.status_code == status, (name, refused.text)
    # The other tenant's anchor reads this run exactly like a missing one.
    missing = _interrupt(client, 999_999, other.anchor.headers)
    theirs = _interrupt(client, run["id"], other.anchor.headers)
    assert theirs.json()["detail"] == missing.json()["detail"].replace("999999", str(run["id"]))
    [held] = _runs(client, net)
    assert held["status"] == "running" and held["interrupted_reason"] is None
    assert client.post(f"{API}/runs/{run['id']}/interrupt", json={}).status_code == 401  # no credentials


def test_a_completed_or_failed_run_cannot_be_marked_interrupted(portal, client):
    net = network(portal)
    for ref, end in (("ended-1", "completed"), ("ended-2", "failed")):
        run = _post(client, net, _report(ref, 2, end)).json()
        refused = _interrupt(client, run["id"], net.anchor.headers)
        assert refused.status_code == 409 and f"is {end}" in refused.json()["detail"], refused.text


def test_the_run_pages_show_a_stalled_run_and_the_anchors_button_marks_it(portal, client):
    net = network(portal)
    run = _post(client, net, _report("dead-3", 1)).json()
    _age(portal, run["id"], 20)
    supplier = sign_in(client, net.supplier_a.email).get(f"/runs/{run['id']}")
    assert 'data-action="stalled"' in supplier.text and 'data-action="interrupt"' not in supplier.text
    listing = client.get(f"/federations/{net.fid}/runs")
    assert 'data-stalled="dead-3"' in listing.text
    page = sign_in(client, net.anchor.email).get(f"/runs/{run['id']}")
    assert 'data-action="stalled"' in page.text and "coordinator run --resume RUN_DIR" in page.text
    assert 'data-action="interrupt"' in page.text
    forged = client.post(f"/runs/{run['id']}/interrupt", data={"csrf": "0" * 64, "reason": "x"}, follow_redirects=False)
    assert forged.status_code == 403
    assert _runs(client, net)[0]["status"] == "running"
    done = client.post(
        f"/runs/{run['id']}/interrupt", data={"csrf": csrf_of(page.text), "reason": "host gone"}, follow_redirects=False
    )
    assert done.status_code == 303 and done.headers["location"] == f"/runs/{run['id']}"
    after = client.get(f"/runs/{run['id']}")
    assert 'data-action="interrupted"' in after.text and "host gone" in after.text
    assert 'data-run-status="interrupted"' in after.text
    korean = client.get(f"/runs/{run['id']}", headers={"Accept-Language": "ko"})
    assert "중단됨" in korean.text
