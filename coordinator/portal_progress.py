"""A deployment run's progress in the portal: the ServerApp reports the run after every round.

`coordinator run --portal URL --federation N --token-file FILE` puts the portal's address,
the federation and the token file's *path* in the Flower run config (`PortalTarget`). The
run config travels to every site, so the token itself never goes in it: the ServerApp runs
on the anchor's machine (a process the SuperLink starts) and reads the token from that file,
which stays on the anchor's machine. A progress report that fails is logged and the run goes
on: the final upload (`portal.uploader.upload_run`) records the run whatever happened before.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coordinator.progress import RunObserver

__all__ = ["PORTAL_KEYS", "PortalTarget", "PortalProgress"]

logger = logging.getLogger("sangsaeng.coordinator")

PORTAL_KEYS = ("portal-url", "portal-federation", "portal-token-file")  # run config keys (not FederationConfig's)
PROGRESS_TIMEOUT = 10.0  # seconds a progress report may take: the next round does not wait longer for the portal


@dataclass(frozen=True)
class PortalTarget:
    """Where a run reports its progress: the portal, the federation, the file holding the coordinator token."""

    url: str
    federation: int
    token_file: Path

    def to_run_config(self) -> dict[str, Any]:
        """The run config entries (the token file's path, never the token)."""
        return dict(zip(PORTAL_KEYS, (self.url.rstrip("/"), str(self.federation), str(self.token_file)), strict=True))

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any]) -> PortalTarget | None:
        """The target a run config names, or None when it names no portal (a run that reports only at its end)."""
        if not all(run_config.get(key) not in (None, "", "none") for key in PORTAL_KEYS):
            return None
        url, federation, token_file = (run_config[key] for key in PORTAL_KEYS)
        return cls(url=str(url), federation=int(federation), token_file=Path(str(token_file)))


class PortalProgress(RunObserver):
    """An observer that passes everything to `inner` and, after every round, reports the run to the portal.

    `http` is an ``httpx.Client`` to send through (tests); by default each report opens its own
    connection with a short timeout.
    """

    def __init__(self, inner: RunObserver, target: PortalTarget, run_dir: Path, *, http: Any = None) -> None:
        self.inner = inner
        self.target = target
        self.run_dir = Path(run_dir)
        self.http = http
        self.reported = 0  # progress reports the portal took (for the log and the tests)

    def phase_started(self, phase: str, server_round: int, expected: int) -> None:
        """Pass on to the inner observer."""
        self.inner.phase_started(phase, server_round, expected)

    def reply_received(self, phase: str, ok: bool) -> None:
        """Pass on to the inner observer."""
        self.inner.reply_received(phase, ok)

    def site_problem(self, problem: str) -> None:
        """Pass on to the inner observer."""
        self.inner.site_problem(problem)

    def round_finished(self, record: dict[str, Any]) -> None:
        """Pass on, then report the run so far; a failure is logged, never raised (the run goes on)."""
        self.inner.round_finished(record)
        self.post(record.get("round"))

    def post(self, server_round: Any = None) -> bool:
        """Report the run directory's progress now; True if the portal took it."""
        from portal.uploader import report_progress
        from sangsaeng.portal_api import PortalAPI

        try:
            token = self.target.token_file.read_text(encoding="utf-8").strip()
            with PortalAPI(self.target.url, token, timeout=PROGRESS_TIMEOUT, http=self.http) as api:
                report_progress(api, self.target.federation, self.run_dir)
        except Exception as exc:  # noqa: BLE001 - whatever went wrong (portal away, refusal, token file gone), the run goes on
            logger.warning("portal: progress of round %s not recorded (%s); the run goes on", server_round, exc)
            return False
        self.reported += 1
        return True
