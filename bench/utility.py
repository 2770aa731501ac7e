"""Utility benchmark: centralised vs local-only vs federated, both built-in tasks, one run.

    python bench/utility.py [--rounds 10] [--seeds 0 1 2] [--out bench-out/utility]

Every model is scored on the same rows (the union of the sites' held-out splits). Targets:
federated ROC-AUC >= 0.95 x centralised on AI4I split by Type, and above the local-only mean
on both tasks. Writes its section of BENCHMARKS.md and exits non-zero if a target is missed.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._report import write_section  # noqa: E402
from coordinator.config import FederationConfig  # noqa: E402
from coordinator.simulation import run_experiment, write_site_files  # noqa: E402
from models.datasets import SAMPLES, sample_path  # noqa: E402
from models.tasks import get_task  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def _data(task: str) -> Path:
    shared = SHARED / SAMPLES[task].filename
    return shared if shared.exists() else sample_path(task)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--local-epochs", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("bench-out/utility"))
    args = parser.parse_args()

    rows = []
    for task in ("predictive-maintenance", "injection-molding-quality"):
        spec = get_task(task)
        frame = pd.read_csv(_data(task))
        for seed in args.seeds:
            out = args.out / f"{task}-seed{seed}"
            site_files, dropped = write_site_files(frame, SAMPLES[task].split_by, out, spec=spec)
            config = FederationConfig(
                task=spec, num_rounds=args.rounds, local_epochs=args.local_epochs, seed=seed, out_dir=out
            )
            start = time.perf_counter()
            results = run_experiment(spec, site_files, config, dropped=dropped)
            key = spec.primary_metric
            rows.append(
                {
                    "task": task,
                    "seed": seed,
                    "centralized": results["centralized"][key],
                    "local_mean": results["local_only_summary"]["mean"][key],
                    "local_worst": results["local_only_summary"]["worst"][key],
                    "federated": results["federated"]["global"][key],
                    "fed_pr_auc": results["federated"]["global"]["pr_auc"],
                    "cen_pr_auc": results["centralized"]["pr_auc"],
                    "seconds": time.perf_counter() - start,
                    "sites": len(results["sites"]),
                }
            )
            print(f"{task} seed {seed}: {rows[-1]}", flush=True)

    table = pd.DataFrame(rows)
    lines = [
        "## Utility: centralised vs local-only vs federated (`bench/utility.py`)",
        "",
        f"Measured in one run on {platform.node() or 'this machine'} ({os.cpu_count()} cores), "
        f"{time.strftime('%Y-%m-%d')}: {args.rounds} rounds of FedAvg, {args.local_epochs} local epochs per round, "
        f"seeds {args.seeds}; local-only and centralised train for the same number of epochs. "
        "ROC-AUC on the union of the sites' held-out splits (30 %, stratified, per seed); mean ± sd over seeds.",
        "",
        "| task (sites) | centralised | local-only mean | local-only worst | federated | federated / centralised "
        "| PR-AUC fed / cen | s per run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    verdicts = []
    for task, group in table.groupby("task", sort=False):

        def ms(col: str, g: pd.DataFrame = group) -> str:
            return f"{g[col].mean():.3f} ± {g[col].std(ddof=0):.3f}"

        ratio = group["federated"].mean() / group["centralized"].mean()
        lines.append(
            f"| {task} ({int(group['sites'].iloc[0])}) | {ms('centralized')} | {ms('local_mean')} | "
            f"{ms('local_worst')} | {ms('federated')} | {ratio:.3f} | "
            f"{group['fed_pr_auc'].mean():.3f} / {group['cen_pr_auc'].mean():.3f} | {group['seconds'].mean():.0f} |"
        )
        above_local = bool((group["federated"] > group["local_mean"]).all())
        verdict = "yes" if above_local else "NO"
        verdicts.append(f"- {task}: federated above local-only mean in every seed: **{verdict}**")
        if task == "predictive-maintenance":
            verdicts.append(f"- {task}: federated / centralised = {ratio:.3f} (target >= 0.95): "
                            f"**{'met' if ratio >= 0.95 else 'MISSED'}**")  # fmt: skip
    lines += ["", "Targets:", *verdicts]
    path = write_section("utility", "\n".join(lines))
    print("\n".join(lines))
    print(f"written to {path}")
    return 0 if all("NO" not in v and "MISSED" not in v for v in verdicts) else 1


if __name__ == "__main__":
    np.seterr(all="ignore")
    raise SystemExit(main())
