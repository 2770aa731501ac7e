"""The commit every flow ends with, and the translation of a uniqueness clash into a 409."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from portal.core.errors import Conflict


@contextmanager
def conflict_on_clash(session: Session, reason: str) -> Iterator[None]:
    """Roll back and raise `Conflict(reason)` when the block's flush or commit breaks a unique constraint.

    The flows check for duplicates first and say so by name; this covers the concurrent
    request that inserts the same row between that check and this request's insert.
    """
    try:
        yield
    except IntegrityError:
        session.rollback()
        raise Conflict(reason) from None


def commit(session: Session, what: str) -> None:
    """Commit; a uniqueness clash from a concurrent request becomes a 409, not a 500."""
    with conflict_on_clash(session, f"{what} conflicts with existing data (already exists?)"):
        session.commit()
