"""The coordinator's side of the portal: report a finished run, its signed privacy report and its model.

Reads a coordinator run directory (``manifest.json``, ``checkpoints/round_NNN.npz``, the
contribution scores of ``results.json`` when it has them and, for DP runs,
``privacy/report.json`` with ``report.json.sig`` and ``coordinator.pub.pem``)
and talks to the portal with a coordinator token, through `sangsaeng.portal_api.PortalAPI`
(a portal that refuses or cannot be reached raises its `PortalRequestError`).

`upload_run` can be repeated: a step the portal already holds (the run, its privacy report,
the release of this run's model under that version) is taken as done, so an upload cut off
midway (the answer lost, the portal restarted) is finished by running it again, and the
portal holds the run exactly once. `coordinator run --portal ...` uploads when the run ends;
while the portal cannot be reached the upload waits in ``RUN_DIR/portal-upload.json``
(`queue_upload`), is retried (`upload_with_retry`), and `sangsaeng portal upload-run RUN_DIR`
finishes it later.

While a deployment run goes on, its ServerApp reports its progress after every round
(`report_progress`, from `coordinator.portal_progress`): the same run_ref as status "running",
with the rounds so far and the epsilon each site has spent so far (`privacy_so_far`, from
the manifest: the signed report comes when the run ends). The portal updates that one row
while it runs, and the final `upload_run` completes it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from portal.artifact import artifact_from_run
from portal.protocol import API_PREFIX
from privacy.errors import ReportInvalid
from privacy.summary import privacy_summary as summarize
from sangsaeng.errors import FileIntegrityError, PortalRequestError, SangsaengError
from sangsaeng.files import read_checked_json, write_json
from sangsaeng.portal_api import PortalAPI

__all__ = [
    "UploadError", "run_report", "contribution", "privacy_summary", "signed_report", "upload_run",
    "QUEUE_FILE", "queue_upload", "queued_upload", "upload_with_retry", "transient",
    "privacy_so_far", "progress_report", "report_progress",
]  # fmt: skip

QUEUE_FILE = "portal-upload.json"

PUBLIC_KEY_NAME = "coordinator.pub.pem"
RESULTS_NAME = "results.json"  # coordinator.report.RESULTS, beside the manifest
METRIC_NAME_LENGTH = 40  # the portal's limit on a metric's name (portal.models.Metrics)


class UploadError(SangsaengError):
    """A run directory that cannot be reported (the portal's refusals are `PortalRequestError`)."""


def _numbers(values: dict[str, Any] | None, *, where: str) -> dict[str, float | None]:
    """The numeric metrics, names cut to the portal's 40 characters; two names cut alike are refused.

    A multiclass task reports ``recall_<class>`` per class: classes whose names share a long
    prefix would otherwise report one class's recall under the other's name.
    """
    out: dict[str, float | None] = {}
    full: dict[str, str] = {}
    for key, value in (values or {}).items():
        if isinstance(value, bool) or not isinstance(value, int | float | type(None)):
            continue
        short = str(key)[:METRIC_NAME_LENGTH]
        if short in full:
            raise UploadError(
                f"{where}: metrics '{full[short]}' and '{key}' both read '{short}' in the portal, which keeps "
                f"{METRIC_NAME_LENGTH} characters of a metric's name; give the task's classes shorter names"
            )
        full[short] = str(key)
        out[short] = None if value is None or not math.isfinite(float(value)) else float(value)
    return out


def privacy_summary(path: Path) -> dict[str, dict[str, Any]] | None:
    """Per-site ``{"epsilon", "budget_epsilon", "epsilon_by_round": [...]}`` from a privacy report, if any.

    The portal's run report takes epsilon over rounds as a list; it is read off the one summary
    of a report (`privacy.summary.privacy_summary`, also in results.json), which accepts
    ``{"sites": {site: {...}}}`` or ``{site: {...}}``, site entries that need ``epsilon`` and
    ``budget_epsilon`` and may list ``epsilon_by_round`` or ``rounds: [{"epsilon": ...}]``.
    """
    if not path.exists():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UploadError(f"{path}: not valid JSON ({exc})") from None
    try:
        summary = summarize(raw, source=str(path))
    except ReportInvalid as exc:
        raise UploadError(str(exc)) from None
    return {
        site: {
            "epsilon": float(entry["epsilon"]),
            "budget_epsilon": float(entry["budget_epsilon"]),
            "epsilon_by_round": [float(e) for e in entry["epsilon_by_round"].values()],
        }
        for site, entry in summary["sites"].items()
    }


def run_report(run_dir: Path, privacy_path: Path | None = None, *, signed_privacy: bool = True) -> dict[str, Any]:
    """The portal's RunReport for a coordinator run directory (``signed_privacy=False``: privacy left out)."""
    run_dir = Path(run_dir)
    if not (run_dir / "manifest.json").exists():
        raise UploadError(f"{run_dir}: no manifest.json (is this a coordinator run directory?)")
    try:
        manifest = read_checked_json(run_dir / "manifest.json", what="run manifest")
    except FileIntegrityError as exc:
        raise UploadError(str(exc)) from None
    rounds = []
    for record in sorted(manifest.get("rounds", []), key=lambda r: r["round"]):
        metrics = record.get("metrics") or record.get("federated_eval") or {}
        where = f"{run_dir / 'manifest.json'}: round {record['round']}"
        per_site = {
            str(site): _numbers(values, where=f"{where}, site '{site}'")
            for site, values in (record.get("per_site") or {}).items()
        }
        rounds.append({"round": int(record["round"]), "metrics": _numbers(metrics, where=where), "per_site": per_site})
    status = manifest.get("status", "completed")
    report = {
        "run_ref": str(manifest.get("run_id", run_dir.name)),
        "status": status if status in ("running", "completed", "failed") else "failed",
        "sites": sorted(manifest.get("sites", {})),
        "rounds": rounds,
        "privacy": privacy_summary(privacy_path or run_dir / "privacy" / "report.json") if signed_privacy else None,
    }
    scores = contribution(run_dir)
    if scores is not None:
        report["contribution"] = scores
    return report


def privacy_so_far(manifest: dict[str, Any]) -> dict[str, dict[str, Any]] | None:
    """Per-site epsilon spent so far, from the DP records of the manifest's rounds; None for a run without DP.

    Each round's ``dp`` record holds what a site's accountant reported with its update: its
    epsilon spent up to then and its budget. ``epsilon_by_round`` lists it for the rounds the
    site trained in, in round order.
    """
    sites: dict[str, dict[str, Any]] = {}
    for record in sorted(manifest.get("rounds", []), key=lambda r: r["round"]):
        for site, dp in (record.get("dp") or {}).items():
            try:
                epsilon, budget = float(dp["epsilon"]), float(dp["budget_epsilon"])
            except (KeyError, TypeError, ValueError):
                continue  # a record without the accounting the portal needs: left out of the progress
            if not (math.isfinite(epsilon) and math.isfinite(budget) and budget > 0):
                continue
            entry = sites.setdefault(str(site), {"epsilon_by_round": []})
            entry |= {"epsilon": epsilon, "budget_epsilon": budget}
            entry["epsilon_by_round"].append(epsilon)
    return sites or None


def progress_report(run_dir: Path) -> dict[str, Any]:
    """The portal's RunReport of a run still going on: status "running", the rounds so far, epsilon so far.

    A privacy report or results.json in the directory (an earlier run's) is not read: contribution
    scores and the signed report come when the run ends (`upload_run`).
    """
    run_dir = Path(run_dir)
    report = run_report(run_dir, signed_privacy=False)
    report.pop("contribution", None)
    report["status"] = "running"
    report["privacy"] = privacy_so_far(read_checked_json(run_dir / "manifest.json", what="run manifest"))
    return report


def report_progress(http: PortalAPI | httpx.Client, federation_id: int, run_dir: Path) -> dict[str, Any]:
    """Report the run's progress (`progress_report`) to the portal; returns the portal's run.

    The portal updates the run's one row while it is running and refuses (409) once the run
    ended there, so a late progress report never reopens a finished run.
    """
    api = http if isinstance(http, PortalAPI) else PortalAPI(str(http.base_url), http=http)
    report = progress_report(run_dir)
    return dict(
        api.post(
            f"{API_PREFIX}/federations/{federation_id}/runs", json=report, what="reporting the run's progress"
        ).json()
    )


def contribution(run_dir: Path) -> dict[str, Any] | None:
    """The ``contribution`` block of the run's results.json (the ledger's scores), or None.

    A run directory without results.json, or whose results.json has no such block (runs from
    before contribution scores), reports no scores.
    """
    path = Path(run_dir) / RESULTS_NAME
    if not path.exists():
        return None
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UploadError(f"{path}: not valid JSON ({exc})") from None
    block = results.get("contribution") if isinstance(results, dict) else None
    if block is not None and not isinstance(block, dict):
        raise UploadError(f"{path}: 'contribution' must be an object, not {type(block).__name__}")
    return block


def signed_report(report_path: Path) -> dict[str, str] | None:
    """The upload body for a signed privacy report (exact bytes, base64), or None without a report.

    The signature (``report.json.sig``) and the coordinator's public key (``coordinator.pub.pem``)
    must lie beside the report, as the coordinator writes them.
    """
    report_path = Path(report_path)
    if not report_path.exists():
        return None
    signature = report_path.with_name(report_path.name + ".sig")
    public_key = report_path.with_name(PUBLIC_KEY_NAME)
    missing = [str(p) for p in (signature, public_key) if not p.exists()]
    if missing:
        raise UploadError(f"{report_path} is not signed: {' and '.join(missing)} missing beside it")
    try:
        pem = public_key.read_text(encoding="ascii")
    except UnicodeDecodeError:
        raise UploadError(f"{public_key}: not a PEM file") from None
    return {
        "report_b64": base64.b64encode(report_path.read_bytes()).decode(),
        "signature_b64": base64.b64encode(signature.read_bytes()).decode(),
        "public_key_pem": pem,
    }


def _conflict(exc: PortalRequestError, text: str) -> bool:
    return exc.status == 409 and text in exc.detail


def upload_run(
    http: PortalAPI | httpx.Client,
    federation_id: int,
    run_dir: Path,
    *,
    version: str,
    privacy_path: Path | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Report the run, store its signed privacy report (if any), then upload its last checkpoint as a draft.

    `http` is the portal (a `PortalAPI` with the coordinator token, or an ``httpx.Client``
    that already sends it). Returns (run, release); for a run with a privacy report,
    ``run["privacy_report"]`` holds the portal's summary of the stored signed report
    (``{"already_stored": True}`` when an earlier attempt stored it). Repeating it is safe:
    steps the portal already holds are taken as done (see the module's docstring); a version
    that another run's model already holds stays refused.
    """
    api = http if isinstance(http, PortalAPI) else PortalAPI(str(http.base_url), http=http)
    report = run_report(run_dir, privacy_path)
    signed = signed_report(privacy_path or Path(run_dir) / "privacy" / "report.json")
    data, _ = artifact_from_run(Path(run_dir))
    runs = f"{API_PREFIX}/federations/{federation_id}/runs"
    try:
        run = api.post(runs, json=report, what="reporting the run").json()
    except PortalRequestError as exc:
        if not _conflict(exc, "has already been reported"):
            raise
        run = next(r for r in api.get(runs, what="finding the run reported before").json()
                   if r["run_ref"] == report["run_ref"])  # fmt: skip
    if signed is not None:
        try:
            run["privacy_report"] = api.post(
                f"{API_PREFIX}/runs/{run['id']}/privacy-report", json=signed, what="uploading the signed privacy report"
            ).json()
        except PortalRequestError as exc:
            if not _conflict(exc, "already has a signed privacy report"):
                raise
            # Stored by the earlier attempt (a report is never replaced; the coordinator cannot read it back).
            run["privacy_report"] = {"already_stored": True}
    sha256 = hashlib.sha256(data).hexdigest()
    body = {"run_id": run["id"], "version": version, "artifact_sha256": sha256,
            "artifact_b64": base64.b64encode(data).decode()}  # fmt: skip
    releases = f"{API_PREFIX}/federations/{federation_id}/releases"
    try:
        release = api.post(releases, json=body, what="uploading the model").json()
    except PortalRequestError as exc:
        if not _conflict(exc, f"version {version} already exists"):
            raise
        same = [r for r in api.get(releases, what="finding the release uploaded before").json()
                if r["version"] == version and r["run_id"] == run["id"] and r["artifact_sha256"] == sha256]  # fmt: skip
        if not same:
            raise
        release = same[0]
    return run, release


def queue_upload(run_dir: Path, *, portal: str, federation: int, version: str) -> Path:
    """Record in RUN_DIR/portal-upload.json that the run is to be uploaded (pending until `upload_with_retry` ends it).

    The token is not written there: whoever retries gives it again.
    """
    path = Path(run_dir) / QUEUE_FILE
    entry = queued_upload(run_dir) or {"attempts": 0, "last_error": None}
    entry |= {"portal": portal.rstrip("/"), "federation": federation, "version": version, "status": "pending"}
    write_json(path, entry)
    return path


def queued_upload(run_dir: Path) -> dict[str, Any] | None:
    """The run directory's upload record (pending, done or refused), or None if it was never queued."""
    path = Path(run_dir) / QUEUE_FILE
    if not path.exists():
        return None
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, TypeError, ValueError) as exc:
        raise UploadError(f"{path}: unreadable upload record ({exc}); delete it, then `portal upload-run`") from None


def transient(exc: PortalRequestError) -> bool:
    """A failure worth retrying: the portal could not be reached, was overloaded or failed (no answer, 429, 5xx)."""
    return exc.status is None or exc.status == 429 or exc.status >= 500


def upload_with_retry(
    run_dir: Path,
    token: str,
    *,
    retry_for: float,
    on_event: Callable[[str], None] = lambda line: None,
    http: httpx.Client | None = None,
    sleep: Callable[[float], None] = time.sleep,
    first_wait: float = 2.0,
    max_wait: float = 60.0,
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """Upload the run queued in `run_dir` (`queue_upload`), retrying while the portal cannot be reached.

    Waits first_wait, then twice as long each time (at most max_wait), for up to `retry_for`
    seconds. Returns (run, release) once the portal holds them; None if the portal was still
    unreachable when time ran out (the record stays pending: nothing is lost, and
    `portal upload-run` finishes it). A refusal (a 4xx other than 429) is not retried: it is
    recorded and raised.
    """
    entry = queued_upload(run_dir)
    if entry is None:
        raise UploadError(f"{run_dir}: no upload queued ({QUEUE_FILE} missing)")
    path = Path(run_dir) / QUEUE_FILE
    deadline = time.monotonic() + retry_for
    wait = first_wait
    while True:
        entry["attempts"] = int(entry.get("attempts", 0)) + 1
        try:
            with PortalAPI(entry["portal"], token, timeout=120.0, http=http) as api:
                run, release = upload_run(api, int(entry["federation"]), Path(run_dir), version=str(entry["version"]))
        except PortalRequestError as exc:
            entry["last_error"] = str(exc)
            if not transient(exc):
                write_json(path, entry | {"status": "refused"})
                raise
            write_json(path, entry)
            left = deadline - time.monotonic()
            if left <= 0:
                on_event(f"portal still unreachable after {entry['attempts']} attempt(s); the upload stays queued in "
                         f"{path}: run `sangsaeng portal upload-run {run_dir}` when the portal is back")  # fmt: skip
                return None
            pause = min(wait, max_wait, left)
            on_event(f"portal unreachable ({exc.detail or exc}); upload queued, retrying in {pause:.0f} s")
            sleep(pause)
            wait *= 2
            continue
        write_json(
            path, entry | {"status": "done", "last_error": None, "run_id": run["id"], "release_id": release["id"]}
        )
        on_event(f"portal: run {run['run_ref']} recorded (id {run['id']}), draft release {release['version']} "
                 f"(id {release['id']})")  # fmt: skip
        return run, release
