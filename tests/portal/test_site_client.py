"""The site's commands against the portal: enroll, pull-model (verified), predict; the coordinator's upload-run."""

from __future__ import annotations

import base64
import json
import shutil

import numpy as np
import pandas as pd
import pytest

from client import portal_commands as pc
from coordinator.checkpoint import RunRecorder
from models.datasets import sample_path
from models.nets import build_model, get_weights
from models.scaler import FederatedScaler
from models.schema import validate_frame
from models.tasks import get_task
from portal.uploader import UploadError, run_report, upload_run
from tests.portal.factories import API, network


def make_run_dir(tmp_path, sites=("alpha-line-1", "beta-line-1"), auc=0.9, privacy=None, model=("mlp", (16, 8))):
    """A coordinator run directory written by the coordinator's own RunRecorder."""
    spec = get_task("predictive-maintenance")
    frame = validate_frame(pd.read_csv(sample_path(spec.name), nrows=600), spec, source="sample")
    scaler = FederatedScaler.fit_pooled(frame, spec)
    out = tmp_path / "run"
    header = {
        "config": {"task": spec.to_dict(), "model": model[0], "hidden": list(model[1])},
        "task": {"name": spec.name},
        "scaler": scaler.to_json(),
        "sites": {s: {"n_train": 10} for s in sites},
    }
    recorder = RunRecorder(out, header)
    weights = get_weights(build_model(scaler.n_inputs, name=model[0], hidden=model[1], seed=0))
    for rnd in (1, 2):
        recorder.save_checkpoint(rnd, weights)
        recorder.update_round(
            rnd,
            metrics={"loss": 0.5, "roc_auc": auc - 0.05 * (2 - rnd), "f1": float("nan")},
            per_site={s: {"roc_auc": auc, "examples": 5} for s in sites},
        )
    recorder.set(status="completed")
    if privacy is not None:  # a real report, signed with the key the factories' federations pin
        from privacy.keys import load_signing_key
        from privacy.report import build_report, write_signed_report
        from tests.factories import dp_manifest

        key = load_signing_key(tmp_path / "coordinator-key", create=True)
        run_id = json.loads((out / "manifest.json").read_text())["run_id"]
        manifest = dp_manifest(run_id, sites=tuple(privacy), rounds=2)
        for record in manifest["rounds"]:  # per-site overrides of what the accountant does not use (budgets)
            for site, dp in record["dp"].items():
                dp.update(privacy[site])
        write_signed_report(build_report(manifest), out / "privacy", key)
    return out, frame


