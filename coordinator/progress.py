"""Progress of a run as it happens: which phase, how many sites have answered, metrics per round.

`ProgressGrid` wraps any Flower `Grid` and reports each reply as it arrives, so the same
progress works for the default workflow and for Flower's secure-aggregation workflow.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from flwr.app import Message
from flwr.serverapp.grid import Grid
from flwr.supercore.run import Run

__all__ = ["RunObserver", "LoggingObserver", "ProgressGrid"]

logger = logging.getLogger("sangsaeng.coordinator")


class RunObserver:
    """Callbacks a run calls; the default does nothing. Subclass to display progress."""

    def phase_started(self, phase: str, server_round: int, expected: int) -> None:
        """`expected` site replies are awaited for `phase` ("profile", "train", "evaluate")."""

    def reply_received(self, phase: str, ok: bool) -> None:
        """One site answered (ok=False: an error reply or a refusal)."""

    def site_problem(self, problem: str) -> None:
        """A site was left out or failed; `problem` is its own message, naming the site."""

    def round_finished(self, record: dict[str, Any]) -> None:
        """A round's manifest record is complete (metrics, sites, failures)."""


class LoggingObserver(RunObserver):
    """Progress as log lines (deployment, where nobody watches a terminal)."""

    def site_problem(self, problem: str) -> None:
        """Log a site left out of the round as a warning."""
        logger.warning("%s", problem)

    def round_finished(self, record: dict[str, Any]) -> None:
        """Log the round's aggregated metrics."""
        logger.info("round %s: %s", record.get("round"), record.get("metrics"))


_PHASES = {"train": "train", "evaluate": "evaluate", "get_properties": "profile"}


TTL_MARGIN = 5.0  # seconds a deadline instruction outlives the wait for its reply


class ProgressGrid(Grid):
    """A `Grid` that delegates everything and reports replies one by one.

    `default_timeout` bounds every `send_and_receive` that names no timeout of its own: Flower
    1.42's default fit and evaluate workflows call it without one (``ServerConfig.round_timeout``
    is not passed on), so this is where a deployment round's deadline is applied.
    """

    def __init__(
        self,
        inner: Grid,
        observer: RunObserver,
        *,
        pull_interval: float = 0.05,
        max_pull_interval: float | None = None,
        default_timeout: float | None = None,
    ):
        self._inner = inner
        self.default_timeout = default_timeout
        self._observer = observer
        self._pull_interval = pull_interval
        self._max_pull_interval = max(pull_interval, max_pull_interval or pull_interval)

    # Delegation --------------------------------------------------------------------
    def set_run(self, run: Run) -> None:
        """Delegate to the wrapped grid."""
        self._inner.set_run(run)

    @property
    def run(self) -> Run:
        """The wrapped grid's run."""
        return self._inner.run

    def create_message(self, *args: Any, **kwargs: Any) -> Message:
        """Delegate to the wrapped grid."""
        return self._inner.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        """Delegate to the wrapped grid."""
        return self._inner.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Delegate to the wrapped grid."""
        return self._inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Delegate to the wrapped grid."""
        return self._inner.pull_messages(message_ids)

    # Reporting ---------------------------------------------------------------------
    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Push `messages`, pull replies until all arrived or `timeout` passed; report each reply.

        Without `timeout`, `default_timeout` (None: wait for every reply), which also becomes the
        messages' time to live: a site that comes back after the deadline is not handed the stale
        instruction (it would train, and spend privacy budget, for a round that has ended).
        Replies still missing at the deadline are not returned: the caller sees who did not answer.
        """
        messages = list(messages)
        if timeout is None and self.default_timeout is not None:
            timeout = self.default_timeout
            for message in messages:  # an instruction the deadline gave up on is not delivered later
                # (a little longer than the wait, so that the wait, not the SuperLink's expiry, ends it)
                message.metadata.ttl = min(message.metadata.ttl, timeout + TTL_MARGIN)
        phase = _PHASES.get(messages[0].metadata.message_type.split(".")[0], "") if messages else ""
        pending = set(self.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        interval = self._pull_interval
        while pending and (deadline is None or time.monotonic() < deadline):
            pulled = time.monotonic()
            arrived = 0
            for reply in self.pull_messages(pending):
                pending.discard(reply.metadata.reply_to_message_id)
                replies.append(reply)
                arrived += 1
                if phase:
                    self._observer.reply_received(phase, ok=not reply.has_error())
            if pending:
                # Back off while nothing arrives (a deployment's SuperLink answers every pull from its
                # database, and a site's SuperNode only asks for work every 3 s), quick again after a reply.
                interval = self._pull_interval if arrived else min(2 * interval, self._max_pull_interval)
                # A pull checks every pending id (10,000 in a large profile phase): wait at least four
                # times as long as it took, so that polling takes at most a fifth of a core.
                time.sleep(max(interval, 4 * (time.monotonic() - pulled)))
        return replies
