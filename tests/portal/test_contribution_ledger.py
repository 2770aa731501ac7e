"""The contribution ledger (issue 16 item 3 and 4), on SQLite and PostgreSQL.

The attacker's side first: a supplier never sees another supplier's row (not its site name,
not its organisation's name) in any ledger route, page or CSV; an auditor and the anchor see
every score with method and inputs; another tenant gets the same 404 as for an id that does
not exist. Then what the ledger stores and the minimum contribution for release access.
"""

from __future__ import annotations

import csv
import io
import json

import pytest

from tests.portal.factories import API, contribution, network
from tests.portal.test_web import csrf_of, sign_in

MISSING = 2_000_000_000
SCORES = {"alpha-line-1": (1200, 0.20), "beta-line-1": (800, 0.06)}  # utility shares 0.769 / 0.231


@pytest.fixture
def ledger(portal):
    """A network whose run carries contribution scores, published as release 1.0.0."""
    net = network(portal)
    run = portal.run(net.coordinator, net.fid, ["alpha-line-1", "beta-line-1"], contribution=contribution(SCORES))
    release = portal.published(net.anchor, net.coordinator, net.fid, run["id"])
    return net, run, release


def api_routes(fid: int, release_id: int) -> list[str]:
    return [
        f"/federations/{fid}/contributions",
        f"/federations/{fid}/contributions.csv",
        f"/releases/{release_id}/contributions",
        f"/releases/{release_id}/contributions.csv",
    ]


def csv_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


# -- the attacker's side: role and tenant isolation --------------------------------------------------
def test_a_supplier_sees_only_its_own_row_its_share_and_the_total(client, ledger):
    net, run, release = ledger
    for who, own, other, other_org in (
        (net.supplier_a, "alpha-line-1", "beta-line-1", net.site_b.org_name),
        (net.site_a, "alpha-line-1", "beta-line-1", net.site_b.org_name),
        (net.supplier_b, "beta-line-1", "alpha-line-1", net.site_a.org_name),
        (net.site_b, "beta-line-1", "alpha-line-1", net.site_a.org_name),
    ):
        for path in api_routes(net.fid, release["id"]):
            response = client.get(f"{API}{path}", headers=who.headers)
            assert response.status_code == 200, (path, response.text)
            assert own in response.text, path
            assert other not in response.text and other_org not in response.text, (path, response.text)
        body = client.get(f"{API}/federations/{net.fid}/contributions", headers=who.headers).json()
        assert body["view"] == "own"
        (entry,) = body["runs"]
        assert [r["site"] for r in entry["rows"]] == [own]
        records = SCORES[own][0]
        assert entry["own"]["data_share"] == pytest.approx(records / 2000)
        assert entry["own"]["utility_share"] == pytest.approx(SCORES[own][1] / 0.26)
        assert entry["totals"] == {
            "sites": 2,
            "records": 2000,
            "data_share": pytest.approx(1.0),
            "utility": pytest.approx(0.26),
            "total_gain": pytest.approx(0.26),
        }
        assert entry["method"] == "gtg-shapley" and entry["inputs"]["coalitions_evaluated"] == 48


def test_anchor_auditor_and_coordinator_see_every_score_with_method_and_inputs(client, ledger):
    net, run, release = ledger
    for who in (net.anchor.headers, net.auditor.headers, net.coordinator):
        for path in (f"/federations/{net.fid}/contributions", f"/releases/{release['id']}/contributions"):
            response = client.get(f"{API}{path}", headers=who)
            assert response.status_code == 200, (path, response.text)
            body = response.json()
            assert body["view"] == "all" and body["access"] is None
            (entry,) = body["runs"]
            assert entry["run_ref"] == run["run_ref"] and entry["method"] == "gtg-shapley"
            assert entry["metric"] == "roc_auc" and entry["inputs"]["seed"] == 0
            rows = {r["site"]: r for r in entry["rows"]}
            assert set(rows) == {"alpha-line-1", "beta-line-1"}
            assert rows["beta-line-1"]["utility"] == pytest.approx(0.06)
            assert rows["alpha-line-1"]["records"] == 1200 and rows["alpha-line-1"]["rounds_trained"] == 3
            assert entry["own"] is None


