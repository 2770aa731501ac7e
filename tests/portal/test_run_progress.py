"""A run reports its progress while it runs: one row, updated by its coordinator only, frozen once it ends.

The coordinator reports status "running" after each round and the same run_ref updates the
same row; a completed or failed run is immutable (409 as before). Everyone else, the other
tenant's coordinator included, is refused and the row stays as it was.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.portal.factories import API, contribution, network, tenant
from tests.portal.test_web import sign_in

SITES = ["alpha-line-1", "beta-line-1"]


def _report(ref: str, rounds: int, status: str = "running", **extra: Any) -> dict[str, Any]:
    """A run report with `rounds` rounds; DP spend growing by 0.5 a round for each site."""
    spent = [0.5 * r for r in range(1, rounds + 1)]
    return {
        "run_ref": ref,
        "status": status,
        "sites": SITES,
        "rounds": [{"round": r, "metrics": {"roc_auc": 0.6 + 0.05 * r}} for r in range(1, rounds + 1)],
        "privacy": {site: {"epsilon": spent[-1], "budget_epsilon": 8.0, "epsilon_by_round": spent} for site in SITES},
        **extra,
    }


def _post(client, net, body: dict[str, Any], who: dict[str, str] | None = None):
    return client.post(f"{API}/federations/{net.fid}/runs", headers=who or net.coordinator, json=body)


def _runs(client, net) -> list[dict[str, Any]]:
    return client.get(f"{API}/federations/{net.fid}/runs", headers=net.anchor.headers).json()


def test_a_run_reported_running_then_completed_is_one_row(portal, client):
    net = network(portal)
    first = _post(client, net, _report("live-1", 1))
    assert first.status_code == 201, first.text
    assert first.json()["status"] == "running" and len(first.json()["rounds"]) == 1
    second = _post(client, net, _report("live-1", 2))
    assert second.status_code == 201, second.text
    done = _post(client, net, _report("live-1", 3, "completed"))
    assert done.status_code == 201, done.text
    assert first.json()["id"] == second.json()["id"] == done.json()["id"]
    [held] = _runs(client, net)
    assert held["id"] == first.json()["id"] and held["status"] == "completed"
    assert [r["round"] for r in held["rounds"]] == [1, 2, 3]
    assert held["final_metrics"]["roc_auc"] == pytest.approx(0.75)
    assert held["privacy"]["alpha-line-1"]["epsilon"] == pytest.approx(1.5)
    trail = client.get(f"{API}/federations/{net.fid}/audit", headers=net.anchor.headers).json()
    actions = [e["action"] for e in trail["events"]]
    assert actions.count("run.reported") == 1 and actions.count("run.updated") == 1  # reported, then its end


@pytest.mark.parametrize("end", ["completed", "failed"])
def test_a_run_that_ended_is_immutable(portal, client, end):
    net = network(portal)
    assert _post(client, net, _report("live-2", 1)).status_code == 201
    assert _post(client, net, _report("live-2", 2, end)).status_code == 201
    for again in (_report("live-2", 3), _report("live-2", 3, "completed"), _report("live-2", 2, end)):
        refused = _post(client, net, again)
        assert refused.status_code == 409 and "has already been reported" in refused.json()["detail"], refused.text
    [held] = _runs(client, net)
    assert held["status"] == end and len(held["rounds"]) == 2


def test_a_running_run_cannot_lose_rounds_change_its_sites_or_carry_scores(portal, client):
    net = network(portal)
    assert _post(client, net, _report("live-3", 2)).status_code == 201
    fewer = _post(client, net, _report("live-3", 1))
    assert fewer.status_code == 409 and "2 round(s)" in fewer.json()["detail"], fewer.text
    other_sites = _post(client, net, {**_report("live-3", 3), "sites": ["alpha-line-1"], "privacy": None})
    assert other_sites.status_code == 409 and "sites" in other_sites.json()["detail"], other_sites.text
    scored = _post(client, net, _report("live-3", 3, contribution=contribution({s: (1000, 0.1) for s in SITES})))
    assert scored.status_code == 400 and "running" in scored.json()["detail"], scored.text
    [held] = _runs(client, net)
    assert held["status"] == "running" and len(held["rounds"]) == 2 and held["sites"] == SITES


def test_a_running_run_takes_no_signed_privacy_report(portal, client):
    net = network(portal)
    run = _post(client, net, _report("live-4", 1)).json()
    body = {"report_b64": "e30=", "signature_b64": "AAAA", "public_key_pem": "x"}
    refused = client.post(f"{API}/runs/{run['id']}/privacy-report", headers=net.coordinator, json=body)
    assert refused.status_code == 409 and "still running" in refused.json()["detail"], refused.text


def test_only_the_federations_coordinator_updates_a_running_run(portal, client):
    net = network(portal)
    run = _post(client, net, _report("live-5", 1)).json()
    for who in (net.anchor.headers, net.supplier_a.headers, net.auditor.headers, net.site_a.headers):
        refused = _post(client, net, _report("live-5", 3, "completed"), who)
        assert refused.status_code in (403, 404), (who, refused.text)
    other = tenant(portal, "Mallory")
    refused = _post(client, net, _report("live-5", 3, "failed"), other.coordinator)
    assert refused.status_code in (403, 404), refused.text
    # The other tenant's coordinator reporting the same run_ref in its own federation makes its own row.
    own = client.post(
        f"{API}/federations/{other.fid}/runs",
        headers=other.coordinator,
        json={**_report("live-5", 3, "failed"), "sites": [other.site.site_name], "privacy": None},
    )
    assert own.status_code == 201 and own.json()["id"] != run["id"], own.text
    [held] = _runs(client, net)
    assert held["status"] == "running" and len(held["rounds"]) == 1


def test_the_run_page_shows_a_running_run_and_refreshes_only_while_it_runs(portal, client):
    net = network(portal)
    run = _post(client, net, _report("live-6", 2)).json()
    sign_in(client, net.anchor.email)
    page = client.get(f"/runs/{run['id']}").text
    assert 'http-equiv="refresh"' in page and 'data-run-status="running"' in page
    assert "2 rounds" in page and "alpha-line-1" in page and "1.00" in page  # epsilon so far
    client.cookies.clear()
    assert _post(client, net, _report("live-6", 3, "completed")).status_code == 201
    sign_in(client, net.anchor.email)
    page = client.get(f"/runs/{run['id']}").text
    assert 'http-equiv="refresh"' not in page and 'data-run-status="completed"' in page
    sign_in(client, net.supplier_a.email)
    page = client.get(f"/runs/{run['id']}").text
    assert "alpha-line-1" in page and "beta-line-1" not in page


def test_the_serverapps_progress_reports_each_round_and_a_failed_report_never_stops_the_run(
    portal, client, tmp_path, caplog
):
    from flwr.common.config import fuse_dicts

    from coordinator.deploy import DeploymentLayout, write_app_dir
    from coordinator.portal_progress import PortalProgress, PortalTarget
    from coordinator.progress import RunObserver
    from sangsaeng.files import read_checked_json, write_checked_json
    from tests.portal.test_site_client import make_run_dir

    net = network(portal)
    run_dir, _ = make_run_dir(tmp_path)
    manifest = read_checked_json(run_dir / "manifest.json")
    write_checked_json(run_dir / "manifest.json", {**manifest, "status": "running"})
    token = net.coordinator["Authorization"].removeprefix("Bearer ")
    token_file = tmp_path / "coordinator.token"
    token_file.write_text(token + "\n")
    target = PortalTarget(url="http://testserver", federation=net.fid, token_file=token_file)

    # What travels to the sites: the token file's path, never the token; Flower keeps the keys.
    run_config = target.to_run_config()
    assert token not in repr(run_config) and PortalTarget.from_run_config(run_config) == target
    app_dir = write_app_dir(DeploymentLayout(tmp_path / "state"))
    import tomllib

    declared = tomllib.loads((app_dir / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert PortalTarget.from_run_config(declared) is None  # off by default
    assert PortalTarget.from_run_config(fuse_dicts(declared, run_config)) == target

    progress = PortalProgress(RunObserver(), target, run_dir, http=client)
    progress.round_finished({"round": 2})
    [held] = _runs(client, net)
    assert held["status"] == "running" and len(held["rounds"]) == 2 and progress.reported == 1

    token_file.unlink()  # the token file is gone: logged, the run goes on
    with caplog.at_level("WARNING", logger="sangsaeng.coordinator"):
        progress.round_finished({"round": 3})
    assert progress.reported == 1 and "progress of round 3 not recorded" in caplog.text
