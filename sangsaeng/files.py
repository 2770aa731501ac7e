"""File helpers every role uses: atomic, fsynced writes and owner-only files.

A crash (or a full disk) mid-write never leaves a half-written file behind: data go to a
temporary file in the same directory, are flushed and fsynced, then renamed over the target,
and the directory entry is fsynced too. Secrets are created with mode 0600 from the first
byte (never world-readable, even briefly), and `check_private` refuses one that is not.

Files a run depends on (the run manifest, checkpoints, privacy ledgers) also carry a SHA-256
checksum, so that a file damaged after it was written (a bad disk, a copy cut short, a hand
edit) is named and refused instead of being used:

- JSON state (`write_checked_json` / `read_checked_json`): the checksum is a top-level
  ``"sha256"`` field over the canonical JSON of everything else (sorted keys, no spaces);
- binary files (`write_atomic` returns the path; `sha256_file` gives the digest): the caller
  records the digest where it points at the file (a checkpoint's digest sits in the manifest
  beside its path) and `check_sha256` compares it when the file is read.

A write that fails (a full disk: ENOSPC, EDQUOT, EFBIG) raises `FileIntegrityError` naming the
file, and the file as it was before stays in place: the new data only ever went to a
temporary file.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from sangsaeng.errors import FileIntegrityError

__all__ = [
    "write_atomic",
    "write_json",
    "write_private",
    "check_private",
    "json_safe",
    "write_checked_json",
    "read_checked_json",
    "sha256_file",
    "check_sha256",
    "CHECKSUM_FIELD",
]

CHECKSUM_FIELD = "sha256"
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some filesystems do not open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: str | Path, data: bytes, *, mode: int = 0o644) -> Path:
    """Replace `path` with `data` atomically (write, fsync, rename); the file gets `mode`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # created 0600
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.errno in _DISK_FULL:
            kept = "the previous version is intact" if path.exists() else "nothing was written"
            raise FileIntegrityError(
                f"could not write {path}: {exc.strerror} (disk full?); {kept}. Free space and run again"
            ) from exc
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def json_safe(value: Any) -> Any:
    """`value` with numpy scalars and arrays turned into plain Python, NaN/inf into None."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: str | Path, data: Any, *, indent: int | None = 2, mode: int = 0o644) -> Path:
    """Write `data` as UTF-8 JSON atomically; NaN/inf become null (strict JSON, never `NaN`)."""
    text = json.dumps(json_safe(data), indent=indent, ensure_ascii=False, allow_nan=False)
    return write_atomic(path, text.encode("utf-8"), mode=mode)


def _digest(data: Mapping[str, Any]) -> str:
    body = {k: v for k, v in data.items() if k != CHECKSUM_FIELD}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def write_checked_json(path: str | Path, data: Mapping[str, Any], *, indent: int | None = 2, mode: int = 0o644) -> Path:
    """Write the JSON object `data` atomically with its checksum field (see the module's docstring)."""
    body = json_safe({k: v for k, v in data.items() if k != CHECKSUM_FIELD})
    return write_json(path, {**body, CHECKSUM_FIELD: _digest(body)}, indent=indent, mode=mode)


def read_checked_json(path: str | Path, *, what: str = "file") -> dict[str, Any]:
    """The JSON object in `path` written by `write_checked_json`, its checksum checked and removed.

    Raises `FileIntegrityError` naming `what` and the path when the file is truncated, is not
    a JSON object, or does not match its checksum. A file without the field (written by a
    Sangsaeng from before checksums) is read as it is; the next write adds the checksum.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FileIntegrityError(f"{what} {path} is corrupt or truncated ({exc})") from None
    if not isinstance(data, dict):
        raise FileIntegrityError(f"{what} {path} is corrupt: not a JSON object")
    if CHECKSUM_FIELD not in data:
        return data
    if data[CHECKSUM_FIELD] != _digest(data):
        raise FileIntegrityError(f"{what} {path} does not match its checksum: it was changed or damaged after writing")
    del data[CHECKSUM_FIELD]
    return data


def sha256_file(path: str | Path) -> str:
    """The SHA-256 hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_sha256(path: str | Path, expected: str, *, what: str = "file") -> Path:
    """Refuse `path` (FileIntegrityError) when it is missing or its digest is not `expected`."""
    path = Path(path)
    if not path.is_file():
        raise FileIntegrityError(f"{what} {path} is missing")
    actual = sha256_file(path)
    if actual != expected:
        raise FileIntegrityError(
            f"{what} {path} does not match the checksum recorded for it "
            f"({actual[:12]}… instead of {expected[:12]}…): damaged or replaced after writing"
        )
    return path


def write_private(path: str | Path, data: bytes) -> Path:
    """Create or replace `path` atomically with mode 0600 (its directory is created 0700)."""
    path = Path(path)
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=0o700)
    return write_atomic(path, data, mode=0o600)


def check_private(path: str | Path) -> Path:
    """Refuse a secret file that others can read or write (mode & 0o077)."""
    path = Path(path)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise FileIntegrityError(f"{path} is readable by others (mode {mode:o}); run `chmod 600 {path}`")
    return path
