"""A live terminal display of a run: round, sites done, loss and the primary metric."""

from __future__ import annotations

import math
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from coordinator.progress import RunObserver

__all__ = ["PROBLEM_LINES", "RichObserver"]


def _fmt(value: Any) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


PROBLEM_LINES = 10
"""Site problems a run prints one by one; a 10,000-site run counts the rest per round."""


def _failed(record: dict[str, Any]) -> str:
    failures = record.get("failures") or []
    return f" ({len(failures)} failed)" if failures else ""


class RichObserver(RunObserver):
    """Progress bars for rounds and for site replies within a phase.

    Use as a context manager around the run.
    """

    def __init__(self, num_rounds: int, primary_metric: str, console: Console | None = None):
        self.console = console or Console()
        self.primary = primary_metric
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}", justify="left"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=self.console,
        )
        self.problems = 0  # site problems this run; past PROBLEM_LINES they are counted, not printed
        self.failed = 0  # error replies in the current phase
        self.rounds = self.progress.add_task("rounds", total=num_rounds, status="")
        self.sites = self.progress.add_task("sites", total=1, status="waiting for sites")

    def __enter__(self) -> RichObserver:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def phase_started(self, phase: str, server_round: int, expected: int) -> None:
        """Reset the sites bar for a new phase of `expected` replies."""
        label = "profiling site data" if phase == "profile" else f"round {server_round}: {phase}"
        self.failed = 0
        self.progress.reset(self.sites, total=max(expected, 1), description=label, status="sites done")

    def reply_received(self, phase: str, ok: bool) -> None:
        """Advance the sites bar by one reply; failed replies are counted on the bar."""
        if not ok:
            self.failed += 1
            self.progress.update(self.sites, status=f"sites done, {self.failed} failed")
        self.progress.advance(self.sites)

    def site_problem(self, problem: str) -> None:
        """Print a site left out of the round, with the reason (the first `PROBLEM_LINES`, then a count)."""
        self.problems += 1
        if self.problems <= PROBLEM_LINES:
            self.progress.console.print(f"[yellow]left out:[/] {problem}")
        elif self.problems == PROBLEM_LINES + 1:
            self.progress.console.print("[yellow]more sites left out:[/] counted per round below (manifest.json)")

    def round_finished(self, record: dict[str, Any]) -> None:
        """Advance the rounds bar and print the round's loss and primary metric."""
        metrics = record.get("metrics", {})
        status = f"train loss {_fmt(record.get('train_loss'))}  {self.primary} {_fmt(metrics.get(self.primary))}"
        self.progress.update(self.rounds, completed=record["round"], status=status)
        self.progress.console.print(
            f"round {record['round']:>3}  sites {len(record.get('sites_trained', []))}"
            f"{_failed(record)}  "
            f"train loss {_fmt(record.get('train_loss'))}  {self.primary} {_fmt(metrics.get(self.primary))}"
        )