def test_the_csv_holds_exactly_the_rows_the_role_may_see(client, ledger):
    net, run, release = ledger
    for who, expected in (
        (net.anchor.headers, {"alpha-line-1", "beta-line-1"}),
        (net.auditor.headers, {"alpha-line-1", "beta-line-1"}),
        (net.supplier_a.headers, {"alpha-line-1"}),
        (net.site_b.headers, {"beta-line-1"}),
    ):
        for json_path in (f"/federations/{net.fid}/contributions", f"/releases/{release['id']}/contributions"):
            listed = client.get(f"{API}{json_path}", headers=who).json()
            exported = client.get(f"{API}{json_path}.csv", headers=who)
            assert exported.status_code == 200
            assert exported.headers["content-type"].startswith("text/csv")
            assert "attachment" in exported.headers["content-disposition"]
            rows = csv_rows(exported.text)
            sites = [r for r in rows if r["row"] == "site"]
            assert {r["site"] for r in sites} == expected
            assert len(sites) == sum(len(e["rows"]) for e in listed["runs"])
            (total,) = [r for r in rows if r["row"] == "total"]
            assert total["site"] == "" and int(total["records"]) == 2000
            assert all(r["run_ref"] == run["run_ref"] and r["method"] == "gtg-shapley" for r in rows)
            for r in sites:
                assert float(r["utility"]) == pytest.approx(SCORES[r["site"]][1])
                assert json.loads(r["inputs"])["coalitions_per_round"] == 16


def test_another_tenant_gets_the_answer_of_a_missing_id(portal, client, ledger):
    net, run, release = ledger
    other_anchor = portal.anchor()
    other_fed = portal.federation(other_anchor)
    other_site = portal.site(other_anchor, other_fed["id"], "Gamma Cast", "gamma-line-1")
    other_supplier = portal.supplier_user("Gamma Cast")
    strangers = (
        other_anchor.headers,
        portal.person("auditor").headers,
        other_site.headers,
        other_supplier.headers,
        portal.coordinator(other_anchor, other_fed["id"]),
    )
    templates = [
        ("GET", "/federations/{}/contributions", net.fid, None),
        ("GET", "/federations/{}/contributions.csv", net.fid, None),
        ("GET", "/releases/{}/contributions", release["id"], None),
        ("GET", "/releases/{}/contributions.csv", release["id"], None),
        ("PUT", "/federations/{}/contribution-policy", net.fid, {"min_share": 0.5}),
    ]
    for who in strangers:
        for method, template, real, body in templates:
            theirs = client.request(method, f"{API}{template.format(real)}", headers=who, json=body)
            absent = client.request(method, f"{API}{template.format(MISSING)}", headers=who, json=body)
            if theirs.status_code == 403:  # a machine token on a people's route is refused before any lookup
                assert absent.status_code == 403 and theirs.json() == absent.json(), template
                continue
            assert theirs.status_code == absent.status_code == 404, (template, theirs.text)
            assert theirs.json()["detail"] == absent.json()["detail"].replace(str(MISSING), str(real)), template
            for name in ("alpha-line-1", "beta-line-1", net.site_a.org_name, run["run_ref"]):
                assert name not in theirs.text
    policy = client.get(f"{API}/federations/{net.fid}", headers=net.anchor.headers).json()
    assert policy["min_contribution_share"] is None


