"""An append-only, hash-chained audit log of privacy-relevant events (JSON lines).

Each entry carries its sequence number, the hash of the entry before it and its own hash
(SHA-256 over its canonical JSON without the hash). Editing an entry breaks its hash;
removing or reordering entries breaks the sequence and the chain; cutting entries off the
end is caught by comparing the head hash with one recorded elsewhere (the signed privacy
report records the coordinator log's head).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import time
from pathlib import Path
from typing import Any

from privacy.errors import AuditLogBroken

__all__ = ["AuditLog", "GENESIS"]

GENESIS = "0" * 64


def _digest(entry: dict[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class AuditLog:
    """Append events to a JSON-lines file; `verify` re-checks the whole chain."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def entries(self) -> list[dict[str, Any]]:
        """Every entry, in order; a line that is not JSON raises `AuditLogBroken`."""
        if not self.path.exists():
            return []
        out = []
        for number, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                raise AuditLogBroken(f"{self.path}: line {number} is not valid JSON") from None
        return out

    def append(self, event: str, **data: Any) -> dict[str, Any]:
        """Append one chained entry for `event` (locked against other writers); returns it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+", encoding="utf-8") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # one writer at a time, even across processes
            handle.seek(0)
            lines = [ln for ln in handle.read().splitlines() if ln.strip()]
            last = json.loads(lines[-1]) if lines else None
            entry = {
                "seq": last["seq"] + 1 if last else 0,
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "event": event,
                "data": data,
                "prev": last["hash"] if last else GENESIS,
            }
            entry["hash"] = _digest(entry)
            handle.seek(0, 2)
            handle.write(json.dumps(entry, sort_keys=True, ensure_ascii=False) + "\n")
            handle.flush()
        return entry

    def head(self) -> str:
        """The hash of the last entry (the genesis hash for an empty log)."""
        entries = self.entries()
        return entries[-1]["hash"] if entries else GENESIS

    def verify(self, *, expected_head: str | None = None) -> int:
        """Check every link; return the number of entries or raise `AuditLogBroken` naming the first problem."""
        prev = GENESIS
        entries = self.entries()
        for index, entry in enumerate(entries):
            where = f"{self.path}: entry {index + 1}"
            if entry.get("seq") != index:
                raise AuditLogBroken(f"{where} has sequence number {entry.get('seq')}, expected {index}: "
                                     "an entry was removed or the entries were reordered")  # fmt: skip
            if entry.get("prev") != prev:
                raise AuditLogBroken(f"{where} does not link to the entry before it: an entry was removed or reordered")
            if _digest(entry) != entry.get("hash"):
                raise AuditLogBroken(f"{where} ({entry.get('event')}) was edited: its hash does not match its content")
            prev = entry["hash"]
        if expected_head is not None and prev != expected_head:
            raise AuditLogBroken(f"{self.path}: last entry hash {prev[:12]} is not the recorded head "
                                 f"{expected_head[:12]}: entries were cut off the end")  # fmt: skip
        return len(entries)
