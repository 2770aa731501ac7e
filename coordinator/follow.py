"""Follow a deployment run from its manifest: one line per round done, as the simulation shows them.

In deployment the ServerApp runs in a process the SuperLink starts, so `coordinator run` sees
the run only through its run directory: the manifest is rewritten (atomically, checksummed)
as each round goes on. A round is done once a later round has begun or the run has ended.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from sangsaeng.errors import FileIntegrityError
from sangsaeng.files import read_checked_json

__all__ = ["ManifestFollower", "round_line"]


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(float(value)):
        return "n/a"
    return f"{float(value):.4f}"


def round_line(record: dict[str, Any], *, num_rounds: int, primary_metric: str) -> str:
    """``round   3/10  sites 3  train loss 0.4120  roc_auc 0.8310  ε so far 1.20``.

    ε appears only under DP: the most any site has spent so far.
    """
    metrics = record.get("metrics") or record.get("federated_eval") or {}
    line = (
        f"round {record['round']:>3}/{num_rounds}  sites {len(record.get('sites_trained') or [])}  "
        f"train loss {_fmt(record.get('train_loss'))}  {primary_metric} {_fmt(metrics.get(primary_metric))}"
    )
    reported = [dp.get("epsilon") for dp in (record.get("dp") or {}).values() if isinstance(dp, dict)]
    spent = [float(e) for e in reported if isinstance(e, int | float) and math.isfinite(float(e))]
    if spent:
        line += f"  ε so far {max(spent):.2f}"
    return line


class ManifestFollower:
    """New lines of a run directory's progress, each time `poll` is called.

    A manifest left by an earlier run (unchanged since `ManifestFollower` was made) is ignored;
    a resumed run's earlier rounds are shown once, as they stand.
    """

    def __init__(self, run_dir: Path, *, num_rounds: int, primary_metric: str) -> None:
        self.path = Path(run_dir) / "manifest.json"
        self.num_rounds = num_rounds
        self.primary_metric = primary_metric
        self._before = self._stamp()
        self._shown: set[int] = set()

    def _stamp(self) -> int | None:
        try:
            return self.path.stat().st_mtime_ns
        except OSError:
            return None

    def poll(self, *, ended: bool = False) -> list[str]:
        """Lines for the rounds done since the last call; with `ended`, every round recorded counts as done."""
        if self._stamp() in (None, self._before):
            return []
        try:
            manifest = read_checked_json(self.path, what="run manifest")
        except (OSError, FileIntegrityError):
            return []  # replaced as we read it, or damaged: the next poll (or the final results) tells
        records = sorted((r for r in manifest.get("rounds", []) if "round" in r), key=lambda r: int(r["round"]))
        finished = ended or manifest.get("status", "running") != "running"
        lines = []
        for i, record in enumerate(records):
            number = int(record["round"])
            done = finished or i + 1 < len(records)
            if done and number not in self._shown:
                self._shown.add(number)
                lines.append(round_line(record, num_rounds=self.num_rounds, primary_metric=self.primary_metric))
        return lines