def test_sites_see_no_unpublished_release_ledger_and_no_run_they_did_not_join(portal, client, ledger):
    net, run, release = ledger
    draft = portal.candidate(net.coordinator, net.fid, run["id"], "1.1.0")
    solo = portal.run(net.coordinator, net.fid, ["beta-line-1"], contribution=contribution({"beta-line-1": (50, 0.1)}))
    for who in (net.supplier_a.headers, net.site_a.headers, net.supplier_b.headers):
        for path in (f"/releases/{draft['id']}/contributions", f"/releases/{draft['id']}/contributions.csv"):
            assert client.get(f"{API}{path}", headers=who).status_code == 404, path
    for who in (net.anchor.headers, net.auditor.headers):
        assert client.get(f"{API}/releases/{draft['id']}/contributions", headers=who).status_code == 200
    mine = client.get(f"{API}/federations/{net.fid}/contributions", headers=net.supplier_a.headers).json()
    assert [e["run_ref"] for e in mine["runs"]] == [run["run_ref"]]
    assert solo["run_ref"] not in client.get(f"{API}/federations/{net.fid}/contributions.csv",
                                             headers=net.supplier_a.headers).text  # fmt: skip
    theirs = client.get(f"{API}/federations/{net.fid}/contributions", headers=net.supplier_b.headers).json()
    assert [e["run_ref"] for e in theirs["runs"]] == [solo["run_ref"], run["run_ref"]]


def test_free_text_naming_another_site_is_withheld_from_a_supplier(portal, client):
    net = network(portal)
    block = contribution(SCORES)
    block["not_available"] = {"leave_one_out": "beta-line-1 left in round 2", "tmc": "too costly"}
    block["inputs"]["excluded"] = {"beta-line-1": "late", "note": f"{net.site_b.org_name} joined late"}
    portal.run(net.coordinator, net.fid, ["alpha-line-1", "beta-line-1"], contribution=block)
    for path in (f"/federations/{net.fid}/contributions", f"/federations/{net.fid}/contributions.csv"):
        seen = client.get(f"{API}{path}", headers=net.supplier_a.headers)
        assert seen.status_code == 200
        assert "beta-line-1" not in seen.text and net.site_b.org_name not in seen.text, seen.text
        assert "too costly" in seen.text
    full = client.get(f"{API}/federations/{net.fid}/contributions", headers=net.anchor.headers).json()
    assert full["runs"][0]["not_available"]["leave_one_out"] == "beta-line-1 left in round 2"


def test_a_revoked_supplier_loses_the_ledger(client, ledger):
    net, _, release = ledger
    assert client.post(f"{API}/memberships/{net.site_a.membership_id}/revoke", headers=net.anchor.headers).is_success
    for path in api_routes(net.fid, release["id"]):
        assert client.get(f"{API}{path}", headers=net.supplier_a.headers).status_code == 404, path


# -- what is stored ---------------------------------------------------------------------------------
def test_each_supplier_sees_what_its_line_got_back_alone_and_with_the_network(client, ledger):
    net, _, release = ledger
    (row,) = client.get(f"{API}/releases/{release['id']}/contributions", headers=net.supplier_b.headers).json()["runs"][
        0
    ]["rows"]
    assert row["site"] == "beta-line-1"
    assert row["alone"] == pytest.approx(0.78) and row["with_network"] == pytest.approx(0.858)
    exported = client.get(f"{API}/releases/{release['id']}/contributions.csv", headers=net.supplier_b.headers).text
    (line,) = [r for r in csv_rows(exported) if r["row"] == "site"]
    assert float(line["alone"]) == pytest.approx(0.78) and float(line["with_network"]) == pytest.approx(0.858)


