"""The coordinator's side of the portal: report a finished run, its signed privacy report and its model.

Reads a coordinator run directory (``manifest.json``, ``checkpoints/round_NNN.npz``, the
contribution scores of ``results.json`` when it has them and, for DP runs,
``privacy/report.json`` with ``report.json.sig`` and ``coordinator.pub.pem``)
and talks to the portal with a coordinator token, through `sangsaeng.portal_api.PortalAPI`
(a portal that refuses or cannot be reached raises its `PortalRequestError`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from pathlib import Path
from typing import Any

import httpx

from portal.artifact import artifact_from_run
from portal.protocol import API_PREFIX
from privacy.errors import ReportInvalid
from privacy.summary import privacy_summary as summarize
from sangsaeng.errors import SangsaengError
from sangsaeng.portal_api import PortalAPI

__all__ = ["UploadError", "run_report", "contribution", "privacy_summary", "signed_report", "upload_run"]

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


def run_report(run_dir: Path, privacy_path: Path | None = None) -> dict[str, Any]:
    """The portal's RunReport for a coordinator run directory."""
    run_dir = Path(run_dir)
    try:
        manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UploadError(f"{run_dir}: no manifest.json (is this a coordinator run directory?)") from None
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
        "privacy": privacy_summary(privacy_path or run_dir / "privacy" / "report.json"),
    }
    scores = contribution(run_dir)
    if scores is not None:
        report["contribution"] = scores
    return report


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
    ``run["privacy_report"]`` holds the portal's summary of the stored signed report.
    """
    api = http if isinstance(http, PortalAPI) else PortalAPI(str(http.base_url), http=http)
    report = run_report(run_dir, privacy_path)
    signed = signed_report(privacy_path or Path(run_dir) / "privacy" / "report.json")
    data, _ = artifact_from_run(Path(run_dir))
    run = api.post(f"{API_PREFIX}/federations/{federation_id}/runs", json=report, what="reporting the run").json()
    if signed is not None:
        run["privacy_report"] = api.post(
            f"{API_PREFIX}/runs/{run['id']}/privacy-report", json=signed, what="uploading the signed privacy report"
        ).json()
    body = {"run_id": run["id"], "version": version, "artifact_sha256": hashlib.sha256(data).hexdigest(),
            "artifact_b64": base64.b64encode(data).decode()}  # fmt: skip
    release = api.post(
        f"{API_PREFIX}/federations/{federation_id}/releases", json=body, what="uploading the model"
    ).json()
    return run, release
