"""Federations: creation for a built-in task, and the auditors assigned to one."""

from __future__ import annotations

from sqlmodel import Session, select

from portal import audit
from portal.access import Principal, federation_view, require
from portal.core.errors import BadRequest, Conflict, NotFound
from portal.models import AuditorAssignment, Federation, FederationCreate, Organisation, OrgKind
from portal.services._db import commit

__all__ = ["create_federation", "assign_auditor"]


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