def test_the_block_the_coordinator_writes_is_stored_as_it_is(portal, client):
    """The shape `coordinator.contribution.contribution_result` writes: extra text inputs, long reasons, nulls."""
    net = network(portal)
    block = contribution(SCORES)
    block["inputs"] |= {
        "free_rider_below": "0.1 x an equal share of the total gain",
        "reconstruction": "coalition model = the round's global model plus the example-weighted mean",
        "efficiency_tolerance": 0.003,
        "initial_metric": None,
    }
    block["not_available"] = {"leave_one_out": "x" * 2000}
    for site in block["per_site"].values():
        site["unknown_future_key"] = [1, 2, 3]  # keys the portal does not know are ignored
    portal.run(net.coordinator, net.fid, ["alpha-line-1", "beta-line-1"], contribution=block)
    (entry,) = client.get(f"{API}/federations/{net.fid}/contributions", headers=net.auditor.headers).json()["runs"]
    assert entry["inputs"]["free_rider_below"] == "0.1 x an equal share of the total gain"
    assert entry["inputs"]["initial_metric"] is None
    assert len(entry["not_available"]["leave_one_out"]) == 500 and entry["not_available"]["leave_one_out"][-1] == "…"
    assert "unknown_future_key" not in json.dumps(entry)


def test_a_secure_aggregation_run_keeps_the_data_share_and_says_what_is_missing(portal, client):
    net = network(portal)
    portal.run(
        net.coordinator, net.fid, ["alpha-line-1", "beta-line-1"], contribution=contribution(SCORES, secagg=True)
    )
    for who in (net.anchor.headers, net.supplier_a.headers):
        (entry,) = client.get(f"{API}/federations/{net.fid}/contributions", headers=who).json()["runs"]
        assert entry["method"] is None and entry["total_gain"] is None
        assert entry["not_available"]["utility"] == "secure aggregation hides single updates"
        assert all(r["utility"] is None and r["utility_share"] is None for r in entry["rows"])
        assert {r["site"]: r["data_share"] for r in entry["rows"]}["alpha-line-1"] == pytest.approx(0.6)
        assert entry["totals"]["utility"] is None


def test_a_run_without_scores_still_uploads_and_the_ledger_is_empty(portal, client):
    net = network(portal)
    portal.run(net.coordinator, net.fid, ["alpha-line-1", "beta-line-1"])
    body = client.get(f"{API}/federations/{net.fid}/contributions", headers=net.anchor.headers).json()
    assert body["runs"] == [] and body["policy"] == {"min_share": None, "basis": "utility_share"}
    assert csv_rows(client.get(f"{API}/federations/{net.fid}/contributions.csv", headers=net.anchor.headers).text) == []


@pytest.mark.parametrize(
    ("change", "status", "needle"),
    [
        (lambda b: b["per_site"].update({"gamma-line-9": b["per_site"]["beta-line-1"]}), 400, "gamma-line-9"),
        (lambda b: b["per_site"]["beta-line-1"].update({"data_share": 1.5}), 422, "data_share"),
        (lambda b: b["per_site"]["beta-line-1"].update({"records": -1}), 422, "records"),
        (lambda b: b["per_site"]["beta-line-1"].update({"flag": "<script>"}), 422, "flag"),
        (lambda b: b.update({"inputs": {"blob": "x" * 9000}}), 422, "inputs"),
    ],
    ids=["unknown-site", "share-over-one", "negative-records", "bad-flag", "huge-inputs"],
)
def test_bad_contribution_blocks_are_refused_and_store_nothing(portal, client, change, status, needle):
    net = network(portal)
    block = contribution(SCORES)
    change(block)
    body = {"run_ref": "bad-run", "sites": ["alpha-line-1", "beta-line-1"], "contribution": block}
    response = client.post(f"{API}/federations/{net.fid}/runs", headers=net.coordinator, json=body)
    assert response.status_code == status, response.text
    assert needle in response.text
    assert client.get(f"{API}/federations/{net.fid}/runs", headers=net.anchor.headers).json() == []


def test_a_non_finite_score_is_refused(portal, client):
    net = network(portal)
    block = contribution(SCORES)
    block["per_site"]["alpha-line-1"]["utility"] = float("inf")
    content = json.dumps({"run_ref": "inf-run", "sites": ["alpha-line-1", "beta-line-1"], "contribution": block})
    response = client.post(
        f"{API}/federations/{net.fid}/runs",
        headers={**net.coordinator, "Content-Type": "application/json"},
        content=content,
    )
    assert response.status_code == 422 and "finite" in response.text, response.text


