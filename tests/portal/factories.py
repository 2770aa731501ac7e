"""Factories for portal tests: organisations, users, federations, enrolled sites, runs, releases.

People are created directly in the database (with one cached argon2 hash per password) and
get session tokens without the login round trip; everything else goes through the real API,
so each factory also exercises the routes.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import itertools
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import Session

from client.portal_commands import generate_site_key, sign_enrolment
from portal import crud
from portal.core.security import hash_password
from portal.models import OrgKind, TokenKind

API = "/api/v1"
PASSWORD = "correct horse battery"
_counter = itertools.count(1)


@functools.cache
def password_hash(password: str) -> str:
    return hash_password(password)


@functools.cache
def model_artifact(task: str = "predictive-maintenance") -> bytes:
    """A real artifact: a small MLP for the task with a scaler fitted on the embedded sample data."""
    import pandas as pd

    from models.datasets import sample_path
    from models.nets import build_model, get_weights
    from models.scaler import FederatedScaler
    from models.schema import validate_frame
    from models.tasks import get_task
    from portal.artifact import build_artifact

    spec = get_task(task)
    frame = validate_frame(pd.read_csv(sample_path(task), nrows=400), spec, source="sample")
    scaler = FederatedScaler.fit_pooled(frame, spec)
    weights = get_weights(build_model(scaler.n_inputs, hidden=(8,), seed=0))
    return build_artifact(
        weights, task=spec.to_dict(), scaler_json=scaler.to_json(), hidden=[8], source={"run_ref": "test", "round": 1}
    )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Person:
    email: str
    org_id: int
    org_name: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.token)


@dataclass
class Site:
    membership_id: int
    site_name: str
    org_name: str
    token: str
    site_dir: Path
    public_key: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.token)


class PortalFactory:
    """Builds portal state for one test, against the app under test."""

    def __init__(self, app: FastAPI, client: TestClient, tmp_path: Path):
        self.app = app
        self.client = client
        self.tmp_path = tmp_path

    def session(self) -> Session:
        return Session(self.app.state.engine, expire_on_commit=False)

    def person(
        self, kind: OrgKind | str = OrgKind.anchor, org_name: str | None = None, password: str = PASSWORD
    ) -> Person:
        kind = OrgKind(kind)
        n = next(_counter)
        org_name = org_name or f"{kind.value.title()} Co {n}"
        with self.session() as session:
            org = crud.get_org_by_name(session, org_name) or crud.create_org(session, org_name, kind)
            user = crud.create_user(
                session,
                email=f"{kind.value}{n}@example.com",
                password=password,
                organisation_id=org.id,
                hashed=password_hash(password),
            )
            plain, _ = crud.issue_token(session, TokenKind.session, lifetime=timedelta(hours=1), user_id=user.id)
            session.commit()
            return Person(email=user.email, org_id=org.id, org_name=org.name, token=plain)  # type: ignore[arg-type]

    def anchor(self) -> Person:
        return self.person(OrgKind.anchor)

    def federation(self, anchor: Person, *, threshold: float = 0.5, task: str = "predictive-maintenance") -> dict:
        n = next(_counter)
        response = self.client.post(
            f"{API}/federations",
            headers=anchor.headers,
            json={"name": f"Federation {n}", "task_name": task, "threshold": threshold},
        )
        assert response.status_code == 201, response.text
        return response.json()

    def invite(self, anchor: Person, federation_id: int, org_name: str, site_name: str, hours: int = 24) -> dict:
        response = self.client.post(
            f"{API}/federations/{federation_id}/invites",
            headers=anchor.headers,
            json={"organisation_name": org_name, "site_name": site_name, "expires_hours": hours},
        )
        assert response.status_code == 201, response.text
        return response.json()

    def enrol_body(self, invite_token: str, site_dir: Path | None = None) -> tuple[dict[str, Any], Path]:
        site_dir = site_dir or self.tmp_path / f"site-{next(_counter)}"
        key, public = generate_site_key(site_dir)
        return {
            "invite_token": invite_token,
            "public_key": public,
            "proof": sign_enrolment(key, invite_token, public),
        }, site_dir

    def site(
        self,
        anchor: Person,
        federation_id: int,
        org_name: str,
        site_name: str,
        *,
        approve: bool = True,
        admin_email: str | None = None,
    ) -> Site:
        invite = self.invite(anchor, federation_id, org_name, site_name)
        body, site_dir = self.enrol_body(invite["token"])
        if admin_email:
            body |= {"admin_email": admin_email, "admin_password": PASSWORD}
        response = self.client.post(f"{API}/sites/enrol", json=body)
        assert response.status_code == 201, response.text
        answer = response.json()
        membership_id = answer["membership"]["id"]
        if approve:
            approved = self.client.post(f"{API}/memberships/{membership_id}/approve", headers=anchor.headers)
            assert approved.status_code == 200, approved.text
        return Site(
            membership_id=membership_id,
            site_name=site_name,
            org_name=org_name,
            token=answer["client_token"],
            site_dir=site_dir,
            public_key=body["public_key"],
            extra=answer,
        )

    def supplier_user(self, org_name: str) -> Person:
        return self.person(OrgKind.supplier, org_name=org_name)

    def coordinator_key_pem(self) -> str:
        """The public key of this test's coordinator signing key (in tmp_path/coordinator-key, made once)."""
        from privacy.keys import load_signing_key, public_pem

        return public_pem(load_signing_key(self.tmp_path / "coordinator-key", create=True).public_key()).decode()

    def coordinator(self, anchor: Person, federation_id: int, *, pin_key: bool = True) -> dict[str, str]:
        """A coordinator token; by default the federation pins this test's coordinator signing key with it."""
        body: dict[str, Any] = {"name": "coordinator", "days": 30}
        if pin_key:
            body["coordinator_public_key_pem"] = self.coordinator_key_pem()
        response = self.client.post(f"{API}/federations/{federation_id}/tokens", headers=anchor.headers, json=body)
        assert response.status_code == 201, response.text
        return bearer(response.json()["token"])

    def run(
        self,
        coordinator: dict[str, str],
        federation_id: int,
        sites: list[str],
        *,
        auc: float = 0.9,
        privacy: dict[str, Any] | None = None,
        rounds: int = 3,
        contribution: dict[str, Any] | None = None,
    ) -> dict:
        body: dict[str, Any] = {
            "run_ref": f"run-{next(_counter)}",
            "sites": sites,
            "rounds": [
                {
                    "round": r,
                    "metrics": {"roc_auc": auc - 0.1 * (rounds - r) / rounds, "loss": 0.5 / r},
                    "per_site": {s: {"roc_auc": auc - 0.01 * i} for i, s in enumerate(sites)},
                }
                for r in range(1, rounds + 1)
            ],
            "privacy": privacy,
        }
        if contribution is not None:
            body["contribution"] = contribution
        response = self.client.post(f"{API}/federations/{federation_id}/runs", headers=coordinator, json=body)
        assert response.status_code == 201, response.text
        return response.json()

    def candidate(self, coordinator: dict[str, str], federation_id: int, run_id: int, version: str = "1.0.0") -> dict:
        response = self.client.post(
            f"{API}/federations/{federation_id}/releases", headers=coordinator, json=release_body(run_id, version)
        )
        assert response.status_code == 201, response.text
        return response.json()

    def published(
        self, anchor: Person, coordinator: dict[str, str], federation_id: int, run_id: int, version: str = "1.0.0"
    ) -> dict:
        release = self.candidate(coordinator, federation_id, run_id, version)
        for step in ("approve", "publish"):
            response = self.client.post(f"{API}/releases/{release['id']}/{step}", headers=anchor.headers)
            assert response.status_code == 200, response.text
        return response.json()


