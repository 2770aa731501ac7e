"""Login rate limiting against password guessing, shared by every worker process.

Failed logins are counted per e-mail and per client address in a sliding window; over the
limit, further attempts are refused with 429 and ``Retry-After`` before any password is
checked. A success clears the e-mail's count. The failures are rows of the ``login_attempt``
table, so ``portal serve --workers N`` (or several hosts on one database) share one count; an
in-process counter would let N workers allow N times the attempts.
"""

from __future__ import annotations

import math
from datetime import timedelta

from sqlalchemy import Engine, delete, func
from sqlmodel import Session, col, select

from portal.core.errors import TooManyRequests
from portal.core.security import token_digest
from portal.models import LoginAttempt, as_utc, utcnow

__all__ = ["LoginLimiter"]


class LoginLimiter:
    """Sliding-window failure counter keyed by e-mail and by client address, kept in the database.

    It uses its own short transactions on `engine`, so a failure is recorded even though the
    request that saw it fails (and rolls its own session back).
    """

    def __init__(self, engine: Engine, *, max_failures: int, ip_max_failures: int, window_seconds: float):
        self.engine = engine
        self.max_failures = max_failures
        self.ip_max_failures = ip_max_failures
        self.window = timedelta(seconds=window_seconds)

    @staticmethod
    def _keys(email: str, ip: str) -> tuple[str, str]:
        return token_digest(f"e:{email.strip().lower()}"), token_digest(f"i:{ip}")

    def check(self, email: str, ip: str) -> None:
        """Raise `TooManyRequests` when either key is over its limit."""
        now = utcnow()
        email_key, ip_key = self._keys(email, ip)
        with Session(self.engine) as session:
            for key, limit in ((email_key, self.max_failures), (ip_key, self.ip_max_failures)):
                count, oldest = session.exec(
                    select(func.count(), func.min(LoginAttempt.at)).where(
                        LoginAttempt.key == key, LoginAttempt.at > now - self.window
                    )
                ).one()
                if count >= limit:
                    wait = max(1, math.ceil((as_utc(oldest) + self.window - now).total_seconds()))
                    raise TooManyRequests(
                        f"too many failed logins; try again in {wait} s", headers={"Retry-After": str(wait)}
                    )

    def failed(self, email: str, ip: str) -> None:
        """Count one failure for the e-mail and for the address (and forget those past the window)."""
        now = utcnow()
        with Session(self.engine) as session:
            session.add_all(LoginAttempt(key=key, at=now) for key in self._keys(email, ip))
            session.exec(delete(LoginAttempt).where(col(LoginAttempt.at) <= now - self.window))
            session.commit()

    def succeeded(self, email: str) -> None:
        """Clear the e-mail's failures (the address keeps its count)."""
        email_key, _ = self._keys(email, "")
        with Session(self.engine) as session:
            session.exec(delete(LoginAttempt).where(col(LoginAttempt.key) == email_key))
            session.commit()
