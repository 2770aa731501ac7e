"""Signed privacy reports an auditor can check without trusting Sangsaeng.

Files in ``OUT/privacy/``::

    report.json           the report (keys below)
    report.json.sig       raw 64-byte Ed25519 signature over the exact bytes of report.json
    coordinator.pub.pem   the coordinator's public key (SubjectPublicKeyInfo PEM)
    report.html           the same for people, with epsilon over rounds per site
    audit.jsonl           the coordinator's hash-chained audit log

Check with OpenSSL alone::

    openssl pkeyutl -verify -pubin -inkey coordinator.pub.pem -rawin -in report.json -sigfile report.json.sig

`verify_report` also recomputes every epsilon from the recorded (noise_multiplier,
sample_rate, steps) with the named accountant — a site's DP data profile (version 2 reports,
``mechanisms``) first, then its DP-SGD rounds — checks that each profile's noise std is its
noise multiplier times its sensitivity, and checks each site against its budget.

``record_unit`` states the record every per-site epsilon is for: a row, or for a sequence task
one window (with its length, stride and the most windows one row is in); `verify_report`
recomputes it from the task and checks each DP data profile was released in the same unit.

``membership_inference`` holds each site's empirical check of the final model
(`privacy.membership`): the ROC-AUC of a membership-inference attack on its training rows
against its held-out rows, with the sample sizes and method — figures, never rows. The site
computed it on rows nobody else holds, so a verifier cannot recompute it: the signature
vouches that the coordinator recorded what the site sent, and `verify_report` checks that
the figures hang together (an AUC in [0, 1], equal samples, the best method's AUC).

A site that trained its local-only model under DP (`client.local_only`, issue 16) has two more
mechanisms after its last round: ``local_only_training`` (a DP-SGD stretch) and
``local_only_evaluation``.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import time
from pathlib import Path
from typing import Any

from privacy.accounting import epsilon_of
from privacy.errors import MembershipCheckError, ReportInvalid
from privacy.keys import PUBLIC_NAME, load_public_key, public_pem
from privacy.membership import MembershipResult
from sangsaeng.signing import Ed25519PrivateKey, verify

__all__ = [
    "build_report",
    "write_signed_report",
    "verify_report",
    "check_epsilons",
    "check_membership",
    "check_record_unit",
    "record_unit",
    "REL_TOLERANCE",
]

REL_TOLERANCE = 1e-6
MECHANISM = (
    "record-level DP-SGD at each site (Opacus: per-sample clipping to max_grad_norm, Gaussian noise, "
    "Poisson sampling), accounted per site across rounds by one persisted accountant; noise and sampling "
    "drawn from PyTorch's generator seeded from the site's OS entropy on every round, never from the run's "
    "seed (Opacus secure_mode off: not a cryptographically secure RNG)"
)
NOT_COVERED = (
    "Not covered by these epsilons: the aggregate statistics each site shares once for feature "
    "normalisation (counts, means, variances, category counts, the label's counts or mean and variance) and "
    "the exact histograms of held-out scores sites report in each evaluation."
)
NOT_COVERED_WITHOUT_DP = (
    "No per-site DP in this run, so no record-level epsilon covers anything a site sent: its model update in "
    "every round{updates}, the aggregate statistics it shares once for feature normalisation (counts, means, "
    "variances, category counts, the label's counts or mean and variance) and the exact histograms of held-out "
    "scores it reports in each evaluation."
)
WINDOW_UNIT_NOTE = (
    "Sequence task: every per-site epsilon here (DP-SGD, the DP data profile, each evaluation) is for adding "
    "or removing one window of {window} rows (stride {stride}), not one row: a row is in up to "
    "{windows_per_row} windows, so one row's values are covered only by group privacy over twice that many "
    'windows, and a whole engine or machine by no per-site bound (docs/privacy.md, "Sequence tasks")'
)
# Version 2 reports list every mechanism a site ran besides its DP-SGD rounds (its DP data
# profile); reports without a version are version 1 and are verified as before.
REPORT_VERSION = 2
NOT_COVERED_EVALUATION = (
    "Not covered by these epsilons: the metrics sites report on their held-out rows each round (evaluation)."
)
MEMBERSHIP_NOTE = (
    "Membership inference: after the last round each site attacked the final model with equal-size samples "
    "of its training rows (members) and its held-out rows (non-members), scoring each row by its loss "
    "(and by its loss calibrated to the held-out rows of its label); the ROC-AUC of the stronger attack is "
    "reported (0.5: a loss threshold tells members from non-members no better than chance). Computed on-site "
    "on rows no one else holds: signed as the site reported it, not recomputable by a verifier."
)
PROFILE_MECHANISM = (
    "DP data profile (privacy.profile): one Gaussian mechanism, without subsampling, over the site's row "
    "count, fixed-bin histograms of each numeric feature over its declared range, its declared category "
    "levels' counts, its label counts and (image tasks) per-image pixel histograms; each block changes by "
    "at most 1 per record, so the L2 sensitivity is sqrt(blocks) and each released value gets noise of std "
    "noise_multiplier * sensitivity; noise from NumPy's PCG64 generator seeded from OS entropy (not a "
    "cryptographically secure generator)"
)

EVALUATION_MECHANISM = (
    "DP evaluation (privacy.evaluation): in each evaluated round, one Gaussian mechanism without subsampling "
    "over the site's held-out histogram (binary: score counts by label in fixed bins, equal in log-odds; multiclass: "
    "confusion counts and one-vs-rest score counts; regression: row count and clipped sums of residuals), each "
    "group of blocks changed by at most 1 per held-out row (clipped sums divided by their bound), so the L2 "
    "sensitivity is sqrt(groups); the coordinator reads the metrics from the sum of the sites' noisy histograms"
)


LOCAL_ONLY_MECHANISM = (
    "each named site's local-only model (client.local_only): DP-SGD at the run's noise multiplier and sample "
    "rate for the run's planned steps (local_only_training), then its held-out histogram released like an "
    "evaluation (local_only_evaluation)"
)


def build_report(manifest: dict[str, Any], *, audit_head: str | None = None) -> dict[str, Any]:
    """The report of one run, from the per-round DP records in its manifest."""
    sites: dict[str, Any] = {}
    for record in sorted(manifest.get("rounds", []), key=lambda r: r["round"]):
        for site, dp in sorted(record.get("dp", {}).items()):
            entry = sites.setdefault(
                site,
                {
                    "accountant": dp["accountant"],
                    "delta": dp["delta"],
                    "epsilon": 0.0,
                    "budget_epsilon": dp["budget_epsilon"],
                    "max_grad_norm": dp["max_grad_norm"],
                    "records": dp["records"],
                    "prior_history": dp.get("prior_history", []),
                    "rounds": [],
                },
            )
            entry["rounds"].append(
                {
                    "round": record["round"],
                    "noise_multiplier": dp["noise_multiplier"],
                    "sample_rate": dp["sample_rate"],
                    "steps": dp["steps"],
                    "epsilon": dp["epsilon"],
                }
            )
            entry["epsilon"] = dp["epsilon"]
    config = manifest.get("config", {})
    profiles = manifest.get("profile_dp", {})
    for site, mech in sorted(profiles.items()):
        entry = sites.setdefault(
            site,
            {
                "accountant": mech["accountant"], "delta": mech["delta"], "epsilon": mech["epsilon"],
                "budget_epsilon": mech["budget_epsilon"], "max_grad_norm": config.get("dp_max_grad_norm") or 0.0,
                "records": mech["records"], "prior_history": mech.get("prior_history", []), "rounds": [],
            },
        )  # fmt: skip
        entry["mechanisms"] = [{k: mech[k] for k in _MECHANISM_KEYS if k in mech}]
    for entry in sites.values():
        entry.setdefault("mechanisms", [])
    evaluated: set[str] = set()
    for record in sorted(manifest.get("rounds", []), key=lambda r: r["round"]):
        for site, mech in sorted(record.get("dp_evaluation", {}).items()):
            entry = sites.setdefault(
                site,
                {
                    "accountant": mech["accountant"], "delta": mech["delta"], "epsilon": mech["epsilon"],
                    "budget_epsilon": mech["budget_epsilon"],
                    "max_grad_norm": config.get("dp_max_grad_norm") or 0.0, "records": mech["records"],
                    "prior_history": mech.get("prior_history", []), "rounds": [], "mechanisms": [],
                },
            )  # fmt: skip
            entry["mechanisms"].append({k: mech[k] for k in _MECHANISM_KEYS + _EVALUATION_KEYS if k in mech})
            evaluated.add(site)
    local_only = (manifest.get("local_only") or {}).get("dp", {})
    for site, dp in sorted(local_only.items()):  # after the last round: the site's local-only model (issue 16)
        entry = sites.setdefault(
            site,
            {
                "accountant": dp["accountant"], "delta": dp["delta"], "epsilon": 0.0,
                "budget_epsilon": dp["budget_epsilon"], "max_grad_norm": dp["max_grad_norm"],
                "records": dp["records"], "prior_history": dp.get("prior_history", []), "rounds": [],
                "mechanisms": [],
            },
        )  # fmt: skip
        entry["mechanisms"].append({k: dp["training"][k] for k in _MECHANISM_KEYS + ("round",) if k in dp["training"]})
        entry["mechanisms"].append(
            {k: dp["evaluation"][k] for k in _MECHANISM_KEYS + _EVALUATION_KEYS if k in dp["evaluation"]}
        )
    recovered = _recover_lost_releases(manifest, sites)
    for entry in sites.values():  # the epsilon after the site's last release, whatever it was
        entry["epsilon"] = _ordered_steps(entry)[-1][1]["epsilon"] if _ordered_steps(entry) else entry["epsilon"]
    refusals = [f for r in manifest.get("rounds", []) for f in r.get("failures", []) if "budget exhausted" in f]
    refusals += [p for p in manifest.get("excluded_sites", {}).values() if "budget exhausted" in p]
    # A site the coordinator did not ask for its profile (a sampled profile, coordinator.server_app.profile_sample)
    # released none: nothing exact to name. Its manifest entry says so ("rows_from": "replies").
    unprofiled = {name for name, site in manifest.get("sites", {}).items() if site.get("rows_from") == "replies"}
    exact = sorted(
        site for site in sites
        if site not in unprofiled and not any(m["mechanism"] == "profile" for m in sites[site]["mechanisms"])
    )  # fmt: skip
    exact_eval = sorted(set(_evaluating_sites(manifest)) - evaluated)
    if sites and (profiles or evaluated):
        uncovered = []
        if exact_eval:
            uncovered.append(f"the exact held-out evaluations of {', '.join(exact_eval)}")
        if exact:
            uncovered.append(f"the exact normalisation statistics of {', '.join(exact)}")
        not_covered = f"Not covered by these epsilons: {'; and '.join(uncovered)}." if uncovered else ""
    else:
        not_covered = (
            NOT_COVERED
            if sites
            else NOT_COVERED_WITHOUT_DP.format(
                updates=" (supplier-level DP covers whole sites' updates: central_dp)" if _has_central(manifest) else ""
            )
        )
    unit = record_unit(manifest.get("task", {}))
    mechanism = MECHANISM if sites else "none at record level"
    if profiles:
        mechanism = f"{mechanism}; before training, {PROFILE_MECHANISM}"
    if evaluated:
        mechanism = f"{mechanism}; after training, {EVALUATION_MECHANISM}"
    if local_only:
        mechanism = f"{mechanism}; after the last round, {LOCAL_ONLY_MECHANISM}"
    return {
        "version": REPORT_VERSION,
        "run_id": manifest["run_id"],
        "task": manifest.get("task", {}),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "mechanism": mechanism,
        "requested_epsilon": config.get("dp_epsilon"),
        "sites": sites,
        "central_dp": _central(manifest),
        "refusals": refusals,
        "replies_lost": _replies_lost(manifest, recovered),
        "not_covered": not_covered,
        "record_unit": unit,
        "audit_log_head": audit_head,
        **_membership(manifest),
    }


_EVALUATION_KEYS = ("round", "clip", "evaluations")


def record_unit(task: dict[str, Any]) -> dict[str, Any]:
    """The record a report's per-site epsilons are for, from its task: a row, or a sequence task's window.

    The same statement as `privacy.profile.record_unit` gives the task's spec, plus, for a
    window, the note saying what it does not cover.
    """
    sequence = task.get("sequence")
    if not sequence:
        return {"record": "row"}
    window, stride = int(sequence["window"]), int(sequence.get("stride", 1))
    unit = {"record": "window", "window": window, "stride": stride, "windows_per_row": math.ceil(window / stride)}
    return {**unit, "note": WINDOW_UNIT_NOTE.format(**unit)}


def check_record_unit(report: dict[str, Any]) -> None:
    """The report's ``record_unit`` must be its task's, and every DP data profile released in it.

    Raises `ReportInvalid` naming the site or the field: a sequence task's report that claims
    per-row epsilons, or a profile counted in rows while DP-SGD counted windows, would
    overstate what one epsilon covers. Reports without ``record_unit`` (before it) are
    row-unit reports and pass unless their task is a sequence task.
    """
    task = report.get("task")
    expected = record_unit(task if isinstance(task, dict) else {})
    stated = report.get("record_unit", {"record": "row"})
    if stated != expected:
        raise ReportInvalid(
            f"record_unit {json.dumps(stated, sort_keys=True)} is not the task's: the epsilons of "
            f"{'a sequence' if expected['record'] == 'window' else 'this'} task are per {expected['record']} "
            f"({json.dumps(expected, sort_keys=True)})"
        )
    claim = {k: v for k, v in expected.items() if k != "note"}
    for site, entry in (report.get("sites") or {}).items():
        for mech in entry.get("mechanisms", []):
            if mech.get("mechanism") == "profile" and "unit" in mech and mech["unit"] != claim:
                raise ReportInvalid(
                    f"site '{site}' profile: released per {json.dumps(mech['unit'], sort_keys=True)}, but the run's "
                    f"epsilons are per {json.dumps(claim, sort_keys=True)}: one epsilon cannot mix two units"
                )


REPLIES_LOST_NOTE = (
    "A site whose reply did not reach the coordinator (round deadline, node lost) may have trained "
    "or evaluated all the same and charged that release to its own ledger. Each later reply of the site "
    "carries the run's releases as its ledger recorded them, so such a release is listed (reply_lost) "
    "once any later reply arrived ('recovered'); for a site with lost releases not recovered the epsilon "
    "above is a lower bound and the site's own ledger is the authority"
)


def _replies_lost(manifest: dict[str, Any], recovered: dict[str, dict[str, list[int]]]) -> dict[str, Any]:
    """Per site, the rounds whose training or evaluation reply was lost, those of them listed from a later reply
    (``recovered``), and the note on what that means.

    The coordinator accounts the releases it heard of, from the replies themselves or from the run's
    releases each later reply carries; a lost reply never lowers a site's own ledger (`privacy.ledger`),
    which charged the round when the site trained.
    """
    lost: dict[str, dict[str, Any]] = {}
    for record in sorted(manifest.get("rounds", []), key=lambda r: r["round"]):
        for key, phase in (("sites_lost", "training"), ("eval_sites_lost", "evaluation")):
            for site in record.get(key, []):
                lost.setdefault(site, {"training": [], "evaluation": []})[phase].append(int(record["round"]))
    for site, phases in lost.items():
        if site in recovered:
            phases["recovered"] = recovered[site]
    return {"sites": lost, "note": REPLIES_LOST_NOTE} if lost else {"sites": {}}


def _recover_lost_releases(manifest: dict[str, Any], sites: dict[str, Any]) -> dict[str, dict[str, list[int]]]:
    """Add to each site's entry the releases it listed in a later reply but whose own reply never arrived.

    Every DP reply carries the run's releases so far as the site's ledger recorded them
    (``run_releases``: training rounds and evaluation releases); one the coordinator did not hear
    of directly (same round and cumulative epsilon) joins the site's ``rounds`` or ``mechanisms``
    marked ``reply_lost``, so that the report's epsilon is the site's own and `privacy verify`
    recomputes it from the listed releases. Returns, per site, the rounds added, by phase.
    """
    listed: dict[str, list[dict[str, Any]]] = {}
    for record in sorted(manifest.get("rounds", []), key=lambda r: r["round"]):
        for key in ("dp", "dp_evaluation"):
            for site, dp in (record.get(key) or {}).items():
                if isinstance(dp, dict) and dp.get("run_releases"):
                    listed[site] = dp["run_releases"]  # the latest reply's list holds every earlier one's
    recovered: dict[str, dict[str, list[int]]] = {}
    for site, releases in sorted(listed.items()):
        entry = sites[site]
        for release in releases:
            evaluation = release.get("mechanism") == "evaluation"
            phase, into, keys = (("evaluation", entry["mechanisms"], _MECHANISM_KEYS + _EVALUATION_KEYS) if evaluation
                                 else ("training", entry["rounds"], _ROUND_KEYS))  # fmt: skip
            heard = (h for h in into if (h.get("mechanism") == "evaluation") == evaluation)
            if any(int(h["round"]) == int(release["round"]) and _close(h["epsilon"], release["epsilon"])
                   for h in heard):  # fmt: skip
                continue
            into.append({**{k: release[k] for k in keys if k in release}, "reply_lost": True})
            recovered.setdefault(site, {"training": [], "evaluation": []})[phase].append(int(release["round"]))
        entry["rounds"].sort(key=lambda r: (int(r["round"]), float(r["epsilon"])))
    return recovered


_ROUND_KEYS = ("round", "noise_multiplier", "sample_rate", "steps", "epsilon")


def _evaluating_sites(manifest: dict[str, Any]) -> list[str]:
    """Every site that answered an evaluation in some round of the run."""
    return sorted({site for r in manifest.get("rounds", []) for site in r.get("per_site", {})})


def _ordered_steps(entry: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """A site's releases in the order it made them: its profile, then each round's training and evaluation."""
    steps: list[tuple[int, int, str, dict[str, Any]]] = []
    for mech in entry.get("mechanisms", []):
        if mech["mechanism"] == "evaluation":
            steps.append((int(mech["round"]), 2, f"evaluation of round {mech['round']}", mech))
        elif mech["mechanism"] in _LOCAL_ONLY_ORDER:  # after the last round's training and evaluation
            steps.append((int(mech["round"]), _LOCAL_ONLY_ORDER[mech["mechanism"]], str(mech["mechanism"]), mech))
        else:
            steps.append((0, 0, str(mech["mechanism"]), mech))
    steps += [(int(rnd["round"]), 1, f"round {rnd['round']}", rnd) for rnd in entry["rounds"]]
    return [(label, step) for _, _, label, step in sorted(steps, key=lambda s: (s[0], s[1]))]


def _membership(manifest: dict[str, Any]) -> dict[str, Any]:
    """The report's membership-inference keys: each site's figures and the method's note (none if not run)."""
    figures = manifest.get("membership_inference") or {}
    if not figures:
        return {}
    return {"membership_inference": dict(sorted(figures.items())), "membership_inference_note": MEMBERSHIP_NOTE}