def test_upload_run_carries_the_contribution_block_of_results_json(portal, client, tmp_path):
    from portal.uploader import upload_run
    from tests.portal.test_site_client import make_run_dir

    net = network(portal)
    run_dir, _ = make_run_dir(tmp_path)
    (run_dir / "results.json").write_text(json.dumps({"run_id": "x", "contribution": contribution(SCORES)}))
    client.headers.update(net.coordinator)
    run, _ = upload_run(client, net.fid, run_dir, version="2.0.0")
    client.headers.pop("Authorization")
    (entry,) = client.get(f"{API}/federations/{net.fid}/contributions", headers=net.anchor.headers).json()["runs"]
    assert entry["run_id"] == run["id"] and {r["site"] for r in entry["rows"]} == set(SCORES)


def test_a_csv_cell_never_starts_a_formula(portal, client):
    anchor = portal.anchor()
    fid = portal.federation(anchor)["id"]
    portal.site(anchor, fid, "Formula Co", "=HYPERLINK(1)")
    coordinator = portal.coordinator(anchor, fid)
    portal.run(coordinator, fid, ["=HYPERLINK(1)"], contribution=contribution({"=HYPERLINK(1)": (10, 0.1)}))
    exported = client.get(f"{API}/federations/{fid}/contributions.csv", headers=anchor.headers).text
    (row,) = [r for r in csv_rows(exported) if r["row"] == "site"]
    assert row["site"] == "'=HYPERLINK(1)"


# -- the minimum contribution for release access ------------------------------------------------------
def test_only_the_anchor_sets_the_minimum_contribution(client, ledger):
    net, _, _ = ledger
    url = f"{API}/federations/{net.fid}/contribution-policy"
    for who, detail in (
        (net.supplier_a.headers, "a supplier cannot set the minimum contribution (allowed: anchor)"),
        (net.auditor.headers, "auditors have read-only access: cannot set the minimum contribution"),
        (net.coordinator, "this route is for signed-in users, not machine tokens"),
    ):
        refused = client.put(url, headers=who, json={"min_share": 0.0001})
        assert refused.status_code == 403 and refused.json()["detail"] == detail
    for bad in ({"min_share": 0}, {"min_share": 1.5}, {"min_share": -0.1}, {"min_share": 0.1, "basis": "loo"}):
        assert client.put(url, headers=net.anchor.headers, json=bad).status_code == 422, bad
    assert (
        client.get(f"{API}/federations/{net.fid}", headers=net.anchor.headers).json()["min_contribution_share"] is None
    )


def test_a_supplier_below_the_minimum_cannot_pull_the_release(client, ledger):
    net, run, release = ledger
    artifact = f"{API}/releases/{release['id']}/artifact"
    for who in (net.site_a, net.site_b, net.supplier_b):  # default off: everyone admitted pulls
        assert client.get(artifact, headers=who.headers).status_code == 200
    url = f"{API}/federations/{net.fid}/contribution-policy"
    set_policy = client.put(url, headers=net.anchor.headers, json={"min_share": 0.3})
    assert set_policy.status_code == 200, set_policy.text
    assert set_policy.json()["min_contribution_share"] == 0.3
    assert set_policy.json()["contribution_basis"] == "utility_share"
    for who in (net.site_b, net.supplier_b):
        refused = client.get(artifact, headers=who.headers)
        assert refused.status_code == 403, refused.text
        assert refused.json()["detail"] == (
            f"release 1.0.0 needs a contribution (utility share) of at least 0.3 in run '{run['run_ref']}'; "
            f"the sites of '{net.site_b.org_name}' contributed 0.2308 (the minimum contribution the anchor set "
            f"for federation {net.fid})"
        )
    for who in (net.site_a.headers, net.supplier_a.headers, net.anchor.headers, net.auditor.headers, net.coordinator):
        assert client.get(artifact, headers=who).status_code == 200
    seen = client.get(f"{API}/releases/{release['id']}/contributions", headers=net.site_b.headers).json()
    assert seen["access"]["allowed"] is False and "at least 0.3" in seen["access"]["reason"]
    assert client.get(f"{API}/releases/{release['id']}/contributions", headers=net.site_a.headers).json()["access"] == {
        "allowed": True,
        "reason": None,
    }
    # On the data share, beta's 0.4 passes; switched off again, everyone pulls.
    assert client.put(url, headers=net.anchor.headers, json={"min_share": 0.3, "basis": "data_share"}).is_success
    assert client.get(artifact, headers=net.site_b.headers).status_code == 200
    assert client.put(url, headers=net.anchor.headers, json={"min_share": None}).is_success
    assert client.get(artifact, headers=net.site_b.headers).status_code == 200
    trail = client.get(f"{API}/federations/{net.fid}/audit", headers=net.anchor.headers).json()["events"]
    changes = [e["detail"] for e in trail if e["action"] == "federation.contribution_policy"]
    assert [c["min_share"] for c in changes] == [None, 0.3, 0.3]