def contribution(
    sites: dict[str, tuple[int, float | None]], *, rounds: int = 3, secagg: bool = False, seed: int = 0
) -> dict[str, Any]:
    """A results.json ``contribution`` block (the schema agreed with wt-contrib) for `sites`.

    `sites` maps a site to (records, utility); every site trained every round. Shares are
    computed from the values, so the block is consistent: data shares sum to 1 and utility
    shares to 1 (efficiency). Under `secagg` only the data share is given, as the schema says.
    """
    total_records = sum(records for records, _ in sites.values())
    gain = sum(u for _, u in sites.values() if u is not None)
    per_site = {}
    for site, (records, utility) in sites.items():
        near_zero = utility is not None and utility <= 0.01 * abs(gain)
        per_site[site] = {
            "records": records,
            "rounds_trained": rounds,
            "data_share": records / total_records,
            "utility": None if secagg else utility,
            "utility_share": None if secagg or utility is None else utility / gain,
            "leave_one_out": None if secagg or utility is None else utility * 0.9,
            "flag": "free_rider" if near_zero and not secagg else None,
            "alone": 0.7 + records / 10000,  # what the site got back: its metric alone / with the network
            "with_network": 0.85 + records / 100000,
        }
    return {
        "method": None if secagg else "gtg-shapley",
        "metric": "roc_auc",
        "inputs": {
            "rounds": rounds,
            "coalitions_per_round": 16,
            "coalitions_evaluated": 0 if secagg else 16 * rounds,
            "seed": seed,
            "truncation": {"within_round": 0.001, "between_round": 0.001},
            "initial_metric": 0.61,
            "final_metric": 0.61 + gain,
        },
        "total_gain": None if secagg else gain,
        "not_available": (
            {"utility": "secure aggregation hides single updates", "leave_one_out": "needs a SecAgg+ run per coalition"}
            if secagg
            else {}
        ),
        "per_site": per_site,
    }


