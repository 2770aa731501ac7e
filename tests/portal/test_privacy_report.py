"""Signed privacy reports: the coordinator stores them, auditors fetch them byte-exact and verify them."""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from privacy.keys import PUBLIC_NAME, load_signing_key, public_pem
from privacy.report import build_report, verify_report, write_signed_report
from tests.factories import dp_manifest
from tests.portal.factories import API, network


def _signed(tmp_path, run_ref: str) -> tuple[dict[str, str], bytes]:
    key = load_signing_key(tmp_path / "coordinator-key", create=True)
    path = write_signed_report(
        build_report(dp_manifest(run_ref, sites=("alpha-line-1", "beta-line-1"))), tmp_path / "privacy", key
    )
    body = path.read_bytes()
    upload = {
        "report_b64": base64.b64encode(body).decode(),
        "signature_b64": base64.b64encode(path.with_name("report.json.sig").read_bytes()).decode(),
        "public_key_pem": path.with_name(PUBLIC_NAME).read_text(),
    }
    return upload, body


def _dp_run(portal, net) -> dict:
    privacy = {s: {"epsilon": 2.0, "budget_epsilon": 4.0} for s in ("alpha-line-1", "beta-line-1")}
    return portal.run(net.coordinator, net.fid, ["alpha-line-1", "beta-line-1"], privacy=privacy)


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
    assert "bad signature" in post(public_key_pem=stranger).json()["detail"]
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
