"""What a federation trusts for privacy: its pinned coordinator signing key and its DP policy.

The anchor pins the Ed25519 public key its coordinator signs privacy reports with, when it
issues a coordinator token or with ``PUT /federations/{id}/coordinator-key``. A privacy
report verifies against that key only, never against a key sent with the report. Replacing a
pinned key is a rotation: an anchor action recorded in the audit trail with the old and new
fingerprint.

The DP policy (``dp_max_epsilon``) makes a federation a DP federation: a release needs the
run's signed privacy report, verified against the pinned key, with every site of the run in
it, within its own budget and within the policy (see `portal.services.releases.release_gate`).
"""

from __future__ import annotations

from sqlmodel import Session

from portal import audit
from portal.access import Principal, federation_view, require
from portal.core.errors import Conflict, InvalidKey, NotFound
from portal.models import CoordinatorKeyPublic, Federation, as_utc, utcnow
from portal.services._db import commit
from sangsaeng.errors import KeyFormatError
from sangsaeng.signing import Ed25519PublicKey, fingerprint, load_public_pem, public_pem

__all__ = [
    "KEY_ROUTE",
    "coordinator_key_of",
    "pin_coordinator_key",
    "pinned_key",
    "register_coordinator_key",
    "set_privacy_policy",
]

KEY_ROUTE = "PUT /api/v1/federations/{federation_id}/coordinator-key"


def _parse(pem: str) -> Ed25519PublicKey:
    try:
        return load_public_pem(pem, source="the coordinator public key")
    except KeyFormatError as exc:
        raise InvalidKey(str(exc)) from None


def pinned_key(federation: Federation) -> Ed25519PublicKey | None:
    """The federation's pinned coordinator key, or None before the anchor pins one."""
    if federation.coordinator_key_pem is None:
        return None
    return load_public_pem(federation.coordinator_key_pem, source=f"federation {federation.id}'s pinned key")


def pin_coordinator_key(
    session: Session, principal: Principal, federation: Federation, pem: str, *, rotate: bool
) -> bool:
    """Pin `pem` as the federation's coordinator key (not committed); True when the pinned key changed.

    With no key pinned the key is pinned. The key already pinned is left as it is. A different
    key replaces it only with `rotate` (audited with both fingerprints); otherwise `Conflict`
    names both fingerprints and the rotation route.
    """
    key = _parse(pem)
    new = fingerprint(key)
    old = federation.coordinator_key_fingerprint
    if old == new:
        return False
    if old is not None and not rotate:
        raise Conflict(
            f"federation {federation.id} already pins coordinator key {old}; the key given is {new}. "
            f"Rotate it deliberately with {KEY_ROUTE.format(federation_id=federation.id)} (anchor)"
        )
    federation.coordinator_key_pem = public_pem(key).decode("ascii")
    federation.coordinator_key_fingerprint = new
    federation.coordinator_key_pinned_at = utcnow()
    session.add(federation)
    audit.record(
        session,
        actor=principal.label,
        action="federation.coordinator_key_rotated" if old else "federation.coordinator_key_pinned",
        target=f"federation {federation.id}",
        federation_id=federation.id,
        detail={"old_fingerprint": old, "new_fingerprint": new} if old else {"fingerprint": new},
    )
    return True


def _key_public(federation: Federation) -> CoordinatorKeyPublic:
    assert federation.coordinator_key_pem and federation.coordinator_key_fingerprint
    assert federation.coordinator_key_pinned_at is not None
    return CoordinatorKeyPublic(
        federation_id=federation.id,  # type: ignore[arg-type]  # SQLModel ids are Optional until flushed
        public_key_pem=federation.coordinator_key_pem,
        fingerprint=federation.coordinator_key_fingerprint,
        pinned_at=as_utc(federation.coordinator_key_pinned_at),
    )


def register_coordinator_key(
    session: Session, principal: Principal, federation_id: int, pem: str
) -> CoordinatorKeyPublic:
    """The anchor pins its coordinator's report-signing key, or rotates the pinned one to it."""
    federation, role = federation_view(session, principal, federation_id)
    require(role, ("anchor",), "pin or rotate the coordinator signing key")
    if pin_coordinator_key(session, principal, federation, pem, rotate=True):
        commit(session, f"coordinator key of federation {federation_id}")
    return _key_public(federation)


def coordinator_key_of(session: Session, principal: Principal, federation_id: int) -> CoordinatorKeyPublic:
    """The pinned key, for anyone with a part in the federation (it is a public key)."""
    federation, _ = federation_view(session, principal, federation_id)
    if federation.coordinator_key_pem is None:
        raise NotFound(f"federation {federation_id} has no pinned coordinator signing key yet")
    return _key_public(federation)


def set_privacy_policy(
    session: Session, principal: Principal, federation_id: int, dp_max_epsilon: float | None
) -> Federation:
    """The anchor sets (or, with None, lifts) the federation's DP policy; audited with old and new value."""
    federation, role = federation_view(session, principal, federation_id)
    require(role, ("anchor",), "set the federation's DP policy")
    old = federation.dp_max_epsilon
    if old == dp_max_epsilon:
        return federation
    federation.dp_max_epsilon = dp_max_epsilon
    session.add(federation)
    audit.record(
        session,
        actor=principal.label,
        action="federation.dp_policy_set",
        target=f"federation {federation.id}",
        federation_id=federation.id,
        detail={"old_dp_max_epsilon": old, "new_dp_max_epsilon": dp_max_epsilon},
    )
    commit(session, f"DP policy of federation {federation_id}")
    return federation
