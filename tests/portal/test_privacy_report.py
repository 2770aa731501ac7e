"""Signed privacy reports: the coordinator stores them, auditors fetch them byte-exact and verify them."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import subprocess

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from privacy.keys import PUBLIC_NAME, load_signing_key, public_pem
from privacy.report import build_report, verify_report, write_signed_report
from sangsaeng.signing import fingerprint, load_public_pem
from tests.factories import dp_manifest
from tests.portal.factories import API, network, recorded_privacy

SITES = ("alpha-line-1", "beta-line-1")


def _report(run_ref: str, sites: tuple[str, ...] = SITES, **dp: float) -> dict:
    """A real privacy report as the coordinator builds it; `dp` overrides what the accountant does not use."""
    manifest = dp_manifest(run_ref, sites=sites)
    for record in manifest["rounds"]:
        for entry in record["dp"].values():
            entry.update(dp)
    return build_report(manifest)


def _upload_of(report: dict, key: Ed25519PrivateKey, out) -> tuple[dict[str, str], bytes]:  # type: ignore[no-untyped-def]
    path = write_signed_report(report, out, key)
    body = path.read_bytes()
    upload = {
        "report_b64": base64.b64encode(body).decode(),
        "signature_b64": base64.b64encode(path.with_name("report.json.sig").read_bytes()).decode(),
        "public_key_pem": path.with_name(PUBLIC_NAME).read_text(),
    }
    return upload, body


def _signed(tmp_path, run_ref: str) -> tuple[dict[str, str], bytes]:
    """The run's report signed with this test's coordinator key, the one the factories' federations pin."""
    key = load_signing_key(tmp_path / "coordinator-key", create=True)
    return _upload_of(_report(run_ref), key, tmp_path / "privacy")


_recorded = recorded_privacy


def _dp_run(portal, net, privacy: dict | None = None) -> dict:
    """A run recording the privacy its real report will hold (the report's run_id is the portal's run_ref)."""
    return portal.run(net.coordinator, net.fid, list(SITES), privacy=privacy or _recorded(_report("any")))


def test_auditor_fetches_the_signed_report_byte_exact_and_it_verifies(portal, client, tmp_path):
    net = network(portal)
    run = _dp_run(portal, net)
    upload, body = _signed(tmp_path, run["run_ref"])
    url = f"{API}/runs/{run['id']}/privacy-report"

    assert client.get(url, headers=net.auditor.headers).status_code == 404  # nothing uploaded yet
    stored = client.post(url, headers=net.coordinator, json=upload)
    assert stored.status_code == 201, stored.text
    assert stored.json()["sha256"] == hashlib.sha256(body).hexdigest()
    assert stored.json()["signature_verified_at_upload"] is True

    for reader in (net.auditor, net.anchor):
        got = client.get(url, headers=reader.headers)
        assert got.status_code == 200, got.text
    answer = got.json()
    out = tmp_path / "audit"
    out.mkdir()
    (out / "report.json").write_bytes(base64.b64decode(answer["report_b64"]))
    (out / "report.json.sig").write_bytes(base64.b64decode(answer["signature_b64"]))
    (out / PUBLIC_NAME).write_text(answer["public_key_pem"])
    assert (out / "report.json").read_bytes() == body
    assert (out / PUBLIC_NAME).read_bytes() == (tmp_path / "privacy" / PUBLIC_NAME).read_bytes()
    assert answer["sha256"] == hashlib.sha256(body).hexdigest()
    report = verify_report(out / "report.json", out / PUBLIC_NAME, out / "report.json.sig")
    assert report["run_id"] == run["run_ref"]

    # The upload is in the audit trail.
    events = client.get(f"{API}/federations/{net.fid}/audit", headers=net.auditor.headers).json()
    uploaded = [e for e in events["events"] if e["action"] == "run.privacy_report_uploaded"]
    assert len(uploaded) == 1 and uploaded[0]["detail"]["sha256"] == answer["sha256"]
    assert events["chain_intact"]


