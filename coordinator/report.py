"""What people look at after a run: the comparison table and the metric-over-rounds plot."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from rich.table import Table

__all__ = ["plot_rounds", "results_table", "privacy_table"]


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.3f}"


def results_table(results: dict[str, Any]) -> Table:
    """Centralised vs local-only vs federated, all scored on the same held-out rows."""
    metrics = list(results["centralized"])
    primary = results["task"]["primary_metric"]
    table = Table(
        title=f"{results['task']['name']}: {results['held_out_rows']} held-out rows from {len(results['sites'])} sites",
        caption=f"primary metric: {primary}",
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
    for site, values in results["local_only"].items():
        table.add_row(f"  local-only: {site}", *[_fmt(values.get(m)) for m in metrics], style="dim")
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


def privacy_table(privacy: dict[str, Any]) -> Table:
    """Cumulative epsilon per site after each round, against each site's budget."""
    rounds = sorted({int(r) for s in privacy["sites"].values() for r in s["epsilon_by_round"]})
    table = Table(title="privacy spent (cumulative epsilon per site)")
    table.add_column("site")
    for r in rounds:
        table.add_column(f"r{r}", justify="right")
    table.add_column("budget", justify="right")
    table.add_column("delta", justify="right")
    for site, entry in sorted(privacy["sites"].items()):
        by_round = entry["epsilon_by_round"]
        table.add_row(
            site, *[_fmt(by_round.get(str(r))) if str(r) in by_round else "-" for r in rounds],
            f"{entry['budget_epsilon']:g}", f"{entry['delta']:.2g}",
        )  # fmt: skip
    if privacy.get("central_dp"):
        c = privacy["central_dp"]
        table.caption = f"supplier-level DP: epsilon {c['epsilon']:.3f} at delta {c['delta']:g}"
    return table
