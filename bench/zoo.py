"""Task zoo: every built-in task in one run, several seeds, the same held-out rows for every model.

    python bench/zoo.py [--seeds 0 1 2] [--tasks ...] [--rounds N] [--out bench-out/zoo] [--no-write]
        [--report-from bench-out/zoo/zoo.csv]

For each built-in task (`models.tasks.builtin_tasks`) on its embedded sample data, split into
supplier sites by its natural column (`models.datasets.SAMPLES`), and each seed:

- centralised (pooled training rows), local-only (each site alone; mean and worst site) and
  federated (FedAvg in Flower's simulation runtime), all from `run_experiment`, with the same
  budget: ``rounds x local epochs`` epochs for the centralised and local-only models;
- federated with per-site DP-SGD at epsilon 3 (the DP training defaults, the noise calibrated so
  each site's whole run ends at or under epsilon 3), the same number of rounds, fresh sites;
- for `turbofan-rul` also the per-row model: the same task without ``[task.sequence]`` but with
  ``group_column = "unit"``, so the held-out split is the same whole engines and every model is
  scored on the same rows (the windowed model pads, so it predicts every row too). Both models
  report ``rmse`` (every held-out row) and ``rmse_last`` (each held-out engine's last cycle).

Targets (issue 13): federated within 5 % of centralised on each task's primary metric and better
than the local-only mean in every seed; DP at epsilon 3 within 15 % of non-private federated;
on `turbofan-rul` the windowed federated RMSE at least 15 % below the per-row federated RMSE.
Seconds per round are the steady rounds (from the end of round 1 to the end of the last) of the
federated run, so the engine's start and the sites' profiling are not counted.

Writes its section of BENCHMARKS.md and `models/reference.json` (the figures `sangsaeng tasks`
shows), and exits non-zero if a target is missed (after writing both).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import ROOT, dataset  # noqa: E402  (sets up the environment first)
from bench._report import write_section  # noqa: E402
from coordinator.checkpoint import load_checkpoint  # noqa: E402
from coordinator.config import DP_TRAINING_DEFAULTS, FederationConfig  # noqa: E402
from coordinator.progress import RunObserver  # noqa: E402
from coordinator.simulation import evaluate_weights, run_experiment, write_site_files  # noqa: E402
from models.datasets import SAMPLES, holdout_split  # noqa: E402
from models.scaler import FederatedScaler, profile_site  # noqa: E402
from models.schema import load_site_data  # noqa: E402
from models.tasks import TaskSpec, builtin_tasks  # noqa: E402

REFERENCE = ROOT / "models" / "reference.json"
DP_EPSILON = 3.0


@dataclass(frozen=True)
class Budget:
    """Rounds of FedAvg and local epochs per round of one task (centralised/local-only: their product)."""

    rounds: int
    local_epochs: int
    why: str
    max_seeds: int | None = None  # at most this many of --seeds (the first ones); None: all


# Every task gets the product's default training (MLP 64-32, or the tcn for windows; batch 64,
# lr 0.003); only the number of rounds is a choice here.
BUDGETS: dict[str, Budget] = {
    "predictive-maintenance": Budget(10, 2, "as bench/utility.py; federated has levelled off by round 10"),
    "injection-molding-quality": Budget(10, 2, "as bench/utility.py"),
    # Federated macro-F1 is still rising at round 10; 20 rounds were tried (BENCHMARKS.md, the zoo's note).
    "failure-mode": Budget(10, 2, "the same AI4I rows as predictive-maintenance, the same budget"),
    # 10 sites of windows, DP-SGD at each: about 7 min a seed here (the DP run most of it).
    "turbofan-rul": Budget(10, 2, "the most affordable on 2 shared cores: about 7 min a seed"),
}


class RoundClock(RunObserver):
    """Records when each round of a run finished."""

    def __init__(self) -> None:
        self.finished: list[float] = []

    def round_finished(self, record: dict[str, Any]) -> None:
        """Note the time."""
        self.finished.append(time.perf_counter())

    def seconds_per_round(self) -> float:
        """Mean seconds per round after the first (NaN with fewer than two rounds)."""
        if len(self.finished) < 2:
            return float("nan")
        return (self.finished[-1] - self.finished[0]) / (len(self.finished) - 1)


def per_row(spec: TaskSpec) -> TaskSpec:
    """The task without windows, its held-out split still by whole groups of the sequence's group."""
    assert spec.sequence is not None
    return dataclasses.replace(spec, name=f"{spec.name}-per-row", sequence=None, group_column=spec.sequence.group)