@pytest.mark.parametrize("model", [("mlp", (16, 8)), ("ple", ())], ids=["mlp", "ple"])
def test_enroll_pull_and_predict_end_to_end(portal, client, tmp_path, model):
    net = network(portal)
    run_dir, frame = make_run_dir(tmp_path, model=model)
    client.headers.update(net.coordinator)
    run, release = upload_run(client, net.fid, run_dir, version="1.2.0")
    client.headers.pop("Authorization")
    assert run["final_metrics"]["roc_auc"] == pytest.approx(0.9) and run["final_metrics"]["f1"] is None
    assert release["status"] == "draft"
    for step in ("approve", "publish"):
        assert client.post(f"{API}/releases/{release['id']}/{step}", headers=net.anchor.headers).status_code == 200

    invite = portal.invite(net.anchor, net.fid, "Enrol Co", "enrol-1")
    site_dir = tmp_path / "site"
    record = pc.enroll("http://testserver", invite["token"], site_dir, http=client)
    assert (site_dir / "site_key").stat().st_mode & 0o777 == 0o600
    assert (site_dir / "token").stat().st_mode & 0o777 == 0o600
    client.headers.pop("Authorization", None)
    with pytest.raises(pc.PortalClientError, match="403"):  # enrolled, not approved yet
        pc.pull_model(site_dir, http=client)
    client.headers.pop("Authorization", None)
    client.post(f"{API}/memberships/{record['membership_id']}/approve", headers=net.anchor.headers)
    model = pc.pull_model(site_dir, http=client)
    client.headers.pop("Authorization", None)
    assert model.exists() and model.with_suffix(".release.json").exists()

    data = tmp_path / "line.csv"
    frame.head(200).to_csv(data, index=False)
    scores, metrics = pc.predict(model, data)
    out = pd.read_csv(scores)
    assert len(out) == 200 and out["p_Machine failure"].between(0, 1).all()
    assert set(metrics) >= {"roc_auc"}
    unlabeled = tmp_path / "new.csv"
    frame.drop(columns=["Machine failure"]).head(50).to_csv(unlabeled, index=False)
    scores, metrics = pc.predict(model, unlabeled, tmp_path / "s.csv")
    assert metrics == {} and len(pd.read_csv(scores)) == 50

    tampered = tmp_path / "tampered.zip"
    shutil.copy(model, tampered)
    shutil.copy(model.with_suffix(".release.json"), tampered.with_suffix(".release.json"))
    tampered.write_bytes(model.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(pc.PortalClientError, match="does not match"):
        pc.predict(tampered, data)


def test_pull_model_refuses_bad_signature_hash_or_status(portal, client, tmp_path):
    net = network(portal)
    run = portal.run(net.coordinator, net.fid, ["alpha-line-1", "beta-line-1"])
    release = portal.published(net.anchor, net.coordinator, net.fid, run["id"])
    artifact = client.get(f"{API}/releases/{release['id']}/artifact", headers=net.anchor.headers).content
    key = client.get(f"{API}/keys/release-signing").json()["public_key"]
    pc.verify_release(release, artifact, key)  # the real one passes
    with pytest.raises(pc.PortalClientError, match="hash"):
        pc.verify_release(release, artifact + b"x", key)
    forged_card = {**release, "model_card": {**release["model_card"], "metrics": {"roc_auc": 0.99}}}
    with pytest.raises(pc.PortalClientError, match="signature"):
        pc.verify_release(forged_card, artifact, key)
    with pytest.raises(pc.PortalClientError, match="not published"):
        pc.verify_release({**release, "status": "withdrawn"}, artifact, key)
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    other = ed25519.Ed25519PrivateKey.generate().public_key()
    other_pem = other.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    with pytest.raises(pc.PortalClientError, match="signature"):
        pc.verify_release(release, artifact, other_pem)


def test_upload_run_reads_privacy_report_and_gate_refuses(portal, client, tmp_path):
    net = network(portal)
    privacy = {"alpha-line-1": {"budget_epsilon": 2.0}, "beta-line-1": {"budget_epsilon": 8.0}}
    run_dir, _ = make_run_dir(tmp_path, privacy=privacy)
    report = run_report(run_dir)
    signed = json.loads((run_dir / "privacy" / "report.json").read_text())["sites"]["alpha-line-1"]
    assert report["privacy"]["alpha-line-1"]["epsilon_by_round"] == [r["epsilon"] for r in signed["rounds"]]
    client.headers.update(net.coordinator)
    run, release = upload_run(client, net.fid, run_dir, version="2.0.0")
    client.headers.pop("Authorization")
    stored = client.get(f"{API}/runs/{run['id']}/privacy-report", headers=net.auditor.headers)
    assert stored.status_code == 200, stored.text
    assert base64.b64decode(stored.json()["report_b64"]) == (run_dir / "privacy" / "report.json").read_bytes()
    assert run["privacy_report"]["sha256"] == stored.json()["sha256"]
    refused = client.post(f"{API}/releases/{release['id']}/approve", headers=net.anchor.headers)
    assert refused.status_code == 409, refused.text
    assert f"'alpha-line-1' spent epsilon {signed['epsilon']:g} over its budget 2" in refused.json()["detail"]
    with pytest.raises(UploadError, match="no manifest"):
        run_report(tmp_path / "nowhere")


def test_artifact_is_deterministic_and_validated(tmp_path):
    from portal.artifact import artifact_from_run, read_artifact
    from portal.core.errors import ArtifactError

    run_dir, _ = make_run_dir(tmp_path)
    first, source = artifact_from_run(run_dir)
    second, _ = artifact_from_run(run_dir)
    assert first == second and source["round"] == 2
    content = read_artifact(first)
    assert content.hidden == [16, 8] and isinstance(content.weights[0], np.ndarray)
    assert content.model == "mlp"
    with pytest.raises(ArtifactError, match="zip"):
        read_artifact(b"nope")


def test_artifact_records_its_architecture_and_a_mismatch_is_refused(tmp_path):
    from portal.artifact import artifact_from_run, build_artifact, read_artifact
    from portal.core.errors import ArtifactError

    run_dir, _ = make_run_dir(tmp_path, model=("ple", ()))
    data, _ = artifact_from_run(run_dir)
    content = read_artifact(data)
    assert content.model == "ple" and content.hidden == [] and len(content.weights) == 2
    fields = {"task": content.task, "scaler_json": content.scaler_json, "source": {"run_ref": "x", "round": 1}}
    with pytest.raises(ArtifactError, match=r"shape \(1, 143\); a 'mlp' model on the scaler's 11 inputs takes 11"):
        read_artifact(build_artifact(content.weights, hidden=[], model="mlp", **fields))
    with pytest.raises(ArtifactError, match="unknown model 'forest'"):
        read_artifact(build_artifact(content.weights, hidden=[], model="forest", **fields))