def test_bad_uploads_are_refused_with_the_reason(portal, client, tmp_path):
    net = network(portal)
    run = _dp_run(portal, net)
    other = _dp_run(portal, net)
    upload, body = _signed(tmp_path, run["run_ref"])
    url = f"{API}/runs/{run['id']}/privacy-report"

    def post(**changes: str):  # type: ignore[no-untyped-def]
        return client.post(url, headers=net.coordinator, json={**upload, **changes})

    tampered = bytearray(base64.b64decode(upload["signature_b64"]))
    tampered[0] ^= 1
    refused = post(signature_b64=base64.b64encode(bytes(tampered)).decode())
    assert refused.status_code == 400 and "bad signature" in refused.json()["detail"]
    edited = body.replace(b'"budget_epsilon": 4.0', b'"budget_epsilon": 9.0')
    assert edited != body
    refused = post(report_b64=base64.b64encode(edited).decode())
    assert refused.status_code == 400 and "bad signature" in refused.json()["detail"]
    stranger = public_pem(Ed25519PrivateKey.generate().public_key()).decode()
    refused = post(public_key_pem=stranger)  # was 'bad signature': now refused before, as not the pinned key
    assert refused.status_code == 409 and "pins" in refused.json()["detail"]
    refused = post(public_key_pem="-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n")
    assert refused.status_code == 400 and "not a PEM public key" in refused.json()["detail"]
    refused = post(report_b64="***not base64***")
    assert refused.status_code == 400 and "report_b64 is not valid base64" in refused.json()["detail"]
    refused = post(signature_b64=base64.b64encode(b"short").decode())
    assert refused.status_code == 400 and "64" in refused.json()["detail"]

    # A genuine report of another run.
    wrong = client.post(f"{API}/runs/{other['id']}/privacy-report", headers=net.coordinator, json=upload)
    assert wrong.status_code == 400 and f"not for run {other['id']}" in wrong.json()["detail"]

    assert post().status_code == 201
    again = post()
    assert again.status_code == 409 and "already has a signed privacy report" in again.json()["detail"]
    actions = [e["action"] for e in client.get(f"{API}/federations/{net.fid}/audit", headers=net.anchor.headers)
               .json()["events"]]  # fmt: skip
    assert actions.count("run.privacy_report_uploaded") == 1  # refusals change nothing