def run(task: str, spec: TaskSpec, seed: int, name: str, args: argparse.Namespace, **overrides: Any) -> dict:
    """One `run_experiment` on fresh simulated sites; adds `seconds_per_round` and `out_dir`."""
    out = args.out / f"{task}-seed{seed}-{name}"
    # Fresh sites: their privacy ledgers would remember a previous run's spend.
    shutil.rmtree(out, ignore_errors=True)
    site_files, dropped = write_site_files(dataset(task), SAMPLES[task].split_by, out, spec=spec)
    config = FederationConfig.with_defaults(
        task=spec, num_rounds=args.budgets[task].rounds, seed=seed, out_dir=out, key_dir=args.out / "keys", **overrides
    )
    clock = RoundClock()
    start = time.perf_counter()
    results = run_experiment(spec, site_files, config, dropped=dropped, observer=clock)
    results["seconds_per_round"] = clock.seconds_per_round()
    results["out_dir"] = out
    results["site_files"] = site_files
    results["fed_config"] = config
    key = spec.primary_metric
    print(f"{task} seed {seed} {name}: centralised {results['centralized'][key]:.3f} federated "
          f"{results['federated']['global'][key]:.3f} ({time.perf_counter() - start:.0f} s, "
          f"{results['seconds_per_round']:.2f} s/round)", flush=True)  # fmt: skip
    return results


def last_cycle_metrics(results: dict, spec: TaskSpec, order: str, seed: int) -> dict[str, float]:
    """A per-row run's final model scored on every held-out row and on each held-out group's last row.

    Rebuilds the federation's scaler from the sites' training rows, as `run_experiment` does,
    and checks that it reproduces the run's own figure on every held-out row.
    """
    group = spec.group_by
    assert group is not None
    trains, tests = [], []
    for name, path in results["site_files"].items():
        # The validated rows keep the export's row index; the order column (not a feature) comes from the export.
        frame = load_site_data(path, spec)
        frame[order] = pd.read_csv(path)[order].loc[frame.index].to_numpy()
        train, test = holdout_split(frame, spec, seed=seed, source=str(path))
        trains.append(train)
        # Groups of different sites may share a name: each site's are its own.
        tests.append(test.assign(**{group: [f"{name}/{g}" for g in test[group]]}))
    scaler = FederatedScaler.combine([profile_site(t, spec) for t in trains], spec)
    held_out = pd.concat(tests, ignore_index=True)
    config: FederationConfig = results["fed_config"]
    weights, _ = load_checkpoint(Path(results["out_dir"]) / "checkpoints" / f"round_{config.num_rounds:03d}.npz")
    every = evaluate_weights(weights, spec, scaler, config, held_out)
    if not np.isclose(every["rmse"], results["federated"]["global"]["rmse"], rtol=1e-4):
        raise RuntimeError(f"per-row rescoring gives rmse {every['rmse']} but the run reported "
                           f"{results['federated']['global']['rmse']}: not the run's model or rows")  # fmt: skip
    last = held_out[held_out[order] == held_out.groupby(group)[order].transform("max")]
    return {"rmse": every["rmse"], "rmse_last": evaluate_weights(weights, spec, scaler, config, last)["rmse"]}


