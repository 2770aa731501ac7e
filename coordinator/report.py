"""A run's result as files and people see it: results.json, metrics.png, the comparison and privacy tables.

`build_results` is the one place results.json is assembled, for both runtimes, from the
`RunResult` the ServerApp hands back (`coordinator.run_result`):

- a simulation (`coordinator.simulation.run_experiment`) adds a `Comparison`: centralised and
  local-only references and the federated model scored on the same held-out rows;
- a deployment ServerApp (`coordinator.server_app.app`) has no data of its own, so the
  federated metrics are the sites' own held-out scores, and the reference keys are null.

`write_results` writes results.json and metrics.png beside the run's manifest.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from coordinator.run_result import RunResult
from privacy.summary import privacy_summary
from sangsaeng.files import write_json

__all__ = [
    "SITE_ROWS",
    "Comparison",
    "build_results",
    "write_results",
    "round_summaries",
    "plot_rounds",
    "results_table",
    "privacy_table",
    "contribution_table",
    "run_operating_point",
    "operating_point_table",
    "membership_line",
]

RESULTS = "results.json"
PLOT = "metrics.png"


@dataclass(frozen=True)
class Comparison:
    """What a simulation adds to a run's result: every model scored on the same held-out rows.

    Attributes:
        sites: the sites whose exports loaded, in input order (above the baseline sample's size:
            every site no problem was reported of; the coordinator read only the sample).
        site_rows: per site, ``{"train": rows, "held_out": rows}`` (above the baseline sample's size as
            the sites replied: a site not profiled, `coordinator.server_app.profile_sample`, has counts
            only once it trained and evaluated, None before; a site that never replied has no entry).
        excluded_sites: sites whose export did not load, with the problem, by site name.
        held_out_rows: rows in the union of the (sampled) sites' held-out splits.
        centralized: the model trained on the pooled training rows (the reference).
        local_only: per site, the model trained on that site alone.
        local_only_summary: mean and worst site of `local_only`.
        federated_global: the final federated model on the held-out union.
        federated_per_site: the final federated model on each site's held-out rows.
        dropped_groups: groups of the input table too small to become a site, with their rows.
        timings: seconds spent on each part of the experiment.
        local_only_own: per site, the model trained on that site alone, on the site's own held-out
            rows ("your line alone", next to `federated_per_site`: "with the network").
    """

    sites: Sequence[str]
    site_rows: Mapping[str, Mapping[str, int | None]]
    excluded_sites: Mapping[str, str]
    held_out_rows: int
    centralized: Mapping[str, float]
    local_only: Mapping[str, Mapping[str, float]]
    local_only_summary: Mapping[str, Any]
    federated_global: Mapping[str, float]
    federated_per_site: Mapping[str, Mapping[str, float]]
    dropped_groups: Mapping[str, int] = field(default_factory=dict)
    timings: Mapping[str, float] = field(default_factory=dict)
    local_only_own: Mapping[str, Mapping[str, float]] = field(default_factory=dict)


def round_summaries(rounds: Sequence[Mapping[str, Any]], *, metrics_key: str) -> list[dict[str, Any]]:
    """The per-round part of results.json from manifest rounds, its metrics read from ``metrics_key``.

    A simulation scores the global model on held-out rows (``metrics``); a deployment has the
    sites' own held-out scores (``federated_eval``).
    """
    return [
        {
            "round": r["round"],
            "metrics": {
                **{k: v for k, v in r.get(metrics_key, {}).items() if k != "loss"},
                "train_loss": r.get("train_loss"),
            },
            "sites_trained": r.get("sites_trained", []),
            "failures": r.get("failures", []),
            # sites whose reply did not come before the round's deadline (deployment, --round-timeout)
            **({"sites_lost": r["sites_lost"]} if r.get("sites_lost") else {}),
        }
        for r in sorted(rounds, key=lambda r: r["round"])
    ]


def _without_loss(metrics: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if k != "loss"}


def build_results(result: RunResult, comparison: Comparison | None = None) -> dict[str, Any]:
    """results.json of a run: with `comparison` a simulation's, without it a deployment's.

    Both share the keys that come from the run (task, sites, federated, rounds, privacy, config,
    run_id). A deployment adds ``runtime``, ``status`` and ``error`` and has null references; a
    simulation adds ``dropped_groups``, ``initial`` and ``timings``.
    """
    spec = result.task
    results: dict[str, Any] = {"task": {"name": spec.name, "kind": spec.kind, "primary_metric": spec.primary_metric}}
    if spec.image is not None:  # each site's skipped and converted images, as it reported them
        results["site_images"] = {name: dict(s.images) for name, s in sorted(result.sites.items()) if s.images}
    if comparison is None:
        results |= {"runtime": "deployment", "status": result.status, "error": result.error}
        last = next((r for r in sorted(result.rounds, key=lambda r: -r["round"]) if r.get("federated_eval")), {})
        results |= {
            "sites": sorted(result.sites),
            "site_rows": {name: {"train": s.n_train, "held_out": s.n_test} for name, s in result.sites.items()},
            "excluded_sites": dict(result.excluded_sites),
            "held_out_rows": sum(s.n_test or 0 for s in result.sites.values()),
            "centralized": None,
            "local_only": None,
            "local_only_summary": None,
            "federated": {
                "global": _without_loss(last.get("federated_eval", {})),
                "per_site": last.get("per_site", {}),
            },
            "rounds": round_summaries(result.rounds, metrics_key="federated_eval"),
        }
    else:
        results |= {
            "sites": list(comparison.sites),
            "site_rows": dict(comparison.site_rows),
            "excluded_sites": dict(comparison.excluded_sites),
            "dropped_groups": dict(comparison.dropped_groups),
            "held_out_rows": comparison.held_out_rows,
            "centralized": comparison.centralized,
            "local_only": comparison.local_only,
            "local_only_summary": comparison.local_only_summary,
            "federated": {"global": comparison.federated_global, "per_site": comparison.federated_per_site},
            "rounds": round_summaries(result.rounds, metrics_key="metrics"),
            "initial": _without_loss(result.initial_metrics),
        }
    results["operating_point"] = run_operating_point(result.rounds, result.config)
    report = result.privacy_report
    results["privacy"] = (
        privacy_summary(report, report_path=result.privacy_report_path, source=str(result.privacy_report_path))
        if report is not None
        else None
    )
    results["contribution"] = _contribution(result, comparison)
    # Each site's membership-inference check of the final model (privacy.membership), DP or not.
    results["membership_inference"] = {site: dict(figure) for site, figure in sorted(result.membership.items())}
    results |= {"config": dict(result.config), "run_id": result.run_id}
    if comparison is not None:
        results["timings"] = dict(comparison.timings)
    return results


def _contribution(result: RunResult, comparison: Comparison | None) -> dict[str, Any] | None:
    """The run's contribution scores, each site's with what it got back: its primary metric on its own
    held-out rows alone (``alone``) and with the network (``with_network``).

    A simulation's come from its comparison; a deployment's were measured at the sites after the
    last round (`coordinator.local_only`, already in the contribution), null where a site gave none.
    """
    if result.contribution is None:
        return None
    contribution = {**result.contribution, "per_site": {k: dict(v) for k, v in result.contribution["per_site"].items()}}
    primary = result.task.primary_metric
    for site, entry in contribution["per_site"].items():
        if comparison is not None:
            alone = comparison.local_only_own.get(site, {})
            network = comparison.federated_per_site.get(site, {})
            entry["alone"], entry["with_network"] = alone.get(primary), network.get(primary)
        else:
            entry.setdefault("alone", None)
            entry.setdefault("with_network", None)
    return contribution


def run_operating_point(rounds: Sequence[Mapping[str, Any]], config: Mapping[str, Any]) -> dict[str, Any] | None:
    """The decision threshold of the run's last evaluated round, from the sites' merged held-out histograms.

    Chosen by the run's ``operating_rule`` (`models.histogram.run_operating_point`): its threshold,
    recall, precision, F1 and inspection ``workload`` (the share of parts flagged for inspection
    by hand), with the round and whether the histograms were noisy (DP). None for a task that
    is not binary, or a run whose sites sent no histogram.
    """
    from models.histogram import run_operating_point as from_rounds

    return from_rounds(rounds, str(config.get("operating_rule") or "") or None)


def operating_point_table(point: Mapping[str, Any]) -> Table:
    """The operating point a line acts on: threshold, what it catches, and the parts left to inspect by hand."""
    table = Table(title=f"operating point ({point['rule']}, round {point['round']}"
                        f"{', noisy histograms (DP)' if point.get('noisy') else ''})")  # fmt: skip
    for column in ("threshold", "recall", "precision", "F1", "inspection workload"):
        table.add_column(column, justify="right")
    # The bins are fine near 0 and 1 (logit scale): significant digits, not decimals.
    table.add_row(f"{point['threshold']:.4g} (+{point['bin_width']:.2g})", _fmt(point["recall"]),
                  _fmt(point["precision"]), _fmt(point["f1"]), f"{100 * point['workload']:.1f} % of parts")  # fmt: skip
    scale = {"logit": " equal in log-odds", "linear": " equal over [0, 1]"}.get(str(point.get("scale")), "")
    table.caption = f"from {point['source']} ({point['held_out_rows']} rows, {point['bins']} bins{scale})"
    if point.get("warning"):
        table.caption += f"\nUNRELIABLE: {point['warning']}"
    return table


def write_results(
    result: RunResult, comparison: Comparison | None = None, *, out_dir: Path | None = None
) -> tuple[dict[str, Any], Path | None]:
    """Write results.json and metrics.png (when any round ran) into `out_dir` (default: the run's).

    Returns the results and the plot's path (None without rounds).
    """
    out_dir = Path(out_dir if out_dir is not None else result.config["out_dir"])
    results = build_results(result, comparison)
    write_json(out_dir / RESULTS, results)
    if not results["rounds"]:
        return results, None
    return results, plot_rounds(results, out_dir / PLOT)


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.3f}"


SITE_ROWS = 20
"""Most local-only sites the results table lists one by one; above it, quantiles and the worst ten."""


def results_table(results: dict[str, Any]) -> Table:
    """Centralised vs local-only vs federated on the same held-out rows (sites summarised above `SITE_ROWS`)."""
    metrics = list(results["centralized"])
    primary = results["task"]["primary_metric"]
    sample = results["local_only_summary"].get("sample") or {}
    sampled = bool(sample) and sample.get("sites") != sample.get("of")
    where = f"a seeded sample of {sample.get('sites')} of {len(results['sites'])}" if sampled else len(results["sites"])
    table = Table(
        title=f"{results['task']['name']}: {results['held_out_rows']} held-out rows from {where} sites",
        caption=f"primary metric: {primary}"
        + ("; centralised, local-only and held-out rows on the sample, federated on every site" if sampled else ""),
    )
    table.add_column("model")
    for m in metrics:
        table.add_column(m, justify="right", style="bold" if m == primary else None)
    table.add_row("centralised (pooled data, reference)", *[_fmt(results["centralized"][m]) for m in metrics])
    summary = results["local_only_summary"]
    table.add_row("local-only, mean of sites", *[_fmt(summary["mean"].get(m)) for m in metrics])
    if summary["worst"].get("site"):
        table.add_row(
            f"local-only, worst site ({summary['worst']['site']})", *[_fmt(summary["worst"].get(m)) for m in metrics]
        )
    if len(results["local_only"]) <= SITE_ROWS:
        for site, values in results["local_only"].items():
            table.add_row(f"  local-only: {site}", *[_fmt(values.get(m)) for m in metrics], style="dim")
    else:  # a large federation: the spread and the worst ten, not a row per site
        sample = summary.get("sample") or {}
        if sample and sample.get("sites") != sample.get("of"):
            table.add_row(f"  (local-only on a seeded sample of {sample['sites']} of {sample['of']} sites)",
                          style="dim")  # fmt: skip
        for q, value in (summary.get("quantiles") or {}).items():
            table.add_row(f"  local-only, {float(q):.0%} quantile of {primary}",
                          *[_fmt(value) if m == primary else "" for m in metrics], style="dim")  # fmt: skip
        for entry in summary.get("worst_ten") or []:
            table.add_row(f"  local-only, worst: {entry['site']}",
                          *[_fmt(entry.get(m)) if m == primary else "" for m in metrics], style="dim")  # fmt: skip
    table.add_row(
        "federated (global model)", *[_fmt(results["federated"]["global"][m]) for m in metrics], style="green"
    )
    return table


def plot_rounds(results: dict[str, Any], path: Path) -> Path:
    """Primary metric of the federated model per round, against the two references."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    primary = results["task"]["primary_metric"]
    rounds = [r["round"] for r in results["rounds"]]
    values = [r["metrics"].get(primary) for r in results["rounds"]]
    initial = results.get("initial", {}).get(primary)
    if initial is not None:
        rounds, values = [0, *rounds], [initial, *values]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    ax.plot(rounds, [math.nan if v is None else v for v in values], marker="o", label="federated")
    if results.get("centralized"):  # deployment runs have no pooled reference
        ax.axhline(results["centralized"][primary], color="black", linestyle="--", label="centralised (reference)")
    local_mean = (results.get("local_only_summary") or {"mean": {}})["mean"].get(primary)
    if local_mean is not None and not math.isnan(local_mean):
        ax.axhline(local_mean, color="tab:red", linestyle=":", label="local-only (mean of sites)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel(primary)
    ax.set_title(f"{results['task']['name']}: {primary} on {results['held_out_rows']} held-out rows")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def membership_line(results: Mapping[str, Any]) -> str | None:
    """Each site's membership-inference ROC-AUC on the final model, in one line (None when not run)."""
    figures = results.get("membership_inference") or {}
    if not figures:
        return None
    parts = ", ".join(
        f"{site} {f['auc']:.3f} (n={f['n_train']}+{f['n_holdout']})" for site, f in sorted(figures.items())
    )
    return f"membership inference on the final model, attack ROC-AUC (0.5 = chance): {parts}"


def privacy_table(privacy: dict[str, Any]) -> Table:
    """Cumulative epsilon per site after each round, against each site's budget."""
    rounds = sorted({int(r) for s in privacy["sites"].values() for r in s["epsilon_by_round"]})
    table = Table(title="privacy spent (cumulative epsilon per site)")
    profiled = any(s.get("profile_epsilon") is not None for s in privacy["sites"].values())
    table.add_column("site")
    if profiled:  # the DP data profile, spent before round 1
        table.add_column("profile", justify="right")
    for r in rounds:
        table.add_column(f"r{r}", justify="right")
    table.add_column("budget", justify="right")
    table.add_column("delta", justify="right")
    attacked = any(s.get("membership_auc") is not None for s in privacy["sites"].values())
    if attacked:  # the empirical check beside the proof: 0.5 is chance
        table.add_column("MIA AUC", justify="right")
    for site, entry in sorted(privacy["sites"].items()):
        by_round = entry["epsilon_by_round"]
        profile = [_fmt(entry["profile_epsilon"]) if entry.get("profile_epsilon") is not None else "exact"]
        table.add_row(
            site, *(profile if profiled else []),
            *[_fmt(by_round.get(str(r))) if str(r) in by_round else "-" for r in rounds],
            f"{entry['budget_epsilon']:g}", f"{entry['delta']:.2g}",
            *([_fmt(entry.get("membership_auc"))] if attacked else []),
        )  # fmt: skip
    if privacy.get("central_dp"):
        c = privacy["central_dp"]
        table.caption = f"supplier-level DP: epsilon {c['epsilon']:.3f} at delta {c['delta']:g}"
    return table


def contribution_table(contribution: dict[str, Any]) -> Table:
    """Per site: "your line alone / with the network" (its own held-out rows) and its contribution shares."""
    metric = contribution["metric"]
    method = contribution["method"] or "data share only"
    table = Table(title=f"what each site gave and got back ({metric}; contribution: {method})")
    for column in ("site", "your line alone", "with the network", "data share", "utility share", "flag"):
        table.add_column(column, justify="left" if column in ("site", "flag") else "right")
    for site, entry in contribution["per_site"].items():
        share = entry.get("utility_share")
        table.add_row(
            site, _fmt(entry.get("alone")), _fmt(entry.get("with_network")), f"{entry['data_share']:.1%}",
            "n/a" if share is None else f"{share:.1%}", entry.get("flag") or "",
        )  # fmt: skip
    gain = contribution.get("total_gain")
    missing = "; ".join(f"{k}: {v}" for k, v in contribution.get("not_available", {}).items())
    table.caption = (f"total gain {_fmt(gain)} {metric} over the initial model" if gain is not None else "") + (
        f"  (not available: {missing})" if missing else ""
    )
    return table
