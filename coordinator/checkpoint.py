"""Checkpoints and the run manifest: a run can be inspected and resumed from its last round.

Layout of a run directory::

    manifest.json                 config, task, schema hash, sites, metrics per round, status
    checkpoints/round_003.npz     global weights after round 3 (+ strategy state, if any)

Both are written atomically (write, fsync, rename). The manifest carries its own checksum and
each round's record the SHA-256 of its checkpoint (`sangsaeng.files`), so resuming from a
damaged or truncated file stops with an error naming it instead of training on from garbage.
A full disk at checkpoint time is an error too, and the previous round's checkpoint stays.
"""

from __future__ import annotations

import hashlib
import io
import time
import uuid
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sangsaeng.errors import FileIntegrityError
from sangsaeng.files import check_sha256, read_checked_json, write_atomic, write_checked_json

__all__ = ["RunRecorder", "ResumePoint", "load_resume_point", "load_checkpoint", "read_manifest"]

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class ResumePoint:
    """Where a resumed run starts: the last checkpointed round, its weights, strategy state and manifest."""

    round: int
    weights: list[np.ndarray]
    strategy_state: dict[str, list[np.ndarray]]
    manifest: dict[str, Any]


class RunRecorder:
    """Writes the manifest and a checkpoint after every round."""

    def __init__(self, out_dir: Path, header: dict[str, Any], previous: dict[str, Any] | None = None):
        self.out_dir = Path(out_dir)
        (self.out_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        self.manifest: dict[str, Any] = previous or {
            "run_id": uuid.uuid4().hex[:12],
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "rounds": [],
        }
        self.manifest.update(header)
        self.manifest["status"] = "running"
        self.flush()

    @property
    def rounds(self) -> list[dict[str, Any]]:
        """The manifest's per-round records, in the order they were first written."""
        return self.manifest["rounds"]

    def round_record(self, server_round: int) -> dict[str, Any]:
        """The record of `server_round`, created (empty) on first use."""
        for record in self.rounds:
            if record["round"] == server_round:
                return record
        record = {"round": server_round}
        self.rounds.append(record)
        return record

    def update_round(self, server_round: int, **fields: Any) -> dict[str, Any]:
        """Merge `fields` into the round's record, stamp it and write the manifest."""
        record = self.round_record(server_round)
        record.update(fields)
        record["updated_at"] = time.time()  # unix seconds of the round's last news (per-round timing)
        self.flush()
        return record

    def save_checkpoint(
        self,
        server_round: int,
        weights: Sequence[np.ndarray],
        strategy_state: Mapping[str, Sequence[np.ndarray]] | None = None,
    ) -> Path:
        """Write the round's weights (and strategy state) to checkpoints/round_NNN.npz atomically; record its path."""
        path = self.out_dir / "checkpoints" / f"round_{server_round:03d}.npz"
        arrays = {f"w{i:03d}": np.asarray(w) for i, w in enumerate(weights)}
        for key, values in (strategy_state or {}).items():
            arrays.update({f"s_{key}_{i:03d}": np.asarray(v) for i, v in enumerate(values)})
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)  # type: ignore[arg-type]  # mypy also matches **arrays to allow_pickle: bool
        data = buffer.getvalue()
        write_atomic(path, data)
        self.update_round(
            server_round,
            checkpoint=str(path.relative_to(self.out_dir)),
            checkpoint_sha256=hashlib.sha256(data).hexdigest(),
        )
        return path

    def set(self, **fields: Any) -> None:
        """Merge top-level `fields` into the manifest (status, results, ...) and write it."""
        self.manifest.update(fields)
        self.flush()

    def flush(self) -> None:
        """Write the manifest atomically with its checksum (strict JSON: NaN becomes null)."""
        write_checked_json(self.out_dir / MANIFEST, self.manifest)


def read_manifest(run_dir: str | Path) -> dict[str, Any]:
    """A run directory's manifest.json, its checksum checked (`FileIntegrityError` names a damaged one)."""
    return read_checked_json(Path(run_dir) / MANIFEST, what="run manifest")


def load_checkpoint(path: Path, *, sha256: str | None = None) -> tuple[list[np.ndarray], dict[str, list[np.ndarray]]]:
    """The weights and strategy state arrays of a checkpoint written by `RunRecorder.save_checkpoint`.

    With `sha256` (the digest the manifest recorded) a checkpoint that does not match it is
    refused (`FileIntegrityError`); one that cannot be read as the archive it should be is too.
    """
    if sha256 is not None:
        check_sha256(path, sha256, what="checkpoint")
    try:
        return _read_checkpoint(path)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise FileIntegrityError(f"checkpoint {path} cannot be read ({exc}): damaged or truncated") from None


def _read_checkpoint(path: Path) -> tuple[list[np.ndarray], dict[str, list[np.ndarray]]]:
    with np.load(path, allow_pickle=False) as data:
        weights = [data[k] for k in sorted(k for k in data.files if k.startswith("w"))]
        state: dict[str, list[np.ndarray]] = {}
        for key in sorted(k for k in data.files if k.startswith("s_")):
            name = key[2:].rsplit("_", 1)[0]
            state.setdefault(name, []).append(data[key])
    return weights, state


def load_resume_point(out_dir: Path, *, schema_hash: str) -> ResumePoint | None:
    """The last checkpointed round of a run directory, or None if nothing to resume.

    Refuses (ValueError) to resume a run recorded for a different data schema, and
    (`FileIntegrityError`) a manifest or checkpoint that does not match its checksum.
    """
    manifest_path = Path(out_dir) / MANIFEST
    if not manifest_path.exists():
        return None
    manifest = read_manifest(out_dir)
    if manifest.get("schema_hash") != schema_hash:
        raise ValueError(
            f"{manifest_path}: recorded for schema {str(manifest.get('schema_hash'))[:12]}, "
            f"not this task's {schema_hash[:12]}; use another --out directory"
        )
    done = [r for r in manifest.get("rounds", []) if r.get("checkpoint")]
    if not done:
        return None
    last = max(done, key=lambda r: r["round"])
    weights, state = load_checkpoint(Path(out_dir) / last["checkpoint"], sha256=last.get("checkpoint_sha256"))
    # Rounds after the checkpoint were not finished; forget their partial records.
    manifest["rounds"] = [r for r in manifest["rounds"] if r["round"] <= last["round"]]
    return ResumePoint(last["round"], weights, state, manifest)