def measure(task: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Every model of one task and seed, as one row of figures."""
    spec = builtin_tasks()[task]
    key = spec.primary_metric
    budget = args.budgets[task]
    base = run(task, spec, seed, "federated", args, local_epochs=budget.local_epochs)
    dp = run(task, spec, seed, f"dp-eps{DP_EPSILON:g}", args, dp_epsilon=DP_EPSILON)
    row: dict[str, Any] = {
        "task": task,
        "seed": seed,
        "sites": len(base["sites"]),
        "held_out_rows": base["held_out_rows"],
        "centralized": base["centralized"][key],
        "local_mean": base["local_only_summary"]["mean"][key],
        "local_worst": base["local_only_summary"]["worst"][key],
        "federated": base["federated"]["global"][key],
        "dp": dp["federated"]["global"][key],
        "dp_max_eps": max(s["epsilon"] for s in dp["privacy"]["sites"].values()),
        "fed_s_round": base["seconds_per_round"],
        "dp_s_round": dp["seconds_per_round"],
    }
    if spec.sequence is not None and spec.kind == "regression":
        rows_spec = per_row(spec)
        flat = run(task, rows_spec, seed, "per-row", args, local_epochs=budget.local_epochs)
        if flat["held_out_rows"] != base["held_out_rows"]:
            raise RuntimeError(f"{task}: the per-row model holds out {flat['held_out_rows']} rows, the windowed "
                               f"{base['held_out_rows']}: not the same engines")  # fmt: skip
        scored = last_cycle_metrics(flat, rows_spec, spec.sequence.order, seed)
        row.update(
            fed_rmse_last=base["federated"]["global"]["rmse_last"],
            cen_rmse_last=base["centralized"]["rmse_last"],
            dp_rmse_last=dp["federated"]["global"]["rmse_last"],
            row_rmse=scored["rmse"],
            row_rmse_last=scored["rmse_last"],
            row_s_round=flat["seconds_per_round"],
        )
    return row


def _ms(values: pd.Series, digits: int = 3) -> str:
    return f"{values.mean():.{digits}f} ± {values.std(ddof=0):.{digits}f}"


def report(table: pd.DataFrame, args: argparse.Namespace) -> tuple[list[str], list[str], dict[str, Any]]:
    """The BENCHMARKS.md section's lines, the verdicts, and the reference figures per task."""
    tasks = builtin_tasks()
    seeds = sorted(int(s) for s in table["seed"].unique())
    lines = [
        "## Task zoo: every built-in task, centralised vs local-only vs federated vs DP (`bench/zoo.py`)",
        "",
        f"Measured {args.provenance} on {platform.node() or 'this machine'} ({os.cpu_count()} cores, shared with other "
        f"work), {time.strftime('%Y-%m-%d')}, seeds {seeds}. Each task on its embedded sample, split into "
        "supplier sites by its natural column; every model scored on the union of the sites' held-out splits "
        "(30 %, stratified; by whole engines for turbofan-rul), on the task's primary metric; mean ± sd over "
        "seeds. Non-private models use the default local training (MLP 64-32, or the tcn over windows of "
        "30 cycles; batch 64, lr 0.003, balanced class weights); centralised and local-only train for "
        "rounds x local epochs epochs. Federated DP: per-site DP-SGD at epsilon 3 with the DP defaults "
        f"({DP_TRAINING_DEFAULTS}; a sequence task keeps the tcn, with no hidden layer), the same rounds; in "
        "brackets the largest epsilon any site spent. s/round: the federated run's steady rounds (round 1, "
        "with the engine's start and the sites' profiling, excluded), Flower's simulation runtime on this "
        "machine. fed / cen and DP / fed: ratios of the means; for rmse lower is better, so the targets are "
        "fed / cen <= 1.05 and DP / fed <= 1.15 (elsewhere >= 0.95 and >= 0.85).",
        "",
        "| task (sites) | metric | seeds | rounds x epochs | centralised | local-only mean | local-only worst "
        "| federated | fed / cen | federated DP eps 3 | DP / fed | s/round fed | s/round DP |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    verdicts: list[str] = []
    reference: dict[str, Any] = {}
    for task, group in table.groupby("task", sort=False):
        spec = tasks[str(task)]
        key, higher = spec.primary_metric, spec.higher_is_better
        budget = args.budgets[task]
        fed_cen = group["federated"].mean() / group["centralized"].mean()
        dp_fed = group["dp"].mean() / group["federated"].mean()
        lines.append(
            f"| {task} ({int(group['sites'].iloc[0])}) | {key} ({'higher' if higher else 'lower'} is better) | "
            f"{len(group)} | {budget.rounds} x {budget.local_epochs} | {_ms(group['centralized'])} | "
            f"{_ms(group['local_mean'])} | {_ms(group['local_worst'])} | {_ms(group['federated'])} | {fed_cen:.3f} | "
            f"{_ms(group['dp'])} ({group['dp_max_eps'].max():.2f}) | {dp_fed:.3f} | "
            f"{group['fed_s_round'].mean():.2f} | {group['dp_s_round'].mean():.2f} |"
        )
        better = group["federated"] > group["local_mean"] if higher else group["federated"] < group["local_mean"]
        near = fed_cen >= 0.95 if higher else fed_cen <= 1.05
        dp_near = dp_fed >= 0.85 if higher else dp_fed <= 1.15
        bound, dp_bound = (">= 0.95", ">= 0.85") if higher else ("<= 1.05", "<= 1.15")
        verdicts += [
            f"- {task}: federated / centralised {key} = {fed_cen:.3f} (target {bound}): "
            f"**{'met' if near else 'MISSED'}**",
            f"- {task}: federated {'above' if higher else 'below'} the local-only mean in every seed "
            f"({int(better.sum())} of {len(group)}): **{'met' if better.all() else 'MISSED'}**",
            f"- {task}: DP eps 3 / federated {key} = {dp_fed:.3f} (target {dp_bound}): "
            f"**{'met' if dp_near else 'MISSED'}**",
        ]
        reference[str(task)] = {
            "metric": key,
            "higher_is_better": higher,
            "rounds": budget.rounds,
            "local_epochs": budget.local_epochs,
            "seeds": sorted(int(s) for s in group["seed"]),
            "centralized": round(float(group["centralized"].mean()), 3),
            "local_only_mean": round(float(group["local_mean"].mean()), 3),
            "federated": round(float(group["federated"].mean()), 3),
            "dp_epsilon_3": round(float(group["dp"].mean()), 3),
            "seconds_per_round": round(float(group["fed_s_round"].mean()), 2),
        }
    if "row_rmse" in table:
        seq = table.dropna(subset=["row_rmse"])
        for task, group in seq.groupby("task", sort=False):
            ratio = group["federated"].mean() / group["row_rmse"].mean()
            ratio_last = group["fed_rmse_last"].mean() / group["row_rmse_last"].mean()
            lines += [
                "",
                f"{task}: the windowed model (windows of 30 cycles per engine, tcn) against the per-row model "
                '(the same task without `[task.sequence]`, `group_column = "unit"`: the same held-out engines, '
                f"MLP 64-32), both federated with the same budget, on the same "
                f"held-out rows in each seed ({', '.join(str(int(n)) for n in group['held_out_rows'])}; the windowed "
                "model pads the first cycles of an engine, so it predicts every row). "
                "rmse: every held-out row; rmse_last: each held-out engine's last cycle (the usual C-MAPSS protocol).",
                "",
                "| model | rmse | rmse_last | s/round |",
                "|---|---|---|---|",
                f"| centralised, windows | {_ms(group['centralized'])} | {_ms(group['cen_rmse_last'])} | |",
                f"| federated, windows | {_ms(group['federated'])} | {_ms(group['fed_rmse_last'])} | "
                f"{group['fed_s_round'].mean():.2f} |",
                f"| federated DP eps 3, windows | {_ms(group['dp'])} | {_ms(group['dp_rmse_last'])} | "
                f"{group['dp_s_round'].mean():.2f} |",
                f"| federated, per row | {_ms(group['row_rmse'])} | {_ms(group['row_rmse_last'])} | "
                f"{group['row_s_round'].mean():.2f} |",
                f"| windowed / per-row (federated) | {ratio:.3f} | {ratio_last:.3f} | |",
            ]
            verdicts.append(
                f"- {task}: windowed federated rmse / per-row federated rmse = {ratio:.3f} (target <= 0.85; "
                f"at the last cycle {ratio_last:.3f}): **{'met' if ratio <= 0.85 else 'MISSED'}**"
            )
            reference[str(task)]["per_row_federated"] = round(float(group["row_rmse"].mean()), 3)
    lines += ["", "Budgets: " + "; ".join(f"{t}: {b.rounds} rounds x {b.local_epochs} local epochs ({b.why})"
                                         for t, b in args.budgets.items() if t in reference)]  # fmt: skip
    if args.note:
        lines += ["", args.note]
    lines += ["", "Targets:", *verdicts]
    meta = {
        "benchmark": "bench/zoo.py",
        "section": "BENCHMARKS.md, zoo",
        "date": time.strftime("%Y-%m-%d"),
        "seeds": seeds,
        "dp_epsilon": DP_EPSILON,
        "tasks": reference,
    }
    return lines, verdicts, meta


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--tasks", nargs="+", default=list(BUDGETS), choices=sorted(BUDGETS))
    parser.add_argument("--rounds", type=int, default=None, help="the same rounds for every task (a quick check)")
    parser.add_argument("--out", type=Path, default=Path("bench-out/zoo"))
    parser.add_argument("--report-from", type=Path, default=None, help="report the zoo.csv of an earlier run")
    parser.add_argument("--provenance", default=None, help="how the rows were measured, for the section's text")
    parser.add_argument("--note", default=None, help="a paragraph for the section, before the targets")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md and the JSON alone")
    args = parser.parse_args()
    missing = sorted(set(builtin_tasks()) - set(BUDGETS))
    if missing:
        parser.error(f"built-in task(s) {missing} have no budget in bench/zoo.py BUDGETS")
    args.budgets = {
        t: dataclasses.replace(b, rounds=args.rounds, why="--rounds") if args.rounds else b for t, b in BUDGETS.items()
    }
    if args.provenance is None:
        args.provenance = f"from the rows of {args.report_from}" if args.report_from else "in one run"
    start = time.perf_counter()
    if args.report_from:  # the figures of an earlier (perhaps interrupted) run, one row per task and seed
        table = pd.read_csv(args.report_from)
    else:
        # The first seed of every task first, so an interrupted run still has every task (--report-from).
        jobs = [(t, s) for t in args.tasks for s in args.seeds[:1]]
        jobs += [(t, s) for t in args.tasks for s in args.seeds[1 : args.budgets[t].max_seeds]]
        rows = []
        for task, seed in jobs:
            rows.append(measure(task, seed, args))
            pd.DataFrame(rows).to_csv(args.out / "zoo.csv", index=False)  # kept after every task and seed
        table = pd.DataFrame(rows)
    lines, verdicts, meta = report(table, args)
    if not args.report_from:
        lines.append(f"\nWall time of the whole benchmark: {(time.perf_counter() - start) / 60:.0f} min.")
    print("\n".join(lines))
    if not args.no_write:
        print(f"written to {write_section('zoo', chr(10).join(lines))}")
        REFERENCE.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        print(f"written to {REFERENCE}")
    print(f"seconds per round, median over every run: {statistics.median(table['fed_s_round']):.2f}")
    return 0 if all("MISSED" not in v for v in verdicts) else 1


if __name__ == "__main__":
    np.seterr(all="ignore")
    raise SystemExit(main())