def test_who_may_upload_and_read(portal, client, tmp_path):
    net = network(portal)
    run = _dp_run(portal, net)
    upload, _ = _signed(tmp_path, run["run_ref"])
    url = f"{API}/runs/{run['id']}/privacy-report"

    for person in (net.auditor, net.anchor, net.supplier_a):
        assert client.post(url, headers=person.headers, json=upload).status_code == 403
    assert client.post(url, headers=net.site_a.headers, json=upload).status_code == 403
    assert client.post(url, headers=net.coordinator, json=upload).status_code == 201

    for reader in (net.supplier_a, net.site_a):
        refused = client.get(url, headers=reader.headers)
        assert refused.status_code == 403, refused.text
    assert "auditor" in client.get(url, headers=net.supplier_a.headers).json()["detail"]

    # Another federation's people and coordinator do not see the run at all.
    outsider = network(portal)
    for headers in (outsider.auditor.headers, outsider.anchor.headers, outsider.coordinator):
        assert client.get(url, headers=headers).status_code == 404
    assert client.post(url, headers=outsider.coordinator, json=upload).status_code == 404
    assert client.get(f"{API}/runs/999999/privacy-report", headers=net.auditor.headers).status_code == 404


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_cli_writes_files_openssl_and_sangsaeng_verify(portal, live_server, monkeypatch, tmp_path):
    from coordinator.cli import app as sangsaeng

    net = network(portal)
    run = _dp_run(portal, net)
    upload, body = _signed(tmp_path, run["run_ref"])
    posted = portal.client.post(f"{API}/runs/{run['id']}/privacy-report", headers=net.coordinator, json=upload)
    assert posted.status_code == 201, posted.text

    runner = CliRunner()
    monkeypatch.setattr("portal.cli.TOKEN_FILE", tmp_path / "no-token")
    out = tmp_path / "auditor"
    result = runner.invoke(sangsaeng, ["portal", "privacy-report", str(run["id"]), "--out", str(out),
                                       "--portal", live_server, "--token", net.auditor.token])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "signature verifies" in result.output
    for name in ("report.json", "report.json.sig", PUBLIC_NAME):
        assert (out / name).read_bytes() == (tmp_path / "privacy" / name).read_bytes()
    assert (out / "report.json").read_bytes() == body

    verified = runner.invoke(sangsaeng, ["privacy", "verify", str(out / "report.json"),
                                         "--public-key", str(out / PUBLIC_NAME)])  # fmt: skip
    assert verified.exit_code == 0, verified.output
    if shutil.which("openssl"):
        check = subprocess.run(
            ["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(out / PUBLIC_NAME), "-rawin",
             "-in", str(out / "report.json"), "-sigfile", str(out / "report.json.sig")],
            capture_output=True, text=True,
        )  # fmt: skip
        assert check.returncode == 0, check.stdout + check.stderr

    refused = runner.invoke(sangsaeng, ["portal", "privacy-report", str(run["id"]), "--out", str(tmp_path / "x"),
                                        "--portal", live_server, "--token", net.supplier_a.token])  # fmt: skip
    assert refused.exit_code == 2 and "403" in refused.output


