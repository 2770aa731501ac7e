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
    report = pc.predict(model, data)
    scores, metrics = report.path, report.metrics
    out = pd.read_csv(scores)
    assert len(out) == 200 and out["p_Machine failure"].between(0, 1).all()
    assert set(metrics) >= {"roc_auc"}
    unlabeled = tmp_path / "new.csv"
    frame.drop(columns=["Machine failure"]).head(50).to_csv(unlabeled, index=False)
    report = pc.predict(model, unlabeled, tmp_path / "s.csv")
    scores, metrics = report.path, report.metrics
    assert report.predictions == 50
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
    ours = {"federation_id": net.fid, "version": "1.0.0"}
    pc.verify_release(release, artifact, key, **ours)  # the real one passes
    with pytest.raises(pc.PortalClientError, match="hash"):
        pc.verify_release(release, artifact + b"x", key, **ours)
    forged_card = {**release, "model_card": {**release["model_card"], "metrics": {"roc_auc": 0.99}}}
    with pytest.raises(pc.PortalClientError, match="signature"):
        pc.verify_release(forged_card, artifact, key, **ours)
    with pytest.raises(pc.PortalClientError, match="not published"):
        pc.verify_release({**release, "status": "withdrawn"}, artifact, key, **ours)
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    other = ed25519.Ed25519PrivateKey.generate().public_key()
    other_pem = other.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    with pytest.raises(pc.PortalClientError, match="signature"):
        pc.verify_release(release, artifact, other_pem, **ours)


class LyingPortal:
    """The real portal, except that some GETs are answered with other real, signed answers.

    What a compromised portal or a proxy in the middle can do: every federation's releases are
    signed with the one portal key, so another federation's release carries a valid signature.
    """

    def __init__(self, client, answers: dict[str, object]):  # type: ignore[no-untyped-def]
        self.client = client
        self.headers = client.headers
        self.answers = answers

    def request(self, method: str, url: str, **kwargs):  # type: ignore[no-untyped-def]
        if method == "GET" and url in self.answers:
            return self.answers[url]
        return self.client.request(method, url, **kwargs)


def _enrolled_site(portal, client, net, tmp_path, name: str):  # type: ignore[no-untyped-def]
    invite = portal.invite(net.anchor, net.fid, f"{name} Co", name)
    record = pc.enroll("http://testserver", invite["token"], tmp_path / name, http=client)
    approved = client.post(f"{API}/memberships/{record['membership_id']}/approve", headers=net.anchor.headers)
    assert approved.status_code == 200, approved.text
    return tmp_path / name


def test_pull_model_refuses_another_federations_signed_release(portal, client, tmp_path):
    net = network(portal)
    ours = portal.published(
        net.anchor, net.coordinator, net.fid, portal.run(net.coordinator, net.fid, ["alpha-line-1"])["id"]
    )
    anchor_y = portal.anchor()
    fid_y = portal.federation(anchor_y)["id"]
    portal.site(anchor_y, fid_y, "Ypsilon Parts", "y-line-1")
    coordinator_y = portal.coordinator(anchor_y, fid_y)
    theirs = portal.published(anchor_y, coordinator_y, fid_y, portal.run(coordinator_y, fid_y, ["y-line-1"])["id"])
    site_dir = _enrolled_site(portal, client, net, tmp_path, "pull-1")
    key = client.get(f"{API}/keys/release-signing").json()["public_key"]
    their_artifact = client.get(f"{API}/releases/{theirs['id']}/artifact", headers=anchor_y.headers)

    # Another federation's release, same version, valid signature: refused by the card's federation.
    with pytest.raises(pc.PortalClientError, match=rf"for federation {fid_y}, not this site's federation {net.fid}"):
        pc.verify_release(theirs, their_artifact.content, key, federation_id=net.fid, version="1.0.0")
    lying = LyingPortal(
        client,
        {
            f"{API}/federations/{net.fid}/releases": client.get(
                f"{API}/federations/{fid_y}/releases", headers=anchor_y.headers
            ),
            f"{API}/releases/{theirs['id']}/artifact": their_artifact,
        },
    )
    with pytest.raises(pc.PortalClientError, match=f"not this site's federation {net.fid}"):
        pc.pull_model(site_dir, http=lying)
    client.headers.pop("Authorization", None)
    assert not (site_dir / "models").exists() or not any((site_dir / "models").iterdir())

    # The real one: its file name is the signed card's federation and version.
    saved = pc.pull_model(site_dir, http=client)
    client.headers.pop("Authorization", None)
    assert saved == site_dir / "models" / f"federation-{net.fid}-{ours['model_card']['version']}.zip"