def test_the_minimum_does_not_apply_to_a_run_without_utility_scores(portal, client):
    net = network(portal)
    run = portal.run(
        net.coordinator, net.fid, ["alpha-line-1", "beta-line-1"], contribution=contribution(SCORES, secagg=True)
    )
    release = portal.published(net.anchor, net.coordinator, net.fid, run["id"])
    url = f"{API}/federations/{net.fid}/contribution-policy"
    assert client.put(url, headers=net.anchor.headers, json={"min_share": 0.5}).is_success
    assert client.get(f"{API}/releases/{release['id']}/artifact", headers=net.site_b.headers).status_code == 200
    # A site of a supplier with no row in a scored run contributed nothing: refused.
    scored = portal.run(net.coordinator, net.fid, ["alpha-line-1"], contribution=contribution({"alpha-line-1": (9, 1)}))
    second = portal.published(net.anchor, net.coordinator, net.fid, scored["id"], "2.0.0")
    refused = client.get(f"{API}/releases/{second['id']}/artifact", headers=net.site_b.headers)
    assert refused.status_code == 403 and "contributed 0" in refused.json()["detail"]


# -- the web pages -------------------------------------------------------------------------------------
def web_routes(fid: int, release_id: int) -> list[str]:
    return [
        f"/federations/{fid}/contributions",
        f"/federations/{fid}/contributions.csv",
        f"/releases/{release_id}/contributions",
        f"/releases/{release_id}/contributions.csv",
    ]


def test_ledger_pages_show_each_role_what_it_may(portal, client, ledger):
    net, run, release = ledger
    for who, shown, hidden in (
        (net.anchor, ("alpha-line-1", "beta-line-1", "gtg-shapley"), ()),
        (net.auditor, ("alpha-line-1", "beta-line-1", "gtg-shapley"), ()),
        (net.supplier_a, ("alpha-line-1", "gtg-shapley"), ("beta-line-1", net.site_b.org_name)),
        (net.supplier_b, ("beta-line-1",), ("alpha-line-1", net.site_a.org_name)),
    ):
        sign_in(client, who.email)
        for path in web_routes(net.fid, release["id"]):
            page = client.get(path)
            assert page.status_code == 200, (who.email, path, page.text[:300])
            for needle in shown:
                assert needle in page.text, (who.email, path, needle)
            for needle in hidden:
                assert needle not in page.text, (who.email, path, needle)
        assert "<svg" in client.get(f"/releases/{release['id']}/contributions").text
        assert f"/releases/{release['id']}/contributions" in client.get(f"/federations/{net.fid}/releases").text
    sign_in(client, net.anchor.email)
    assert f"/federations/{net.fid}/contributions" in client.get(f"/runs/{run['id']}").text