def test_privacy_page_shows_the_signed_report_to_auditors_only(portal, client, tmp_path):
    from tests.portal.test_web import sign_in

    net = network(portal)
    run = _dp_run(portal, net)
    upload, body = _signed(tmp_path, run["run_ref"])
    assert (
        client.post(f"{API}/runs/{run['id']}/privacy-report", headers=net.coordinator, json=upload).status_code == 201
    )
    digest = hashlib.sha256(body).hexdigest()
    for reader in (net.auditor, net.anchor):
        page = sign_in(client, reader.email).get(f"/federations/{net.fid}/privacy")
        assert page.status_code == 200 and digest in page.text and "verified at upload" in page.text
    page = sign_in(client, net.supplier_a.email).get(f"/federations/{net.fid}/privacy")
    assert page.status_code == 200 and digest not in page.text and "signed-reports" not in page.text


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_coordinator_key_that_is_not_an_ed25519_pem_is_a_400_naming_the_field(portal, client, tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    net = network(portal)
    run = _dp_run(portal, net)
    upload, _ = _signed(tmp_path, run["run_ref"])
    url = f"{API}/runs/{run['id']}/privacy-report"
    ecdsa = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    for pem, reason in (
        (ecdsa, "public_key_pem is not an Ed25519 public key"),
        ("-----BEGIN PUBLIC KEY-----\nkey\u00e9\n-----END PUBLIC KEY-----\n",
         "public_key_pem is not a PEM public key: it holds non-ASCII characters"),
    ):  # fmt: skip
        refused = client.post(url, headers=net.coordinator, json={**upload, "public_key_pem": pem})
        assert refused.status_code == 400 and refused.json()["detail"] == reason
    garbage = client.post(url, headers=net.coordinator, json={**upload, "public_key_pem": "not a key"})
    assert garbage.status_code == 400 and garbage.json()["detail"].startswith(
        "public_key_pem is not a PEM public key: "
    )


# -- finding 8: reports verify against the federation's pinned coordinator key only -------------------------------
def _audit(client, net) -> list[dict]:  # type: ignore[no-untyped-def]
    return client.get(f"{API}/federations/{net.fid}/audit", headers=net.anchor.headers).json()["events"]


def _pinned(portal) -> str:  # type: ignore[no-untyped-def]
    return fingerprint(load_public_pem(portal.coordinator_key_pem()))


def test_report_signed_by_a_new_key_is_refused_naming_both_fingerprints(portal, client, tmp_path):
    """The pen test: a report signed by a brand-new key, contradicting the run's epsilon, was stored as verified."""
    net = network(portal)
    run = _dp_run(portal, net)
    attacker = Ed25519PrivateKey.generate()
    forged = _report(run["run_ref"], budget_epsilon=100.0)  # recomputes, but says budgets the run never had
    upload, _ = _upload_of(forged, attacker, tmp_path / "forged")
    url = f"{API}/runs/{run['id']}/privacy-report"

    refused = client.post(url, headers=net.coordinator, json=upload)
    assert refused.status_code == 409, refused.text
    detail = refused.json()["detail"]
    assert fingerprint(attacker) in detail and _pinned(portal) in detail and "pinned key only" in detail
    # Without the key, or with the pinned key's PEM in front of it, the signature is checked under the pinned key.
    for pem in (None, portal.coordinator_key_pem()):
        refused = client.post(url, headers=net.coordinator, json={**upload, "public_key_pem": pem})
        assert refused.status_code == 400 and "bad signature" in refused.json()["detail"]
        assert _pinned(portal) in refused.json()["detail"]
    assert client.get(url, headers=net.auditor.headers).status_code == 404  # nothing stored
    assert "run.privacy_report_uploaded" not in [e["action"] for e in _audit(client, net)]

    # The genuine report, signed by the pinned key, may come without its key.
    genuine, _ = _signed(tmp_path, run["run_ref"])
    stored = client.post(url, headers=net.coordinator, json={**genuine, "public_key_pem": None})
    assert stored.status_code == 201, stored.text
    assert stored.json()["public_key_fingerprint"] == _pinned(portal) and stored.json()["verified_with_pinned_key"]


def test_a_federation_without_a_pinned_key_stores_no_report(portal, client, tmp_path):
    anchor = portal.anchor()
    fid = portal.federation(anchor)["id"]
    for n, site in enumerate(SITES):
        portal.site(anchor, fid, f"Unpinned Supplier {n} {fid}", site)
    coordinator = portal.coordinator(anchor, fid, pin_key=False)
    assert client.get(f"{API}/federations/{fid}", headers=anchor.headers).json()["coordinator_key_fingerprint"] is None
    run = portal.run(coordinator, fid, list(SITES), privacy=_recorded(_report("any")))
    upload, _ = _signed(tmp_path, run["run_ref"])
    refused = client.post(f"{API}/runs/{run['id']}/privacy-report", headers=coordinator, json=upload)
    assert refused.status_code == 409, refused.text
    assert f"federation {fid} has no pinned coordinator signing key" in refused.json()["detail"]
    assert "coordinator-token --public-key" in refused.json()["detail"]


def test_report_contradicting_the_runs_recorded_privacy_is_refused(portal, client, tmp_path):
    net = network(portal)
    report = _report("any")
    genuine = _recorded(report)
    alpha = genuine["alpha-line-1"]

    def upload_for(privacy: dict | None, sites: tuple[str, ...] = SITES):  # type: ignore[no-untyped-def]
        run = portal.run(net.coordinator, net.fid, list(SITES), privacy=privacy)
        key = load_signing_key(tmp_path / "coordinator-key", create=True)
        upload, _ = _upload_of(_report(run["run_ref"], sites), key, tmp_path / run["run_ref"])
        return client.post(f"{API}/runs/{run['id']}/privacy-report", headers=net.coordinator, json=upload)

    cases = [
        ({**genuine, "alpha-line-1": {**alpha, "epsilon": 2.0}}, SITES,
         f"site 'alpha-line-1': run 'run-N' records epsilon 2, its signed privacy report {alpha['epsilon']:g}"),
        ({**genuine, "alpha-line-1": {**alpha, "budget_epsilon": 8.0}}, SITES,
         "site 'alpha-line-1': run 'run-N' records budget_epsilon 8, its signed privacy report 4"),
        ({**genuine, "alpha-line-1": {**alpha, "epsilon_by_round": [0.1, 0.2, alpha["epsilon"]]}}, SITES,
         "site 'alpha-line-1': run 'run-N' records epsilon by round [0.1, 0.2,"),
        (None, SITES, "was reported without privacy data, but its signed privacy report records DP for site(s) "
                      "['alpha-line-1', 'beta-line-1']"),
        ({"alpha-line-1": alpha}, SITES, "records site(s) ['beta-line-1'] for which run 'run-N' recorded no privacy"),
        (genuine, ("alpha-line-1",), "records privacy for site 'beta-line-1', which its signed privacy report"),
    ]  # fmt: skip
    for privacy, sites, message in cases:
        refused = upload_for(privacy, sites)
        assert refused.status_code == 422, refused.text
        assert re.sub(r"run-\d+", "run-N", refused.json()["detail"]).find(message) >= 0, refused.json()["detail"]
    assert "run.privacy_report_uploaded" not in [e["action"] for e in _audit(client, net)]
    assert upload_for(genuine).status_code == 201


def test_report_whose_epsilons_do_not_recompute_is_refused(portal, client, tmp_path):
    """Signed by the pinned key is not enough: the portal recomputes what `privacy verify` recomputes."""
    net = network(portal)
    key = load_signing_key(tmp_path / "coordinator-key", create=True)
    report = _report("any")
    claimed = 0.5  # a spend lower than the recorded noise gives, claimed consistently everywhere
    for entry in report["sites"].values():
        entry["rounds"][-1]["epsilon"] = entry["epsilon"] = claimed
    run = _dp_run(portal, net, _recorded(report))
    report["run_id"] = run["run_ref"]
    upload, _ = _upload_of(report, key, tmp_path / "low")
    refused = client.post(f"{API}/runs/{run['id']}/privacy-report", headers=net.coordinator, json=upload)
    assert refused.status_code == 422, refused.text
    assert (
        "does not verify: site 'alpha-line-1' round 3: recorded epsilon 0.500000 but the rdp accountant gives"
        in (refused.json()["detail"])
    )

    # A report without the records epsilon is recomputed from (the shape the old tests signed).
    run = portal.run(
        net.coordinator, net.fid, list(SITES), privacy={s: {"epsilon": 1, "budget_epsilon": 8} for s in SITES}
    )
    bare = {"run_id": run["run_ref"], "sites": {s: {"epsilon": 1, "budget_epsilon": 8} for s in SITES}}
    body = json.dumps(bare).encode()
    upload = {"report_b64": base64.b64encode(body).decode(), "signature_b64": base64.b64encode(key.sign(body)).decode()}
    refused = client.post(f"{API}/runs/{run['id']}/privacy-report", headers=net.coordinator, json=upload)
    assert refused.status_code == 422 and "lacks what its epsilons are recomputed from" in refused.json()["detail"]

    # A report that recomputes but states no numeric budget is refused by name, not a 500.
    run = _dp_run(portal, net)
    odd = _report(run["run_ref"])
    odd["sites"]["beta-line-1"]["budget_epsilon"] = "four"
    body = json.dumps(odd).encode()
    upload = {"report_b64": base64.b64encode(body).decode(), "signature_b64": base64.b64encode(key.sign(body)).decode()}
    refused = client.post(f"{API}/runs/{run['id']}/privacy-report", headers=net.coordinator, json=upload)
    assert refused.status_code == 422, refused.text
    assert "site 'beta-line-1': the signed privacy report has no numeric budget_epsilon" in refused.json()["detail"]


def test_a_sequence_tasks_report_that_claims_per_row_epsilons_is_refused(portal, client, tmp_path):
    """`turbofan-rul`'s epsilons are per window: a report stating per-row ones overstates them (issue 15)."""
    net = network(portal)
    key = load_signing_key(tmp_path / "coordinator-key", create=True)
    report = _report("any")
    sequence = {"group": "unit", "order": "cycle", "window": 30, "stride": 1, "short": "pad"}
    report["task"] = {"name": "turbofan-rul", "kind": "regression", "sequence": sequence}
    report["record_unit"] = {"record": "row"}
    run = _dp_run(portal, net, _recorded(report))
    report["run_id"] = run["run_ref"]
    upload, _ = _upload_of(report, key, tmp_path / "rows")
    refused = client.post(f"{API}/runs/{run['id']}/privacy-report", headers=net.coordinator, json=upload)
    assert refused.status_code == 422, refused.text
    assert "does not verify: record_unit" in refused.json()["detail"] and "per window" in refused.json()["detail"]


def test_anchor_pins_and_rotates_the_key_and_the_rotation_is_audited(portal, client, tmp_path):
    net = network(portal)
    fid, url = net.fid, f"{API}/federations/{net.fid}/coordinator-key"
    old = _pinned(portal)
    pinned = [e for e in _audit(client, net) if e["action"] == "federation.coordinator_key_pinned"]
    assert [e["detail"] for e in pinned] == [{"fingerprint": old}]
    for reader in (
        net.anchor.headers,
        net.auditor.headers,
        net.supplier_a.headers,
        net.site_a.headers,
        net.coordinator,
    ):
        shown = client.get(url, headers=reader)
        assert shown.status_code == 200 and shown.json()["fingerprint"] == old
        assert client.get(f"{API}/federations/{fid}", headers=reader).json()["coordinator_key_fingerprint"] == old
    new_key = Ed25519PrivateKey.generate()
    new_pem = public_pem(new_key.public_key()).decode()

    # Issuing another token with another key does not rotate it.
    refused = client.post(f"{API}/federations/{fid}/tokens", headers=net.anchor.headers,
                          json={"name": "second", "coordinator_public_key_pem": new_pem})  # fmt: skip
    assert (
        refused.status_code == 409
        and old in refused.json()["detail"]
        and fingerprint(new_key) in refused.json()["detail"]
    )
    same_key = {"name": "second", "coordinator_public_key_pem": portal.coordinator_key_pem()}
    again = client.post(f"{API}/federations/{fid}/tokens", headers=net.anchor.headers, json=same_key)
    assert again.status_code == 201 and again.json()["coordinator_key_fingerprint"] == old

    # Only the anchor rotates; another federation's anchor does not even see the federation.
    body = {"public_key_pem": new_pem}
    for headers, status, words in (
        (net.coordinator, 403, "signed-in users"),
        (net.auditor.headers, 403, "read-only"),
        (net.supplier_a.headers, 403, "cannot pin or rotate"),
        (net.site_a.headers, 403, "signed-in users"),
        (portal.anchor().headers, 404, f"federation {fid} not found"),
    ):
        refused = client.put(url, headers=headers, json=body)
        assert refused.status_code == status and words in refused.json()["detail"], refused.text
        assert old not in refused.json()["detail"]
    for pem, words in (("-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n", "not a PEM public key"),
                       (_ec_pem(), "not an Ed25519 public key")):  # fmt: skip
        refused = client.put(url, headers=net.anchor.headers, json={"public_key_pem": pem})
        assert refused.status_code == 422 and words in refused.json()["detail"], refused.text
    assert client.get(url, headers=net.anchor.headers).json()["fingerprint"] == old

    rotated = client.put(url, headers=net.anchor.headers, json=body)
    assert rotated.status_code == 200 and rotated.json()["fingerprint"] == fingerprint(new_key)
    events = [e for e in _audit(client, net) if e["action"] == "federation.coordinator_key_rotated"]
    assert [e["detail"] for e in events] == [{"old_fingerprint": old, "new_fingerprint": fingerprint(new_key)}]
    assert net.anchor.email in events[0]["actor"]
    same = client.put(url, headers=net.anchor.headers, json=body)  # the pinned key again: nothing to audit
    assert same.status_code == 200 and len([e for e in _audit(client, net) if "rotated" in e["action"]]) == 1

    # After the rotation the old key's reports are refused, the new key's stored.
    run = _dp_run(portal, net)
    upload, _ = _signed(tmp_path, run["run_ref"])
    refused = client.post(f"{API}/runs/{run['id']}/privacy-report", headers=net.coordinator, json=upload)
    assert refused.status_code == 409 and old in refused.json()["detail"]
    assert fingerprint(new_key) in refused.json()["detail"]
    upload, _ = _upload_of(_report(run["run_ref"]), new_key, tmp_path / "rotated")
    stored = client.post(f"{API}/runs/{run['id']}/privacy-report", headers=net.coordinator, json=upload)
    assert stored.status_code == 201 and stored.json()["public_key_fingerprint"] == fingerprint(new_key)


def _ec_pem() -> str:
    from cryptography.hazmat.primitives.asymmetric import ec

    return serialization_pem(ec.generate_private_key(ec.SECP256R1()).public_key())


def serialization_pem(key) -> str:  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def test_pinned_fingerprint_is_on_the_federation_and_privacy_pages(portal, client):
    from tests.portal.test_web import sign_in

    net = network(portal)
    pinned = _pinned(portal)
    for person, path in ((net.anchor, ""), (net.supplier_a, ""), (net.auditor, "/privacy"), (net.anchor, "/privacy")):
        page = sign_in(client, person.email).get(f"/federations/{net.fid}{path}")
        assert page.status_code == 200 and pinned in page.text, (person.email, path)
        assert "Privacy reports verify against this key only" in page.text
    bare = portal.anchor()
    fid = portal.federation(bare)["id"]
    page = sign_in(client, bare.email).get(f"/federations/{fid}")
    assert "none pinned" in page.text and pinned not in page.text


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_cli_coordinator_token_pins_the_public_key(portal, live_server, monkeypatch, tmp_path):
    from coordinator.cli import app as sangsaeng
    from privacy.keys import init_signing_key

    anchor = portal.anchor()
    fid = portal.federation(anchor)["id"]
    key_dir = tmp_path / "coordinator"
    init_signing_key(key_dir)
    monkeypatch.setattr("portal.cli.TOKEN_FILE", tmp_path / "no-token")
    runner = CliRunner()
    args = ["portal", "coordinator-token", "--federation", str(fid), "--portal", live_server, "--token", anchor.token]
    result = runner.invoke(sangsaeng, [*args, "--public-key", str(key_dir / PUBLIC_NAME)])
    assert result.exit_code == 0, result.output
    pinned = fingerprint(load_public_pem((key_dir / PUBLIC_NAME).read_bytes()))
    assert result.stdout.strip().startswith("ssc_") and len(result.stdout.strip().splitlines()) == 1  # `> token`
    assert f"pins coordinator key {pinned}" in result.stderr
    shown = portal.client.get(f"{API}/federations/{fid}/coordinator-key", headers=anchor.headers).json()
    assert shown["fingerprint"] == pinned

    other = tmp_path / "other"
    init_signing_key(other)
    refused = runner.invoke(sangsaeng, [*args, "--public-key", str(other / PUBLIC_NAME)])
    assert refused.exit_code == 2 and "409" in refused.output and pinned in refused.output
    missing = runner.invoke(sangsaeng, [*args, "--public-key", str(tmp_path / "nowhere.pem")])
    assert missing.exit_code == 2 and "cannot read the coordinator public key" in missing.output