_LOCAL_ONLY_ORDER = {"local_only_training": 3, "local_only_evaluation": 4}

_MECHANISM_KEYS = ("mechanism", "noise_multiplier", "sample_rate", "steps", "sensitivity", "noise_std", "covers",
                   "bins", "share_of_target", "unit", "epsilon")  # fmt: skip


def _has_central(manifest: dict[str, Any]) -> bool:
    """Whether any round of the run was aggregated under supplier-level DP."""
    return any(r.get("central_dp") for r in manifest.get("rounds", []))


def _central(manifest: dict[str, Any]) -> dict[str, Any] | None:
    rounds = [r for r in sorted(manifest.get("rounds", []), key=lambda r: r["round"]) if r.get("central_dp")]
    if not rounds:
        return None
    first = rounds[0]["central_dp"]
    adaptive = first.get("adaptive")
    if adaptive:
        mechanism = (
            "supplier-level Gaussian mechanism with adaptive clipping (Andrew et al. 2021, on Flower's "
            "DifferentialPrivacyServerSideAdaptiveClipping): each site's model update clipped to the round's "
            f"clipping_norm, which follows the {adaptive['target_quantile']:g} quantile of the update norms from a "
            f"noised count (std {adaptive['count_stddev']:g}); unweighted mean, noise std = "
            f"{adaptive['update_noise_multiplier']:.4g} * clipping_norm / sites in the round. Update and count noise "
            "together are a Gaussian mechanism of noise_multiplier, which the accountant is given"
        )
    else:
        mechanism = (
            "supplier-level Gaussian mechanism: each site's model update clipped to clipping_norm "
            "(Flower DifferentialPrivacyServerSideFixedClipping), unweighted mean, noise std = "
            "noise_multiplier * clipping_norm / sites in the round"
        )
    return {
        "mechanism": mechanism,
        "accountant": "rdp",
        "delta": first["delta"],
        "noise_multiplier": first["noise_multiplier"],
        "clipping_norm": first["clipping_norm"],
        "adaptive_clipping": adaptive,
        "suppliers": first["suppliers"],
        "rounds": [
            {
                "round": r["round"],
                "sample_rate": r["central_dp"]["sample_rate"],
                "steps": 1,
                "noise_multiplier": r["central_dp"]["noise_multiplier"],
                "clipping_norm": r["central_dp"]["clipping_norm"],
                "epsilon": r["central_dp"]["epsilon"],
            }
            for r in rounds
        ],  # fmt: skip
        "epsilon": rounds[-1]["central_dp"]["epsilon"],
        "note": (
            f"Protects whole suppliers, of whom there are {first['suppliers']}: with this few, the epsilon is "
            "weak and stated as computed. Accounting assumes Poisson sampling of suppliers; Flower samples a "
            "fixed number per round."
        ),
    }


