"""Login rate limiting against password guessing.

Failed logins are counted per e-mail and per client address in a sliding window; over the
limit, further attempts are refused with 429 and ``Retry-After`` before any password is
checked. A success clears the e-mail's count. State is per process (run one portal process
per database, or put a shared limiter in front for several).
"""

from __future__ import annotations

import math
import threading
import time
from collections import defaultdict, deque

from portal.core.errors import TooManyRequests

__all__ = ["LoginLimiter"]


class LoginLimiter:
    """Sliding-window failure counter keyed by e-mail and by client address."""

    def __init__(self, *, max_failures: int, ip_max_failures: int, window_seconds: float):
        self.max_failures = max_failures
        self.ip_max_failures = ip_max_failures
        self.window = window_seconds
        self._failures: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        stamps = self._failures[key]
        while stamps and stamps[0] <= now - self.window:
            stamps.popleft()
        return stamps

    def check(self, email: str, ip: str) -> None:
        """Raise `TooManyRequests` when either key is over its limit."""
        now = time.monotonic()
        with self._lock:
            for key, limit in ((f"e:{email.lower()}", self.max_failures), (f"i:{ip}", self.ip_max_failures)):
                stamps = self._recent(key, now)
                if len(stamps) >= limit:
                    wait = max(1, math.ceil(stamps[0] + self.window - now))
                    raise TooManyRequests(
                        f"too many failed logins; try again in {wait} s", headers={"Retry-After": str(wait)}
                    )

    def failed(self, email: str, ip: str) -> None:
        now = time.monotonic()
        with self._lock:
            self._failures[f"e:{email.lower()}"].append(now)
            self._failures[f"i:{ip}"].append(now)

    def succeeded(self, email: str) -> None:
        with self._lock:
            self._failures.pop(f"e:{email.lower()}", None)
