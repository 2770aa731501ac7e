"""Run files cannot lie: a damaged manifest, checkpoint or ledger is named; a full disk keeps the old file."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from coordinator.checkpoint import RunRecorder, load_resume_point
from portal.artifact import artifact_from_run
from portal.uploader import UploadError, run_report
from privacy.errors import PolicyError
from privacy.ledger import PrivacyLedger
from sangsaeng.errors import FileIntegrityError, ModelArtifactError
from sangsaeng.files import read_checked_json, write_checked_json

SCHEMA = "a" * 64


def _run(tmp_path: Path) -> Path:
    recorder = RunRecorder(tmp_path, {"schema_hash": SCHEMA, "config": {}})
    rng = np.random.default_rng(0)
    for server_round in (1, 2):
        recorder.save_checkpoint(server_round, [rng.normal(size=(3, 2)), rng.normal(size=2)])
        recorder.update_round(server_round, metrics={"roc_auc": 0.5 + server_round / 10})
    return tmp_path


def test_a_checked_file_reads_back_what_was_written_and_refuses_an_edit(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    data = {"site": "라인-1", "entries": [{"steps": 3, "sigma": 1.1}], "nan": float("nan")}
    write_checked_json(path, data)
    assert read_checked_json(path) == {"site": "라인-1", "entries": [{"steps": 3, "sigma": 1.1}], "nan": None}

    raw = json.loads(path.read_text(encoding="utf-8"))
    raw["entries"][0]["steps"] = 2  # fewer steps: less epsilon spent
    path.write_text(json.dumps(raw), encoding="utf-8")
    with pytest.raises(FileIntegrityError, match=r"ledger .*state.json does not match its checksum"):
        read_checked_json(path, what="ledger")

    path.write_text(path.read_text(encoding="utf-8")[:20], encoding="utf-8")  # cut short
    with pytest.raises(FileIntegrityError, match=r"state.json is corrupt or truncated"):
        read_checked_json(path)


def test_a_file_from_before_checksums_is_read_and_gains_one_on_the_next_write(tmp_path: Path) -> None:
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"rounds": []}), encoding="utf-8")
    assert read_checked_json(path) == {"rounds": []}
    write_checked_json(path, read_checked_json(path))
    assert "sha256" in json.loads(path.read_text(encoding="utf-8"))


def test_resume_names_a_damaged_manifest_or_checkpoint(tmp_path: Path) -> None:
    out = _run(tmp_path)
    point = load_resume_point(out, schema_hash=SCHEMA)
    assert point is not None and point.round == 2

    checkpoint = out / "checkpoints" / "round_002.npz"
    good = checkpoint.read_bytes()
    damaged = bytearray(good)
    damaged[len(damaged) // 2] ^= 0xFF
    checkpoint.write_bytes(bytes(damaged))
    with pytest.raises(FileIntegrityError, match=r"checkpoint .*round_002.npz does not match the checksum"):
        load_resume_point(out, schema_hash=SCHEMA)
    with pytest.raises(ModelArtifactError, match=r"round_002.npz does not match"):
        artifact_from_run(out)
    checkpoint.write_bytes(good[: len(good) // 3])  # truncated
    with pytest.raises(FileIntegrityError, match=r"round_002.npz does not match"):
        load_resume_point(out, schema_hash=SCHEMA)
    checkpoint.write_bytes(good)

    manifest = out / "manifest.json"
    raw = json.loads(manifest.read_text(encoding="utf-8"))
    raw["rounds"][0]["metrics"]["roc_auc"] = 0.99
    manifest.write_text(json.dumps(raw), encoding="utf-8")
    with pytest.raises(FileIntegrityError, match=r"run manifest .*manifest.json does not match its checksum"):
        load_resume_point(out, schema_hash=SCHEMA)
    with pytest.raises(UploadError, match=r"manifest.json does not match its checksum"):
        run_report(out)


def test_a_damaged_ledger_stops_the_site_instead_of_forgetting_its_spend(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path / "site-a.ledger.json", "site-a")
    ledger._save({"site": "site-a", "policy": None, "runs": {}, "entries": [{"noise_multiplier": 1.0}]})
    assert ledger.load()["entries"] == [{"noise_multiplier": 1.0}]
    raw = json.loads(ledger.path.read_text(encoding="utf-8"))
    raw["entries"] = []
    ledger.path.write_text(json.dumps(raw), encoding="utf-8")
    with pytest.raises(
        PolicyError, match=r"privacy ledger .*site-a.ledger.json does not match its checksum.*restore it from backup"
    ):
        ledger.load()


_FULL_DISK = textwrap.dedent(
    """
    import resource, signal, sys
    import numpy as np
    from coordinator.checkpoint import RunRecorder
    from sangsaeng.errors import FileIntegrityError

    recorder = RunRecorder(sys.argv[1], {"schema_hash": "a" * 64})
    recorder.save_checkpoint(1, [np.zeros(10)])
    # From here on no file may grow past 64 KiB: the kernel refuses the write (EFBIG), as a full disk would.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
    try:
        recorder.save_checkpoint(2, [np.zeros(100_000)])
    except FileIntegrityError as exc:
        print(exc)
        sys.exit(3)
    """
)


def test_a_full_disk_at_checkpoint_time_is_a_clear_error_and_the_last_checkpoint_stays(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _FULL_DISK, str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 3, done.stdout + done.stderr
    assert "could not write" in done.stdout and "round_002.npz" in done.stdout and "nothing was written" in done.stdout
    assert not (tmp_path / "checkpoints" / "round_002.npz").exists()
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["round_001.npz"]  # no temporary left behind
    point = load_resume_point(tmp_path, schema_hash=SCHEMA)
    assert point is not None and point.round == 1 and np.array_equal(point.weights[0], np.zeros(10))