def write_signed_report(report: dict[str, Any], out_dir: Path, key: Ed25519PrivateKey) -> Path:
    """Write report.json, its raw signature, the public key and the HTML view."""
    out_dir.mkdir(parents=True, exist_ok=True)
    body = (json.dumps(report, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n").encode()
    path = out_dir / "report.json"
    path.write_bytes(body)
    (out_dir / "report.json.sig").write_bytes(key.sign(body))
    (out_dir / PUBLIC_NAME).write_bytes(public_pem(key.public_key()))
    (out_dir / "report.html").write_text(_html(report), encoding="utf-8")
    return path


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=REL_TOLERANCE, abs_tol=1e-9)


def _check_mechanism(label: str, mech: dict[str, Any]) -> None:
    """A profile or evaluation mechanism's parameters must agree with each other (sensitivity, noise std, step)."""
    kind = mech["mechanism"]
    if kind == "local_only_training":  # a DP-SGD stretch: accounted like a round, nothing else to check
        if not (0 < mech["sample_rate"] <= 1 and mech["steps"] >= 1):
            raise ReportInvalid(f"{label} {kind}: sample rate {mech['sample_rate']} and steps {mech['steps']}")
        return
    if kind not in ("profile", "evaluation", "local_only_evaluation"):
        raise ReportInvalid(f"{label}: unknown mechanism {kind!r}")
    what = f"{label} {kind}" + (f" of round {mech['round']}" if kind == "evaluation" else "")
    if mech["sample_rate"] != 1.0 or mech["steps"] != 1:
        raise ReportInvalid(f"{what}: a {kind} release is one step without subsampling, not {mech['steps']} "
                            f"at sample rate {mech['sample_rate']}")  # fmt: skip
    if not _close(mech["sensitivity"], math.sqrt(len(mech["covers"]))):
        raise ReportInvalid(f"{what}: sensitivity {mech['sensitivity']:g} is not sqrt of its "
                            f"{len(mech['covers'])} blocks")  # fmt: skip
    if not _close(mech["noise_std"], mech["noise_multiplier"] * mech["sensitivity"]):
        raise ReportInvalid(f"{what}: noise std {mech['noise_std']:g} is not noise multiplier "
                            f"{mech['noise_multiplier']:g} x sensitivity {mech['sensitivity']:g}")  # fmt: skip


def _recompute(label: str, entry: dict[str, Any], *, prior: list[Any]) -> None:
    """Feed the accountant the site's releases in order; compare with each recorded epsilon.

    The order: the profile (before training), then each round's training and that round's
    evaluation.
    """
    history = [tuple(h) for h in prior]
    mechanisms = entry.get("mechanisms", [])
    for mech in mechanisms:
        _check_mechanism(label, mech)
    for what, step in _ordered_steps(entry):
        history.append((step["noise_multiplier"], step["sample_rate"], step["steps"]))
        expected = epsilon_of(history, delta=entry["delta"], accountant=entry["accountant"])
        if not _close(expected, step["epsilon"]):
            raise ReportInvalid(
                f"{label} {what}: recorded epsilon {step['epsilon']:.6f} but the "
                f"{entry['accountant']} accountant gives {expected:.6f}"
            )


def verify_report(
    report_path: str | Path, public_key: str | Path, signature: str | Path | None = None
) -> dict[str, Any]:
    """Check signature, recompute every epsilon, check budgets. Raises `ReportInvalid` naming the problem."""
    report_path = Path(report_path)
    sig_path = Path(signature) if signature else report_path.with_name(report_path.name + ".sig")
    try:
        body, sig = report_path.read_bytes(), sig_path.read_bytes()
    except FileNotFoundError as exc:
        raise ReportInvalid(f"{exc.filename} not found") from None
    if not verify(load_public_key(public_key), sig, body):
        raise ReportInvalid(f"bad signature: {sig_path} does not sign {report_path} under {public_key}")
    try:
        report = json.loads(body)
    except json.JSONDecodeError as exc:
        raise ReportInvalid(f"{report_path} is not JSON: {exc}") from None

    check_epsilons(report)
    check_record_unit(report)
    check_membership(report)
    for site, entry in report.get("sites", {}).items():
        if not _within(entry):
            raise ReportInvalid(
                f"site '{site}' is over budget: epsilon {entry['epsilon']:.4f} > budget {entry['budget_epsilon']:.4f}"
            )
    return report


def check_epsilons(report: dict[str, Any]) -> None:
    """Recompute every epsilon of a parsed report (each site's rounds, the supplier-level rounds).

    What `verify_report` checks after the signature, less the budgets: raises `ReportInvalid`
    naming the first site or round whose recorded epsilon the accountant does not give, or a
    report that lacks the records to recompute from. The portal calls it on each upload.
    """
    sites = report.get("sites", {})
    if not isinstance(sites, dict):
        raise ReportInvalid("the report's 'sites' is not a mapping of site names to their records")
    try:
        version = int(report.get("version", 1))
        if version > REPORT_VERSION:
            raise ReportInvalid(f"report version {version} is newer than this verifier's {REPORT_VERSION}")
        _check_epsilons(sites, report.get("central_dp"), version)
    except (KeyError, TypeError, ValueError) as exc:  # a record without the fields to recompute from
        raise ReportInvalid(
            f"the report lacks what its epsilons are recomputed from: {type(exc).__name__} {exc}"
        ) from None


def check_membership(report: dict[str, Any]) -> None:
    """Check that each site's membership-inference figures hang together; raises `ReportInvalid` naming the site.

    Only their consistency: the AUC itself was computed on the site's rows and cannot be recomputed.
    """
    figures = report.get("membership_inference") or {}
    if not isinstance(figures, dict):
        raise ReportInvalid("the report's 'membership_inference' is not a mapping of site names to their figures")
    for site, figure in figures.items():
        try:
            MembershipResult.from_dict(figure, source=f"site '{site}' membership inference")
        except MembershipCheckError as exc:
            raise ReportInvalid(str(exc)) from None


def _check_epsilons(sites: dict[str, Any], central: dict[str, Any] | None, version: int = 1) -> None:
    for site, entry in sites.items():
        if version >= 2 and "mechanisms" not in entry:
            raise ReportInvalid(f"site '{site}': a version {version} report must list the site's mechanisms")
        _recompute(f"site '{site}'", entry, prior=entry.get("prior_history", []))
        ordered = _ordered_steps(entry)
        final = ordered[-1][1]["epsilon"] if ordered else 0.0
        if not _close(final, entry["epsilon"]):
            raise ReportInvalid(f"site '{site}': epsilon {entry['epsilon']} is not its last release's {final}")
    if central:
        _recompute("central DP", central, prior=[])
        adaptive = central.get("adaptive_clipping")
        if adaptive:  # the update and count noise together must be worth the accounted multiplier
            z_update, count_stddev = adaptive["update_noise_multiplier"], adaptive["count_stddev"]
            combined = (z_update**-2 + (2 * count_stddev) ** -2) ** -0.5
            if not _close(combined, central["noise_multiplier"]):
                raise ReportInvalid(
                    f"central DP: update noise multiplier {z_update:g} with count noise {count_stddev:g} amounts "
                    f"to a noise multiplier of {combined:.6f} (Andrew et al. 2021, Theorem 1), but epsilon is "
                    f"accounted at {central['noise_multiplier']:g}"
                )


def _plot_png(report: dict[str, Any]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for site, entry in sorted(report["sites"].items()):
        line = ax.plot([r["round"] for r in entry["rounds"]], [r["epsilon"] for r in entry["rounds"]], marker="o",
                       label=f"{site} (budget {entry['budget_epsilon']:g})")  # fmt: skip
        ax.axhline(entry["budget_epsilon"], color=line[0].get_color(), linestyle=":", alpha=0.6)
    if report.get("central_dp"):
        c = report["central_dp"]
        ax.plot([r["round"] for r in c["rounds"]], [r["epsilon"] for r in c["rounds"]], "k--", label="supplier-level")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel("cumulative epsilon")
    ax.set_title("Privacy spent per site")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def _within(site: dict[str, Any]) -> bool:
    return site["epsilon"] <= site["budget_epsilon"] * (1 + REL_TOLERANCE)


def _profile_cell(site: dict[str, Any]) -> str:
    """The site's DP data profile in the HTML table: its epsilon and noise, or 'exact'."""
    for mech in site.get("mechanisms", []):
        if mech["mechanism"] == "profile":
            return f"epsilon {mech['epsilon']:.3f} (noise std {mech['noise_std']:.3g})"
    return "exact (not covered)"


def _membership_html(report: dict[str, Any]) -> str:
    """The membership-inference section of the HTML view: each site's AUC beside its epsilon."""
    figures = report.get("membership_inference") or {}
    if not figures:
        return ""
    e = html.escape
    epsilon = {site: entry["epsilon"] for site, entry in report.get("sites", {}).items()}
    rows = "".join(
        f"<tr><td>{e(site)}</td><td>{f['auc']:.3f}</td><td>{f.get('null_sd', 0.0):.3f}</td><td>{e(f['method'])}</td>"
        f"<td>{f['n_train']}</td><td>{f['n_holdout']}</td>"
        f"<td>{f'{epsilon[site]:.3f}' if site in epsilon else 'no record-level DP'}</td></tr>"
        for site, f in sorted(figures.items())
    )
    return (
        "<h2>Membership inference on the final model</h2><table><tr><th>site</th><th>attack ROC-AUC</th>"
        "<th>chance spread (sd)</th><th>method</th><th>training rows</th><th>held-out rows</th><th>epsilon</th></tr>"
        f"{rows}</table><p><small>{e(report.get('membership_inference_note', MEMBERSHIP_NOTE))}</small></p>"
    )


def _html(report: dict[str, Any]) -> str:
    e = html.escape
    rows = "".join(
        f"<tr><td>{e(site)}</td><td>{s['epsilon']:.4f}</td><td>{s['budget_epsilon']:g}</td><td>{s['delta']:.3g}</td>"
        f"<td>{e(s['accountant'])}</td><td>{s['max_grad_norm']:g}</td><td>{s['records']}</td><td>{len(s['rounds'])}</td>"
        f"<td>{_profile_cell(s)}</td><td>{'within budget' if _within(s) else 'OVER BUDGET'}</td></tr>"
        for site, s in sorted(report["sites"].items())
    )
    central, central_html = report.get("central_dp"), ""
    if central:
        clip = f"{central['clipping_norm']:g}"
        if central.get("adaptive_clipping"):
            first, last = central["rounds"][0], central["rounds"][-1]
            clip = (f"adaptive, {first['clipping_norm']:.3g} in round {first['round']} to "
                    f"{last['clipping_norm']:.3g} in round {last['round']}")  # fmt: skip
        central_html = (
            f"<h2>Supplier-level DP</h2><p>epsilon {central['epsilon']:.3f} at delta {central['delta']:g}; "
            f"noise multiplier {central['noise_multiplier']:g}, clipping norm {clip}.</p><p>{e(central['note'])}</p>"
        )
    refusals = "".join(f"<li>{e(r)}</li>" for r in report.get("refusals", [])) or "<li>none</li>"
    membership_html = _membership_html(report)
    unit = report.get("record_unit") or {}
    unit_html = f"<p><b>One record is one window.</b> {e(unit['note'])}.</p>" if unit.get("record") == "window" else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Privacy report {e(report["run_id"])}</title>
<style>body{{font-family:sans-serif;max-width:60rem;margin:2rem auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.3rem .6rem;text-align:right}}td:first-child{{text-align:left}}</style></head>
<body><h1>Privacy report</h1>
<p>Run <code>{e(report["run_id"])}</code>, task <b>{e(str(report["task"].get("name", "")))}</b>,
issued {e(report["created_at"])}.</p>
<p>Mechanism: {e(report["mechanism"])}.</p>
<h2>Record-level DP per site</h2>{unit_html}
<table><tr><th>site</th><th>epsilon</th><th>budget</th><th>delta</th><th>accountant</th><th>clip</th>
<th>records</th><th>rounds</th><th>DP profile</th><th>status</th></tr>{rows}</table>
<img alt="epsilon over rounds per site" src="data:image/png;base64,{_plot_png(report)}">
{central_html}
{membership_html}
<h2>Refusals</h2><ul>{refusals}</ul>
<p><small>{e(report["not_covered"])}</small></p>
<p>Verify: <code>openssl pkeyutl -verify -pubin -inkey coordinator.pub.pem -rawin -in report.json
-sigfile report.json.sig</code> and
<code>sangsaeng privacy verify report.json --public-key coordinator.pub.pem</code>.</p>
</body></html>
"""
