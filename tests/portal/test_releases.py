"""Releases: the gate (privacy budget, metric threshold), signing, download and every bad upload."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives import serialization

from models.architectures import ARCHITECTURES
from models.tasks import get_task
from portal.artifact import read_artifact
from portal.protocol import signing_payload
from tests.portal.factories import API, model_artifact, network, release_body

SITES = ["alpha-line-1", "beta-line-1"]


@pytest.fixture
def net(portal):
    return network(portal)


def _step(client, net, release_id, step):
    return client.post(f"{API}/releases/{release_id}/{step}", headers=net.anchor.headers)


def test_publish_signs_and_sites_download_verified_artifacts(portal, client, net):
    run = portal.run(net.coordinator, net.fid, SITES, auc=0.9)
    release = portal.published(net.anchor, net.coordinator, net.fid, run["id"])
    assert release["status"] == "published" and release["signature"]
    key = client.get(f"{API}/keys/release-signing").json()
    assert release["signing_key_fingerprint"] == key["fingerprint"]
    public = serialization.load_pem_public_key(key["public_key"].encode())
    public.verify(base64.b64decode(release["signature"]), signing_payload(release["model_card"]))
    card = release["model_card"]
    assert card["artifact"]["sha256"] == hashlib.sha256(model_artifact()).hexdigest()
    assert card["evaluation"]["value"] >= card["evaluation"]["threshold"]
    assert "alpha-line-1" not in str(card)  # the card names no site
    n_inputs = read_artifact(model_artifact()).weights[0].shape[1]
    assert card["architecture"] == {  # what the sites will run: an MLP with one hidden layer of 8
        "model": "mlp", "hidden": [8], "description": ARCHITECTURES["mlp"], "parameters": n_inputs * 8 + 8 + 8 + 1,
    }  # fmt: skip
    spec = get_task("predictive-maintenance")  # what the sites will feed it, stated by the signed card
    assert card["kind"] == "binary" and card["label"] == spec.label and card["window"] is None
    assert card["input_columns"] == [*spec.measured_features, *spec.categorical_features]
    assert card["derived_features"] == dict(spec.derived) and "classes" not in card
    download = client.get(f"{API}/releases/{release['id']}/artifact", headers=net.site_a.headers)
    assert download.status_code == 200 and download.content == model_artifact()
    assert download.headers["X-Artifact-SHA256"] == card["artifact"]["sha256"]
    listed = client.get(f"{API}/federations/{net.fid}/releases", headers=net.supplier_b.headers).json()
    assert [r["version"] for r in listed] == ["1.0.0"]
    twice = _step(client, net, release["id"], "publish")
    assert twice.status_code == 409 and "already published" in twice.json()["detail"]


def test_privacy_violation_blocks_approval_and_publication(portal, client, net):
    privacy = {
        "alpha-line-1": {"epsilon": 9.5, "budget_epsilon": 8.0},
        "beta-line-1": {"epsilon": 1, "budget_epsilon": 8},
    }
    run = portal.run(net.coordinator, net.fid, SITES, privacy=privacy)
    draft = portal.candidate(net.coordinator, net.fid, run["id"])
    for step in ("approve", "publish"):
        response = _step(client, net, draft["id"], step)
        assert response.status_code == 409
    approve = _step(client, net, draft["id"], "approve").json()["detail"]
    assert "alpha-line-1" in approve and "epsilon 9.5" in approve and "budget 8" in approve
    assert client.get(f"{API}/releases/{draft['id']}", headers=net.anchor.headers).json()["status"] == "draft"


def test_dp_run_missing_a_site_record_is_refused(portal, client, net):
    run = portal.run(net.coordinator, net.fid, SITES, privacy={"alpha-line-1": {"epsilon": 1, "budget_epsilon": 8}})
    draft = portal.candidate(net.coordinator, net.fid, run["id"])
    response = _step(client, net, draft["id"], "approve")
    assert response.status_code == 409 and "beta-line-1" in response.json()["detail"]


def test_metric_threshold_blocks_publication(portal, client, net):
    run = portal.run(net.coordinator, net.fid, SITES, auc=0.42)
    draft = portal.candidate(net.coordinator, net.fid, run["id"])
    response = _step(client, net, draft["id"], "approve")
    assert response.status_code == 409
    assert "roc_auc 0.42 does not meet the threshold >= 0.5" in response.json()["detail"]
    early = _step(client, net, draft["id"], "publish")
    assert early.status_code == 409 and "approve it before publishing" in early.json()["detail"]


def test_withdrawn_release_cannot_be_downloaded(portal, client, net):
    run = portal.run(net.coordinator, net.fid, SITES)
    release = portal.published(net.anchor, net.coordinator, net.fid, run["id"])
    response = client.post(
        f"{API}/releases/{release['id']}/withdraw", headers=net.anchor.headers, json={"reason": "drift on line 2"}
    )
    assert response.status_code == 200 and response.json()["status"] == "withdrawn"
    gone = client.get(f"{API}/releases/{release['id']}/artifact", headers=net.site_a.headers)
    assert gone.status_code == 410 and "drift on line 2" in gone.json()["detail"]
    assert (
        client.post(
            f"{API}/releases/{release['id']}/withdraw", headers=net.anchor.headers, json={"reason": "again"}
        ).status_code
        == 409
    )
    assert (
        client.post(
            f"{API}/releases/{release['id']}/withdraw", headers=net.anchor.headers, json={"reason": "   "}
        ).status_code
        == 422
    )


def test_suspended_site_cannot_download(portal, client, net):
    run = portal.run(net.coordinator, net.fid, SITES)
    release = portal.published(net.anchor, net.coordinator, net.fid, run["id"])
    client.post(f"{API}/memberships/{net.site_a.membership_id}/suspend", headers=net.anchor.headers)
    refused = client.get(f"{API}/releases/{release['id']}/artifact", headers=net.site_a.headers)
    # The suspended site's token is refused outright (tests/portal/test_tenancy.py); its admin is refused the download.
    assert refused.status_code == 403 and "is suspended" in refused.json()["detail"]
    by_admin = client.get(f"{API}/releases/{release['id']}/artifact", headers=net.supplier_a.headers)
    assert by_admin.status_code == 403 and "approved or active" in by_admin.json()["detail"]


def _upload(client, net, body):
    return client.post(f"{API}/federations/{net.fid}/releases", headers=net.coordinator, json=body)


def test_bad_uploads_get_clear_4xx_and_store_nothing(portal, client, net):
    run = portal.run(net.coordinator, net.fid, SITES)
    good = release_body(run["id"])
    wrong_hash = {**good, "artifact_sha256": "0" * 64}
    r = _upload(client, net, wrong_hash)
    assert r.status_code == 400 and "hash mismatch" in r.json()["detail"]
    r = _upload(client, net, {**good, "artifact_b64": "!!!not base64!!!"})
    assert r.status_code == 400 and "base64" in r.json()["detail"]
    junk = b"PK\x03\x04 definitely not a zip" * 10
    r = _upload(client, net, release_body(run["id"], data=junk))
    assert r.status_code == 422 and "zip" in r.json()["detail"]
    big = b"\x00" * (300 * 1024)  # the test settings allow 256 KiB
    r = _upload(client, net, release_body(run["id"], data=big))
    assert r.status_code == 413 and "limit" in r.json()["detail"]
    huge = client.post(
        f"{API}/federations/{net.fid}/releases",
        headers={**net.coordinator, "Content-Type": "application/json"},
        content=b"{" + b" " * (2 * 1024 * 1024) + b"}",
    )
    assert huge.status_code == 413
    for version in ("1.0", "v1.0.0", "01.0.0", "1.0.0; DROP TABLE model_release"):
        assert _upload(client, net, release_body(run["id"], version)).status_code == 422, version
    r = _upload(client, net, release_body(99999))
    assert r.status_code == 404
    other_task = model_artifact("injection-molding-quality")
    r = _upload(client, net, release_body(run["id"], data=other_task))
    assert r.status_code == 422 and "federation trains" in r.json()["detail"]
    assert client.get(f"{API}/federations/{net.fid}/releases", headers=net.anchor.headers).json() == []
    assert _upload(client, net, good).status_code == 201
    dup = _upload(client, net, good)
    assert dup.status_code == 409 and "already exists" in dup.json()["detail"]


def test_bad_run_reports(portal, client, net):
    post = lambda body: client.post(f"{API}/federations/{net.fid}/runs", headers=net.coordinator, json=body)  # noqa: E731
    assert post({"run_ref": "r1", "sites": ["nobody"]}).status_code == 400
    assert (
        post({"run_ref": "r1", "sites": SITES, "privacy": {"nobody": {"epsilon": 1, "budget_epsilon": 2}}}).status_code
        == 400
    )
    assert (
        post(
            {"run_ref": "r1", "sites": SITES, "privacy": {"alpha-line-1": {"epsilon": -1, "budget_epsilon": 2}}}
        ).status_code
        == 422
    )
    assert post({"run_ref": "r1", "sites": SITES, "rounds": [{"round": 1}, {"round": 1}]}).status_code == 400
    assert post({"run_ref": "r 1; --", "sites": SITES}).status_code == 422
    assert post({"run_ref": "r1", "sites": SITES}).status_code == 201
    again = post({"run_ref": "r1", "sites": SITES})
    assert again.status_code == 409 and "already been reported" in again.json()["detail"]


# -- finding 9: the gate decides from the verified signed report -----------------------------------------------------
def _policy(client, net, epsilon):  # type: ignore[no-untyped-def]
    return client.put(f"{API}/federations/{net.fid}/privacy-policy", headers=net.anchor.headers,
                      json={"dp_max_epsilon": epsilon})  # fmt: skip


def _signed_run(portal, client, net, tmp_path, **dp):  # type: ignore[no-untyped-def]
    """A DP run whose real report (with `dp` overrides, e.g. budgets) is signed by the pinned key and stored."""
    from privacy.keys import load_signing_key
    from tests.portal.test_privacy_report import _recorded, _report, _upload_of

    run = portal.run(net.coordinator, net.fid, SITES, privacy=_recorded(_report("any", **dp)))
    key = load_signing_key(tmp_path / "coordinator-key", create=True)
    upload, body = _upload_of(_report(run["run_ref"], **dp), key, tmp_path / run["run_ref"])
    stored = client.post(f"{API}/runs/{run['id']}/privacy-report", headers=net.coordinator, json=upload)
    assert stored.status_code == 201, stored.text
    return run, hashlib.sha256(body).hexdigest()


def test_dp_federation_without_a_signed_report_cannot_release(portal, client, net):
    """The pen test: a run uploaded without privacy data got a release approved in a DP federation."""
    early = portal.candidate(net.coordinator, net.fid, portal.run(net.coordinator, net.fid, SITES)["id"], "0.9.0")
    assert _step(client, net, early["id"], "approve").status_code == 200  # before the DP policy
    assert _policy(client, net, 3.5).status_code == 200
    claims = {s: {"epsilon": 1.0, "budget_epsilon": 8.0} for s in SITES}  # the coordinator's word only
    for privacy, version in ((None, "1.0.0"), (claims, "1.1.0")):
        run = portal.run(net.coordinator, net.fid, SITES, privacy=privacy)
        draft = portal.candidate(net.coordinator, net.fid, run["id"], version)
        refused = _step(client, net, draft["id"], "approve")
        assert refused.status_code == 409, refused.text
        assert refused.json()["detail"] == (
            f"release {version}: federation {net.fid} requires DP (at most epsilon 3.5 per site), and run "
            f"'{run['run_ref']}' has no signed privacy report verified against the pinned coordinator key"
        )
    refused = _step(client, net, early["id"], "publish")  # approved before: publication checks the gate again
    assert refused.status_code == 409 and "requires DP" in refused.json()["detail"]


def test_dp_federation_releases_from_the_verified_signed_report(portal, client, net, tmp_path):
    assert _policy(client, net, 3.5).status_code == 200
    run, sha = _signed_run(portal, client, net, tmp_path)
    release = portal.published(net.anchor, net.coordinator, net.fid, run["id"])
    privacy = release["model_card"]["privacy"]
    assert privacy["differential_privacy"] and privacy["signed_report_sha256"] == sha
    assert privacy["dp_policy_max_epsilon"] == 3.5 and privacy["max_epsilon"] == pytest.approx(3.0104, abs=1e-4)


def test_site_over_its_budget_or_the_policy_in_the_signed_report_cannot_release(portal, client, net, tmp_path):
    over, _ = _signed_run(portal, client, net, tmp_path, budget_epsilon=2.5)  # stored: it is the evidence
    draft = portal.candidate(net.coordinator, net.fid, over["id"], "1.0.0")
    refused = _step(client, net, draft["id"], "approve")  # no DP policy: the signed report still decides
    assert refused.status_code == 409
    assert refused.json()["detail"] == (
        "release 1.0.0: site 'alpha-line-1' spent epsilon 3.01038 over its budget 2.5 (signed privacy report)"
    )
    within, _ = _signed_run(portal, client, net, tmp_path)
    draft = portal.candidate(net.coordinator, net.fid, within["id"], "1.1.0")
    assert _policy(client, net, 2.0).status_code == 200
    refused = _step(client, net, draft["id"], "approve")
    assert refused.status_code == 409
    assert (
        "site 'alpha-line-1' spent epsilon 3.01038, over the federation's DP policy of at most 2"
        in (refused.json()["detail"])
    )
    assert _policy(client, net, 3.5).status_code == 200
    assert _step(client, net, draft["id"], "approve").status_code == 200


def test_site_missing_from_the_signed_report_cannot_release(portal, client, net, tmp_path):
    from privacy.keys import load_signing_key
    from tests.portal.test_privacy_report import _recorded, _report, _upload_of

    only_alpha = _report("any", sites=("alpha-line-1",))
    run = portal.run(net.coordinator, net.fid, SITES, privacy=_recorded(only_alpha))
    key = load_signing_key(tmp_path / "coordinator-key", create=True)
    upload, _ = _upload_of(_report(run["run_ref"], sites=("alpha-line-1",)), key, tmp_path / "alpha")
    assert (
        client.post(f"{API}/runs/{run['id']}/privacy-report", headers=net.coordinator, json=upload).status_code == 201
    )
    draft = portal.candidate(net.coordinator, net.fid, run["id"])
    refused = _step(client, net, draft["id"], "approve")
    assert refused.status_code == 409
    assert (
        f"site 'beta-line-1' has no record in run '{run['run_ref']}'s signed privacy report" in refused.json()["detail"]
    )


def test_a_stored_report_is_verified_again_by_the_gate(portal, client, net, tmp_path):
    """A report row edited in the database, or stored before keys were pinned, does not open the gate."""
    from sqlalchemy import text

    assert _policy(client, net, 3.5).status_code == 200
    tampered, _ = _signed_run(portal, client, net, tmp_path)
    legacy, _ = _signed_run(portal, client, net, tmp_path)
    with portal.session() as session:
        row = session.exec(text("SELECT report FROM privacy_report WHERE run_id = :r"), params={"r": tampered["id"]})
        body = row.one()[0].replace(b'"budget_epsilon": 4.0', b'"budget_epsilon": 9.0')
        session.exec(text("UPDATE privacy_report SET report = :b WHERE run_id = :r"),
                     params={"b": body, "r": tampered["id"]})  # fmt: skip
        session.exec(text("UPDATE privacy_report SET verified_with_pinned_key = false WHERE run_id = :r"),
                     params={"r": legacy["id"]})  # fmt: skip
        session.commit()
    draft = portal.candidate(net.coordinator, net.fid, tampered["id"], "1.0.0")
    refused = _step(client, net, draft["id"], "approve")
    assert refused.status_code == 409 and "stored signed privacy report no longer verifies" in refused.json()["detail"]
    draft = portal.candidate(net.coordinator, net.fid, legacy["id"], "1.1.0")
    refused = _step(client, net, draft["id"], "approve")
    assert (
        refused.status_code == 409
        and "stored before the federation pinned a coordinator key" in (refused.json()["detail"])
    )


def test_dp_policy_is_an_audited_anchor_setting(portal, client, net):
    url = f"{API}/federations/{net.fid}/privacy-policy"
    assert client.get(f"{API}/federations/{net.fid}", headers=net.anchor.headers).json()["dp_max_epsilon"] is None
    for headers, status in ((net.coordinator, 403), (net.auditor.headers, 403), (net.supplier_a.headers, 403),
                            (net.site_a.headers, 403), (portal.anchor().headers, 404)):  # fmt: skip
        refused = client.put(url, headers=headers, json={"dp_max_epsilon": 0.1})
        assert refused.status_code == status, refused.text
    for bad in (0, -1, "inf", "nan", "three"):
        assert client.put(url, headers=net.anchor.headers, json={"dp_max_epsilon": bad}).status_code == 422, bad
    assert client.put(url, headers=net.anchor.headers, json={}).status_code == 422  # say null to lift it
    set_ = client.put(url, headers=net.anchor.headers, json={"dp_max_epsilon": 3})
    assert set_.status_code == 200 and set_.json()["dp_max_epsilon"] == 3
    seen = client.get(f"{API}/federations/{net.fid}", headers=net.supplier_a.headers).json()
    assert seen["dp_max_epsilon"] == 3
    assert client.put(url, headers=net.anchor.headers, json={"dp_max_epsilon": None}).json()["dp_max_epsilon"] is None
    events = client.get(f"{API}/federations/{net.fid}/audit", headers=net.anchor.headers).json()["events"]
    changes = [e["detail"] for e in reversed(events) if e["action"] == "federation.dp_policy_set"]
    assert changes == [{"old_dp_max_epsilon": None, "new_dp_max_epsilon": 3.0},
                       {"old_dp_max_epsilon": 3.0, "new_dp_max_epsilon": None}]  # fmt: skip