def release_body(run_id: int, version: str = "1.0.0", data: bytes | None = None) -> dict[str, Any]:
    data = model_artifact() if data is None else data
    return {
        "run_id": run_id,
        "version": version,
        "artifact_sha256": hashlib.sha256(data).hexdigest(),
        "artifact_b64": base64.b64encode(data).decode(),
    }


@dataclass
class Network:
    """A federation with an anchor, two approved supplier sites (with admins), a coordinator and an auditor."""

    anchor: Person
    federation: dict
    site_a: Site
    site_b: Site
    supplier_a: Person
    supplier_b: Person
    auditor: Person
    coordinator: dict[str, str]

    @property
    def fid(self) -> int:
        return self.federation["id"]


def network(portal: PortalFactory) -> Network:
    anchor = portal.anchor()
    federation = portal.federation(anchor)
    fid = federation["id"]
    n = next(_counter)
    site_a = portal.site(anchor, fid, f"Alpha Parts {n}", "alpha-line-1")
    site_b = portal.site(anchor, fid, f"Beta Mould {n}", "beta-line-1")
    auditor = portal.person(OrgKind.auditor)
    response = portal.client.post(
        f"{API}/federations/{fid}/auditors", headers=anchor.headers, json={"organisation_id": auditor.org_id}
    )
    assert response.status_code == 201, response.text
    return Network(
        anchor=anchor,
        federation=federation,
        site_a=site_a,
        site_b=site_b,
        supplier_a=portal.supplier_user(site_a.org_name),
        supplier_b=portal.supplier_user(site_b.org_name),
        auditor=auditor,
        coordinator=portal.coordinator(anchor, fid),
    )


def session_token(portal: PortalFactory, email: str) -> str:
    """A fresh session token for an existing account (no login round trip, no rate limit)."""
    with portal.session() as session:
        user = crud.get_user_by_email(session, email)
        assert user is not None, email
        plain, _ = crud.issue_token(session, TokenKind.session, lifetime=timedelta(hours=1), user_id=user.id)
        session.commit()
    return plain


@dataclass
class Tenant:
    """Everything of one anchor, built the way the portal is used: every part through the API.

    `names` holds the strings that belong to this tenant alone (names, e-mails, run
    reference, token prefixes, key fingerprint, report hash): another tenant's response must
    contain none of them.
    """

    anchor: Person
    federation: dict
    supplier_org_id: int
    supplier_email: str
    site: Site
    auditor_org_id: int
    auditor_email: str
    coordinator: dict[str, str]
    coordinator_token_id: int
    run: dict
    release: dict
    draft: dict
    names: list[str]

    @property
    def fid(self) -> int:
        return self.federation["id"]

    @property
    def org_ids(self) -> list[int]:
        return [self.anchor.org_id, self.supplier_org_id, self.auditor_org_id]