def test_pull_model_takes_the_version_and_file_name_from_the_signed_card(portal, client, tmp_path):
    net = network(portal)
    release = portal.published(
        net.anchor, net.coordinator, net.fid, portal.run(net.coordinator, net.fid, ["alpha-line-1"])["id"]
    )
    site_dir = _enrolled_site(portal, client, net, tmp_path, "pull-2")
    key = client.get(f"{API}/keys/release-signing").json()["public_key"]
    artifact = client.get(f"{API}/releases/{release['id']}/artifact", headers=net.anchor.headers).content
    with pytest.raises(pc.PortalClientError, match="for version 1.0.0, not 2.0.0"):
        pc.verify_release({**release, "version": "2.0.0"}, artifact, key, federation_id=net.fid, version="2.0.0")

    listing = f"{API}/federations/{net.fid}/releases"
    for label, asked, match in (
        ("../../../escaped", None, "not ../../../escaped"),  # an unsigned field must not name the file
        ("2.0.0", "2.0.0", "for version 1.0.0, not 2.0.0"),  # 1.0.0 served when 2.0.0 is asked for
    ):
        relabelled = client.get(listing, headers=net.anchor.headers)
        relabelled._content = json.dumps([{**release, "version": label}]).encode()  # the lie, over the real answer
        with pytest.raises(pc.PortalClientError, match=match):
            pc.pull_model(site_dir, version=asked, http=LyingPortal(client, {listing: relabelled}))
        client.headers.pop("Authorization", None)
    assert not list(tmp_path.rglob("escaped*")) and not list(tmp_path.rglob("*2.0.0*"))


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
    from sangsaeng.errors import ModelArtifactError

    run_dir, _ = make_run_dir(tmp_path)
    first, source = artifact_from_run(run_dir)
    second, _ = artifact_from_run(run_dir)
    assert first == second and source["round"] == 2
    content = read_artifact(first)
    assert content.hidden == [16, 8] and isinstance(content.weights[0], np.ndarray)
    assert content.model == "mlp"
    with pytest.raises(ModelArtifactError, match="zip"):
        read_artifact(b"nope")


def test_artifact_records_its_architecture_and_a_mismatch_is_refused(tmp_path):
    from portal.artifact import artifact_from_run, build_artifact, read_artifact
    from sangsaeng.errors import ModelArtifactError

    run_dir, _ = make_run_dir(tmp_path, model=("ple", ()))
    data, _ = artifact_from_run(run_dir)
    content = read_artifact(data)
    assert content.model == "ple" and content.hidden == [] and len(content.weights) == 2
    fields = {"task": content.task, "scaler_json": content.scaler_json, "source": {"run_ref": "x", "round": 1}}
    with pytest.raises(ModelArtifactError, match=r"shape \(1, 143\); a 'mlp' model on the scaler's 11 inputs takes 11"):
        read_artifact(build_artifact(content.weights, hidden=[], model="mlp", **fields))
    with pytest.raises(ModelArtifactError, match="unknown model 'forest'"):
        read_artifact(build_artifact(content.weights, hidden=[], model="forest", **fields))


# -- `sangsaeng portal site-keys --out` (issue 12, finding 10) -----------------------------------
HOSTILE_SITE_NAMES = ("../escaped", "a/b", "a\\b", ".", "..", "-rf", "Line-1", "a_b", "가" * 100, "alpha")
# ("Line-1" and "line-1" cannot both be sites any more: names are unique after case folding;
# "a/b" and "a_b" still sanitise to the same file name.)


def test_site_keys_out_writes_one_file_per_key_inside_its_directory(portal, live_server, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from portal.cli import app as portal_cli

    anchor = portal.anchor()
    fid = portal.federation(anchor)["id"]
    sites = {name: portal.site(anchor, fid, f"Hostile Names {n}", name) for n, name in enumerate(HOSTILE_SITE_NAMES)}
    out = tmp_path / "deep" / "keys"
    out.mkdir(parents=True)
    victim = tmp_path / "victim.txt"
    victim.write_text("not a key\n")
    (out / "alpha.pub").symlink_to(victim)  # planted: the export must replace it, not write through it
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if out not in p.parents and p != out)
    monkeypatch.setattr("portal.cli.TOKEN_FILE", tmp_path / "no-token-file")

    result = CliRunner().invoke(
        portal_cli, ["site-keys", "--federation", str(fid), "--out", str(out), "--portal", live_server,
                     "--token", anchor.token],
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    assert f"{len(HOSTILE_SITE_NAMES)} key(s) written" in result.output
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if out not in p.parents and p != out)
    assert after == before and victim.read_text() == "not a key\n"  # nothing written outside --out
    files = sorted(out.iterdir())
    assert all(f.parent == out and f.is_file() and not f.is_symlink() for f in files)
    assert len(files) == len(HOSTILE_SITE_NAMES)  # one file per key, even where names sanitise the same
    assert sorted(f.read_text().strip() for f in files) == sorted(s.public_key for s in sites.values())
    names = {f.name for f in files}
    assert {"alpha.pub", "Line-1.pub", "a_b.pub"} <= names  # plain names stay as they were
    assert all(len(name.encode()) <= 255 and not name.startswith((".", "-")) for name in names)
    by_key = {f.read_text().strip(): f.name for f in files}
    assert by_key[sites["a/b"].public_key] == f"a_b-m{sites['a/b'].membership_id}.pub"
    for site in sites.values():  # each file is named in the output next to its site
        assert f"(membership {site.membership_id}): {out / by_key[site.public_key]}" in result.output


def test_key_file_names_for_names_the_portal_would_never_accept():
    from portal.cli import key_file_names

    keys = [
        {"site_name": "nul\x00byte", "membership_id": 1},
        {"site_name": "x" * 10_000, "membership_id": 2},
        {"site_name": "", "membership_id": 3},
        {"site_name": "/etc/passwd", "membership_id": 4},
        {"site_name": "same", "membership_id": 5},
        {"site_name": "same", "membership_id": 6},
        {"site_name": "same-m6", "membership_id": 7},
    ]
    names = key_file_names(keys)
    assert names[0] == "nul_byte-m1.pub" and names[3] == "etc_passwd-m4.pub" and names[2] == "site-m3.pub"
    assert names[1] == "x" * 100 + "-m2.pub"
    assert names[4:] == ["same.pub", "same-m6.pub", "same-m6-m7.pub"]
    assert len(set(names)) == len(names) and all("/" not in n and "\x00" not in n for n in names)
