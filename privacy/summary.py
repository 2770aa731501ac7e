"""The short form of a privacy report: epsilon per site over rounds, against each site's budget.

One function, `privacy_summary`, builds it from a report's content; results.json carries it as
``privacy``, the terminal's privacy table shows it, and the portal uploader derives the per-site
lists the portal's run report takes from it (``portal.uploader.run_report``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from privacy.errors import ReportInvalid

__all__ = ["privacy_summary"]


def _number(value: Any) -> float | None:
    """`value` itself when it is a number, as a float when it reads as one, else None."""
    if isinstance(value, int | float):
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _epsilon_by_round(entry: Mapping[str, Any]) -> dict[str, Any]:
    """``{round: epsilon}`` from a report's ``rounds`` list, or from an ``epsilon_by_round`` list or mapping.

    Rounds without a number are numbered by position (1, 2, ...); rounds without an epsilon are skipped.
    """
    given = entry.get("epsilon_by_round")
    if isinstance(given, Mapping):
        return {str(r): e for r, e in given.items()}
    if isinstance(given, list):
        return {str(i): e for i, e in enumerate(given, start=1)}
    rounds = entry.get("rounds")
    if not isinstance(rounds, list):
        return {}
    return {
        str(r.get("round", i)): r["epsilon"]
        for i, r in enumerate(rounds, start=1)
        if isinstance(r, Mapping) and r.get("epsilon") is not None
    }


def _profile_epsilon(entry: Mapping[str, Any]) -> float | None:
    """The epsilon after a site's DP data profile (its first mechanism), or None without one."""
    mechanisms = entry.get("mechanisms")
    if not isinstance(mechanisms, list):
        return None
    for mech in mechanisms:
        if isinstance(mech, Mapping) and mech.get("mechanism") == "profile":
            return _number(mech.get("epsilon"))
    return None


def _membership_auc(figure: Any) -> float | None:
    """A site's membership-inference AUC from its figures in the report, or None without them."""
    return _number(figure.get("auc")) if isinstance(figure, Mapping) else None


def privacy_summary(
    report: Mapping[str, Any], *, report_path: str | None = None, source: str = "privacy report"
) -> dict[str, Any]:
    """Epsilon per site over rounds, supplier-level DP and refusals, from a privacy report's content.

    Returns ``{"report": report_path, "sites": {site: {"epsilon", "budget_epsilon", "delta",
    "epsilon_by_round": {"1": ..., ...}, "profile_epsilon", "membership_auc"}}, "central_dp": {"epsilon",
    "delta"} | None, "refusals": [...]}``, sites in name order (as the signed report.json stores them);
    ``membership_auc`` is the site's membership-inference ROC-AUC on the final model (None: not run).

    Besides the coordinator's report (`privacy.report.build_report`) it accepts a bare
    ``{site: {...}}`` mapping and site entries that list ``epsilon_by_round`` themselves.
    Raises `ReportInvalid` naming `source` and the site when a site lacks a numeric
    ``epsilon`` or ``budget_epsilon``.
    """
    sites = report.get("sites", report) if isinstance(report, Mapping) else None
    if not isinstance(sites, Mapping):
        raise ReportInvalid(f"{source}: expected a mapping of sites to their privacy spend")
    summary_sites: dict[str, dict[str, Any]] = {}
    membership = report.get("membership_inference") if sites is not report else None
    membership = membership if isinstance(membership, Mapping) else {}
    for site, entry in sorted(sites.items()):
        if not isinstance(entry, Mapping):
            continue
        epsilon, budget = _number(entry.get("epsilon")), _number(entry.get("budget_epsilon"))
        if epsilon is None or budget is None:
            raise ReportInvalid(f"{source}: site '{site}' needs numeric 'epsilon' and 'budget_epsilon'")
        summary_sites[str(site)] = {
            "epsilon": epsilon,
            "budget_epsilon": budget,
            "delta": entry.get("delta"),
            "epsilon_by_round": _epsilon_by_round(entry),
            # The DP data profile's own share of the epsilon (version 2 reports); None: exact profile.
            "profile_epsilon": _profile_epsilon(entry),
            # The membership-inference attack's ROC-AUC on the final model (privacy.membership); None: not run.
            "membership_auc": _membership_auc(membership.get(site)),
        }
    whole = sites is not report  # a full report, not a bare mapping of sites
    central = report.get("central_dp") if whole else None
    return {
        "report": report_path,
        "sites": summary_sites,
        "central_dp": {"epsilon": central["epsilon"], "delta": central["delta"]} if central else None,
        "refusals": list(report.get("refusals", [])) if whole else [],
    }