def tenant(portal: PortalFactory, prefix: str) -> Tenant:
    """An anchor with a federation, an approved supplier site (admin from enrolment), an auditor
    organisation it created with one auditor assigned, a coordinator token, a DP run with its
    signed privacy report and contribution scores, a published release and a draft."""
    import base64

    from privacy.keys import PUBLIC_NAME, load_signing_key, public_pem
    from privacy.report import build_report, write_signed_report
    from tests.factories import dp_manifest

    client, n = portal.client, next(_counter)
    anchor = portal.person(OrgKind.anchor, org_name=f"{prefix} Motors {n}")
    created = client.post(
        f"{API}/federations",
        headers=anchor.headers,
        json={"name": f"{prefix} Federation {n}", "task_name": "predictive-maintenance", "threshold": 0.5},
    )
    assert created.status_code == 201, created.text
    federation = created.json()
    fid = federation["id"]
    supplier_email = f"{prefix.lower()}-supplier-{n}@example.com"
    site = portal.site(anchor, fid, f"{prefix} Parts {n}", f"{prefix.lower()}-line-{n}", admin_email=supplier_email)
    auditor_org = client.post(
        f"{API}/organisations", headers=anchor.headers, json={"name": f"{prefix} Audit {n}", "kind": "auditor"}
    )
    assert auditor_org.status_code == 201, auditor_org.text
    auditor_email = f"{prefix.lower()}-auditor-{n}@example.com"
    body = {"email": auditor_email, "password": PASSWORD, "organisation_id": auditor_org.json()["id"]}
    assert client.post(f"{API}/users", headers=anchor.headers, json=body).status_code == 201
    assigned = client.post(
        f"{API}/federations/{fid}/auditors", headers=anchor.headers, json={"organisation_id": auditor_org.json()["id"]}
    )
    assert assigned.status_code == 201, assigned.text
    key = load_signing_key(portal.tmp_path / f"{prefix}-coordinator-key", create=True)
    issued = client.post(
        f"{API}/federations/{fid}/tokens",
        headers=anchor.headers,
        json={"name": f"{prefix} coord", "coordinator_public_key_pem": public_pem(key).decode()},
    )
    assert issued.status_code == 201, issued.text
    coordinator = bearer(issued.json()["token"])
    privacy = recorded_privacy(build_report(dp_manifest("any", sites=(site.site_name,))))
    run = portal.run(
        coordinator, fid, [site.site_name], privacy=privacy, contribution=contribution({site.site_name: (1200, 0.2)})
    )
    path = write_signed_report(
        build_report(dp_manifest(run["run_ref"], sites=(site.site_name,))), portal.tmp_path / f"{prefix}-privacy", key
    )
    upload = {
        "report_b64": base64.b64encode(path.read_bytes()).decode(),
        "signature_b64": base64.b64encode(path.with_name("report.json.sig").read_bytes()).decode(),
        "public_key_pem": path.with_name(PUBLIC_NAME).read_text(),
    }
    report = client.post(f"{API}/runs/{run['id']}/privacy-report", headers=coordinator, json=upload)
    assert report.status_code == 201, report.text
    release = portal.published(anchor, coordinator, fid, run["id"], "1.0.0")
    draft = portal.candidate(coordinator, fid, run["id"], "1.1.0")
    names = [
        federation["name"],
        anchor.org_name,
        anchor.email,
        site.org_name,
        site.site_name,
        supplier_email,
        auditor_org.json()["name"],
        auditor_email,
        run["run_ref"],
        issued.json()["prefix"],
        site.extra["membership"]["key_fingerprint"],
        report.json()["sha256"],
    ]
    return Tenant(
        anchor=anchor,
        federation=federation,
        supplier_org_id=site.extra["membership"]["organisation_id"],
        supplier_email=supplier_email,
        site=site,
        auditor_org_id=auditor_org.json()["id"],
        auditor_email=auditor_email,
        coordinator=coordinator,
        coordinator_token_id=issued.json()["id"],
        run=run,
        release=release,
        draft=draft,
        names=names,
    )


def recorded_privacy(report: dict[str, Any]) -> dict[str, Any]:
    """The per-site privacy a run records, as the uploader derives it from its signed report."""
    return {
        site: {
            "epsilon": e["epsilon"],
            "budget_epsilon": e["budget_epsilon"],
            "epsilon_by_round": [r["epsilon"] for r in e["rounds"]],
        }
        for site, e in report["sites"].items()
    }
