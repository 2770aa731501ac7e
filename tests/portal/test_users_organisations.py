"""Users and organisations: a duplicate e-mail or organisation name is a 409 with a clear reason, never a 500.

The race cases insert the clashing row from a second database connection right after the
request has checked for it, the way a concurrent request would; the unique constraint then
refuses the request's own insert (SQLite and PostgreSQL).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from portal import crud
from portal.models import AuditEvent, OrgKind
from tests.portal.factories import API, password_hash


@contextmanager
def concurrent_insert_after(engine: Engine, marker: str, insert: Callable[[Session], Any]) -> Iterator[list[str]]:
    """Once a statement containing `marker` has run, commit `insert` on another connection (once)."""
    fired: list[str] = []

    def after_execute(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        if fired or marker not in statement:
            return
        fired.append(statement)
        with Session(engine) as other:
            insert(other)
            other.commit()

    event.listen(engine, "after_cursor_execute", after_execute)
    try:
        yield fired
    finally:
        event.remove(engine, "after_cursor_execute", after_execute)


def test_duplicate_user_email_is_409_with_the_email(portal, client):
    anchor = portal.anchor()
    body = {"email": "dup@example.com", "password": "long enough pw", "organisation_id": anchor.org_id}
    assert client.post(f"{API}/users", headers=anchor.headers, json=body).status_code == 201
    again = client.post(f"{API}/users", headers=anchor.headers, json={**body, "email": " DUP@example.com "})
    assert again.status_code == 409
    assert again.json()["detail"] == "a user with e-mail 'dup@example.com' already exists"


def test_duplicate_organisation_name_is_409_with_the_name(portal, client):
    anchor = portal.anchor()
    body = {"name": "Hanbit Castings", "kind": "supplier"}
    assert client.post(f"{API}/organisations", headers=anchor.headers, json=body).status_code == 201
    again = client.post(f"{API}/organisations", headers=anchor.headers, json={**body, "kind": "auditor"})
    assert again.status_code == 409
    assert again.json()["detail"] == "an organisation named 'Hanbit Castings' already exists"


def test_user_created_concurrently_with_the_same_email_is_409_not_500(portal, client, app):
    anchor = portal.anchor()

    def insert(other: Session) -> None:
        crud.create_user(
            other, email="race@example.com", password="", organisation_id=anchor.org_id, hashed=password_hash("x" * 8)
        )

    body = {"email": "race@example.com", "password": "long enough pw", "organisation_id": anchor.org_id}
    with concurrent_insert_after(app.state.engine, "user_account.email =", insert) as fired:
        response = client.post(f"{API}/users", headers=anchor.headers, json=body)
    assert fired, "the request never looked the e-mail up"
    assert response.status_code == 409, response.text
    assert response.json()["detail"] == "a user with e-mail 'race@example.com' already exists"
    with portal.session() as session:  # the other connection's row stands; the request's audit event was rolled back
        assert crud.get_user_by_email(session, "race@example.com") is not None
        created = session.exec(select(AuditEvent).where(AuditEvent.action == "user.created")).all()
        assert [e.detail["email"] for e in created] == []


def test_organisation_created_concurrently_with_the_same_name_is_409_not_500(portal, client, app):
    anchor = portal.anchor()

    def insert(other: Session) -> None:
        # The same anchor's concurrent request: the organisation is its own, so it is listed.
        crud.create_org(other, "Daehan Forging", OrgKind.supplier).owner_org_id = anchor.org_id

    body = {"name": "Daehan Forging", "kind": "supplier"}
    with concurrent_insert_after(app.state.engine, "organisation.name_key =", insert) as fired:
        response = client.post(f"{API}/organisations", headers=anchor.headers, json=body)
    assert fired, "the request never looked the name up"
    assert response.status_code == 409, response.text
    assert response.json()["detail"] == "an organisation named 'Daehan Forging' already exists"
    listed = client.get(f"{API}/organisations", headers=anchor.headers)
    assert [o["name"] for o in listed.json()].count("Daehan Forging") == 1
