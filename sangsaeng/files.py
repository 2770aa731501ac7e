"""File helpers every role uses: atomic, fsynced writes and owner-only files.

A crash (or a full disk) mid-write never leaves a half-written file behind: data go to a
temporary file in the same directory, are flushed and fsynced, then renamed over the target,
and the directory entry is fsynced too. Secrets are created with mode 0600 from the first
byte (never world-readable, even briefly), and `check_private` refuses one that is not.
"""

from __future__ import annotations

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

__all__ = ["write_atomic", "write_json", "write_private", "check_private", "json_safe"]


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
