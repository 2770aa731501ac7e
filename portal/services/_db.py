"""The commit every flow ends with."""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from portal.core.errors import Conflict


def commit(session: Session, what: str) -> None:
    """Commit; a uniqueness clash from a concurrent request becomes a 409, not a 500."""
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise Conflict(f"{what} conflicts with existing data (already exists?)") from None
