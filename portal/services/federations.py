"""Federations: creation for a built-in task, the auditors assigned to one, and the network its sites join."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlmodel import Session, select

from portal import audit
from portal.access import Principal, federation_view, require
from portal.core.errors import BadRequest, Conflict, NotFound
from portal.models import AuditorAssignment, Federation, FederationCreate, NetworkSettings, Organisation, OrgKind
from portal.services._db import commit

__all__ = ["create_federation", "assign_auditor", "set_network", "ca_fingerprint"]


def ca_fingerprint(pem: str) -> str:
    """The SHA-256 fingerprint (hex of the DER bytes) of a network CA certificate, after checking it is one.

    Refuses (BadRequest) text that is not one PEM certificate, a certificate that is not a CA
    (basicConstraints CA:TRUE), and one that is not valid now.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    try:
        certificates = x509.load_pem_x509_certificates(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError) as exc:
        raise BadRequest(f"ca_cert_pem is not a PEM certificate ({exc})") from None
    if len(certificates) != 1:
        raise BadRequest(f"ca_cert_pem holds {len(certificates)} certificates; give the network CA certificate alone")
    certificate = certificates[0]
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise BadRequest("ca_cert_pem is not a CA certificate (no basicConstraints CA:TRUE): give the network CA's")
    now = datetime.now(UTC)
    if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
        raise BadRequest(
            f"the network CA certificate is not valid now (valid {certificate.not_valid_before_utc:%Y-%m-%d} to "
            f"{certificate.not_valid_after_utc:%Y-%m-%d})"
        )
    return certificate.fingerprint(hashes.SHA256()).hex()


def set_network(session: Session, principal: Principal, federation_id: int, data: NetworkSettings) -> Federation:
    """The anchor (an admin, or its coordinator's token) sets the network CA and SuperLink address for enrolment.

    Invitations issued afterwards carry the certificate's fingerprint; each enrolling site
    checks the certificate it receives against it. Changing the CA is recorded in the audit log.
    """
    federation, role = federation_view(session, principal, federation_id)
    require(role, ("anchor", "coordinator"), "set the federation's network")
    fingerprint = ca_fingerprint(data.ca_cert_pem)
    previous = federation.network_ca_fingerprint
    federation.network_ca_pem = data.ca_cert_pem.strip() + "\n"
    federation.network_ca_fingerprint = fingerprint
    federation.superlink_address = data.superlink_address
    session.add(federation)
    audit.record(
        session,
        actor=principal.label,
        action="federation.network_set",
        target=f"federation {federation.id}",
        federation_id=federation.id,
        detail={"ca_fingerprint": fingerprint, "previous": previous, "superlink": data.superlink_address},
    )
    commit(session, "network settings")
    session.refresh(federation)
    return federation


def create_federation(session: Session, principal: Principal, data: FederationCreate) -> Federation:
    """An anchor admin creates a federation for a built-in task; refuses a taken name, an unknown task or metric."""
    from models.tasks import builtin_tasks, higher_is_better

    require(principal.kind, ("anchor",), "create a federation")
    if session.exec(select(Federation.id).where(Federation.name == data.name)).first() is not None:
        raise Conflict(f"a federation named '{data.name}' already exists")
    spec = builtin_tasks().get(data.task_name)
    if spec is None:
        raise BadRequest(f"unknown task '{data.task_name}' (built-in tasks: {sorted(builtin_tasks())})")
    metric = data.metric or spec.primary_metric
    if metric not in spec.metrics:
        raise BadRequest(f"metric '{metric}' is not reported for task '{spec.name}' (choose from {list(spec.metrics)})")
    federation = Federation(
        name=data.name,
        task_name=spec.name,
        description=data.description,
        anchor_org_id=principal.org_id,
        metric=metric,
        threshold=data.threshold,
        higher_is_better=higher_is_better(metric),  # rmse, mae, phm08_score, rmse_last: lower
        task_spec=spec.to_dict(),
    )
    session.add(federation)
    session.flush()
    audit.record(
        session,
        actor=principal.label,
        action="federation.created",
        target=f"federation {federation.id}",
        federation_id=federation.id,
        detail={"name": federation.name, "task": spec.name, "metric": metric, "threshold": data.threshold},
    )
    commit(session, f"federation '{data.name}'")
    return federation


def assign_auditor(session: Session, principal: Principal, federation_id: int, organisation_id: int) -> None:
    """Assign an auditor organisation: one this anchor created, or one with no owner (made by the operator)."""
    federation, role = federation_view(session, principal, federation_id)
    require(role, ("anchor",), "assign auditors")
    org = session.get(Organisation, organisation_id)
    # Another anchor's auditor organisation reads as absent: that anchor creates its accounts,
    # so assigning it here would let that anchor read this federation.
    if org is None or org.owner_org_id not in (None, principal.org_id):
        raise NotFound(f"organisation {organisation_id} not found")
    if org.kind != OrgKind.auditor:
        raise BadRequest(f"organisation '{org.name}' is a {org.kind}, not an auditor organisation")
    exists = session.exec(
        select(AuditorAssignment.id).where(
            AuditorAssignment.federation_id == federation_id, AuditorAssignment.organisation_id == organisation_id
        )
    ).first()
    if exists is not None:
        raise Conflict(f"'{org.name}' is already an auditor of federation {federation_id}")
    session.add(AuditorAssignment(federation_id=federation_id, organisation_id=organisation_id))
    audit.record(
        session,
        actor=principal.label,
        action="auditor.assigned",
        target=f"organisation {org.id}",
        federation_id=federation.id,
        detail={"organisation": org.name},
    )
    commit(session, "auditor assignment")