def test_ledger_pages_of_another_tenant_read_like_missing_ones(portal, client, ledger):
    net, _, release = ledger
    stranger = portal.anchor()
    sign_in(client, stranger.email)
    for path, real in zip(
        web_routes(net.fid, release["id"]), (net.fid, net.fid, release["id"], release["id"]), strict=True
    ):
        theirs = client.get(path)
        absent = client.get(path.replace(str(real), str(MISSING)))
        assert theirs.status_code == absent.status_code == 404, path
        assert theirs.text == absent.text.replace(str(MISSING), str(real)), path
        assert "alpha-line-1" not in theirs.text


def test_the_anchor_sets_the_minimum_on_the_ledger_page(portal, client, ledger):
    net, _, _ = ledger
    sign_in(client, net.supplier_a.email)
    page = client.get(f"/federations/{net.fid}/contributions")
    assert 'action="/federations/' not in page.text or "contribution-policy" not in page.text
    refused = client.post(
        f"/federations/{net.fid}/contribution-policy", data={"csrf": csrf_of(page.text), "min_share": "0.5"}
    )
    assert refused.status_code == 403
    sign_in(client, net.anchor.email)
    page = client.get(f"/federations/{net.fid}/contributions")
    assert "contribution-policy" in page.text
    done = client.post(
        f"/federations/{net.fid}/contribution-policy",
        data={"csrf": csrf_of(page.text), "min_share": "0.25", "basis": "data_share"},
    )
    assert done.status_code == 200 and "0.25" in done.text
    federation = client.get(f"{API}/federations/{net.fid}", headers=net.anchor.headers).json()
    assert federation["min_contribution_share"] == 0.25 and federation["contribution_basis"] == "data_share"
    off = client.post(f"/federations/{net.fid}/contribution-policy", data={"csrf": csrf_of(done.text), "min_share": ""})
    assert off.status_code == 200
    assert (
        client.get(f"{API}/federations/{net.fid}", headers=net.anchor.headers).json()["min_contribution_share"] is None
    )


# -- the CLI ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_cli_sets_the_minimum_and_exports_each_roles_ledger(portal, client, live_server, tmp_path):
    from typer.testing import CliRunner

    from coordinator.cli import app as sangsaeng

    net = network(portal)
    run = portal.run(net.coordinator, net.fid, ["alpha-line-1", "beta-line-1"], contribution=contribution(SCORES))
    release = portal.published(net.anchor, net.coordinator, net.fid, run["id"])
    runner = CliRunner()

    def run_cli(*args: str, token: str) -> str:
        result = runner.invoke(sangsaeng, ["portal", *args, "--portal", live_server, "--token", token])
        assert result.exit_code == 0, result.output
        return result.output

    out = run_cli("contribution-policy", "--federation", str(net.fid), "--min-share", "0.3", token=net.anchor.token)
    assert "utility share of at least 0.3" in out
    refused = runner.invoke(
        sangsaeng,
        ["portal", "contribution-policy", "--federation", str(net.fid), "--min-share", "0.1",
         "--portal", live_server, "--token", net.supplier_a.token],
    )  # fmt: skip
    assert refused.exit_code == 2 and "a supplier cannot set the minimum contribution" in refused.output
    for who, expected in ((net.anchor, {"alpha-line-1", "beta-line-1"}), (net.supplier_b, {"beta-line-1"})):
        path = tmp_path / f"{who.email}.csv"
        run_cli("ledger", "--release", str(release["id"]), "--csv", str(path), token=who.token)
        assert {r["site"] for r in csv_rows(path.read_text()) if r["row"] == "site"} == expected
    shown = json.loads(run_cli("ledger", "--federation", str(net.fid), token=net.supplier_b.token))
    assert shown["view"] == "own" and "alpha-line-1" not in json.dumps(shown)
    assert "no minimum" in run_cli(
        "contribution-policy", "--federation", str(net.fid), "--min-share", "off", token=net.anchor.token
    )
