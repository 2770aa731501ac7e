"""Privacy benchmark: utility of federated DP-SGD at several epsilons, and the cost of DP-SGD.

    python bench/privacy.py [--rounds 10] [--epsilons 1 3 8] [--out bench-out/privacy]

In one run, for AI4I split by Type and KAMP split by production line: ROC-AUC of centralised
training (non-private), federated (non-private) and federated with per-site DP-SGD at each
epsilon, all on the same held-out rows; then the wall time of DP-SGD against non-private
local training on the same site. Targets: epsilon 3 per site reaches >= 0.95 x the
centralised ROC-AUC on AI4I; DP-SGD costs <= 2x non-private training time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
import warnings
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import dataset  # noqa: E402  (sets up the environment first)
from bench._report import write_section  # noqa: E402
from coordinator.config import DP_TRAINING_DEFAULTS, FederationConfig  # noqa: E402
from coordinator.errors import FederationError  # noqa: E402
from coordinator.simulation import run_experiment, write_site_files  # noqa: E402
from models.datasets import SAMPLES, holdout_split  # noqa: E402
from models.nets import build_model  # noqa: E402
from models.scaler import FederatedScaler  # noqa: E402
from models.schema import validate_frame  # noqa: E402
from models.tasks import get_task  # noqa: E402
from models.training import TrainConfig, prepare, train_local  # noqa: E402
from privacy.dp_sgd import train_private  # noqa: E402

TASKS = ("predictive-maintenance", "injection-molding-quality")


def _site_mia(results: dict) -> dict[str, float]:
    """Each site's membership-inference ROC-AUC on the final model (`privacy.membership`), by site."""
    return {site: float(f["auc"]) for site, f in (results.get("membership_inference") or {}).items()}


def utility(args: argparse.Namespace) -> list[dict]:
    """One row per task and seed: centralised, federated, local-only and federated DP at each epsilon.

    The epsilons run in the order given, every seed of one before the next (so a run cut short
    still has the first epsilon on every seed); with ``--reuse`` a run whose results.json is
    already in ``--out`` is read back instead of trained again.
    """
    rows: dict[tuple[str, int], dict] = {}
    tasks = args.tasks

    def run(task: str, seed: int, name: str, **overrides) -> dict | None:
        spec, frame = get_task(task), dataset(task)
        out = args.out / f"{task}-seed{seed}-{name}"
        if (args.reuse or args.report_only) and (out / "results.json").exists():
            return json.loads((out / "results.json").read_text())
        if args.report_only:
            return None
        # Fresh simulated sites: their privacy ledgers would remember a previous benchmark's spend.
        shutil.rmtree(out, ignore_errors=True)
        site_files, dropped = write_site_files(frame, SAMPLES[task].split_by, out, spec=spec)
        config = FederationConfig.with_defaults(
            task=spec,
            num_rounds=args.rounds,
            out_dir=out,
            key_dir=args.out / "keys",
            seed=seed,
            node_wait_timeout=args.node_wait,
            **overrides,
        )
        start = time.perf_counter()
        for attempt in range(3):
            try:
                results = run_experiment(spec, site_files, config, dropped=dropped)
                break
            except (RuntimeError, FederationError) as exc:  # Ray or the sites time out on a loaded machine
                if attempt == 2 or not ("Simulation" in str(exc) or "did not answer" in str(exc)):
                    raise
                print(f"{task} seed {seed} {name}: the simulation engine failed ({exc}); again on fresh sites",
                      flush=True)  # fmt: skip
                shutil.rmtree(out, ignore_errors=True)
                site_files, dropped = write_site_files(frame, SAMPLES[task].split_by, out, spec=spec)
        print(f"{task} seed {seed} {name}: federated {results['federated']['global']['roc_auc']:.3f} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)  # fmt: skip
        return results

    for task in tasks:
        for seed in args.seeds:
            base = run(task, seed, "non-private")
            if base is None:
                continue
            rows[task, seed] = {
                "task": task,
                "seed": seed,
                "sites": len(base["sites"]),
                "centralized": base["centralized"]["roc_auc"],
                "federated": base["federated"]["global"]["roc_auc"],
                "local_mean": base["local_only_summary"]["mean"]["roc_auc"],
                "federated_mia": max(_site_mia(base).values(), default=float("nan")),
            }
    for epsilon in args.epsilons:
        for task in tasks:
            for seed in args.seeds:
                dp = run(task, seed, f"dp-eps{epsilon:g}", dp_epsilon=epsilon)
                if dp is None or (task, seed) not in rows:
                    continue
                row, e = rows[task, seed], f"dp{epsilon:g}"
                row[e] = dp["federated"]["global"]["roc_auc"]
                row[f"{e}_max_eps"] = max(s["epsilon"] for s in dp["privacy"]["sites"].values())
                # The same sites trained alone, without DP, with the DP run's model and settings.
                row["local_mean_dp_model"] = dp["local_only_summary"]["mean"]["roc_auc"]
                mia = _site_mia(dp)
                row[f"{e}_mia"] = max(mia.values(), default=float("nan"))
                row[f"{e}_mia_sites"] = len(mia)
    return list(rows.values())


BIG_MODEL = ("mlp", (256, 128))


def timing(reps: int = 7) -> dict[str, float]:
    """Median wall time of one round of local training on AI4I's largest site (type L)."""
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    spec = get_task("predictive-maintenance")
    frame = dataset("predictive-maintenance")
    site = validate_frame(frame[frame["Type"] == "L"], spec, source="L")
    train, _ = holdout_split(site, spec)
    scaler = FederatedScaler.fit_pooled(train, spec)
    x, y = prepare(train, spec, scaler)
    dp_cfg = TrainConfig(epochs=DP_TRAINING_DEFAULTS["local_epochs"], batch_size=DP_TRAINING_DEFAULTS["batch_size"],
                         lr=DP_TRAINING_DEFAULTS["lr"])  # fmt: skip
    plain_cfg = TrainConfig(epochs=2, batch_size=64, lr=3e-3)
    dp_model = (DP_TRAINING_DEFAULTS["model"], DP_TRAINING_DEFAULTS["hidden"])
    plain_model = (FederationConfig.model, FederationConfig.hidden)
    clip = DP_TRAINING_DEFAULTS["dp_max_grad_norm"]

    def dp(model: tuple[str, tuple[int, ...]], per_sample: str = "auto") -> None:
        net = build_model(scaler.n_inputs, name=model[0], hidden=model[1])
        train_private(net, x, y, spec=spec, scaler=scaler, config=dp_cfg, noise_multiplier=1.5, max_grad_norm=clip,
                      per_sample=per_sample)  # fmt: skip

    def plain(model: tuple[str, tuple[int, ...]], config: TrainConfig) -> None:
        net = build_model(scaler.n_inputs, name=model[0], hidden=model[1])
        train_local(net, x, y, spec=spec, scaler=scaler, config=config)

    jobs = {
        "dp": lambda: dp(dp_model),
        # The same DP-SGD with every per-sample gradient materialised by Opacus' GradSampleModule.
        "dp_ew": lambda: dp(dp_model, per_sample="ew"),
        "plain_same": lambda: plain(dp_model, dp_cfg),
        "plain_default": lambda: plain(plain_model, plain_cfg),
        # The same comparison on the non-private model, for the record.
        "dp_wide": lambda: dp(plain_model),
        "dp_wide_ew": lambda: dp(plain_model, per_sample="ew"),
        # A wider MLP, where materialising per-sample gradients costs most.
        "dp_big": lambda: dp(BIG_MODEL),
        "dp_big_ew": lambda: dp(BIG_MODEL, per_sample="ew"),
        "plain_big": lambda: plain(BIG_MODEL, dp_cfg),
        "plain_wide": lambda: plain(plain_model, dp_cfg),
    }
    for job in jobs.values():  # warm up imports and allocator once
        job()
    times: dict[str, list[float]] = {name: [] for name in jobs}
    for _ in range(reps):  # interleaved, so load on the machine hits all alike
        for name, job in jobs.items():
            start = time.perf_counter()
            job()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def _arch(model: str, hidden: tuple[int, ...]) -> str:
    if model == "ple":
        return "PLE + " + ("linear (additive model)" if not hidden else "MLP " + "-".join(str(h) for h in hidden))
    return "MLP " + "-".join(str(h) for h in hidden)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--epsilons", type=float, nargs="+", default=[3.0, 1.0, 8.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--reuse", action="store_true", help="read back runs already in --out instead of training")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--node-wait", type=float, default=600.0, help="seconds a run waits for its sites")
    parser.add_argument("--note", default="", help="a sentence on how this run was made, added to the section")
    parser.add_argument("--report-only", action="store_true", help="report the runs already in --out, train none")
    parser.add_argument("--out", type=Path, default=Path("bench-out/privacy"))
    args = parser.parse_args()

    table = pd.DataFrame(utility(args))
    cached = args.out / "timing.json"
    t: dict[str, float] | None = None
    if (args.reuse or args.report_only) and cached.exists():
        t = json.loads(cached.read_text())
    elif not args.report_only:
        t = timing()
        cached.write_text(json.dumps(t))
    eps_cols = [f"dp{e:g}" for e in sorted(args.epsilons)]
    lines = [
        "## Privacy: federated DP-SGD utility and cost (`bench/privacy.py`)",
        "",
        f"Measured in {'runs merged by --report-only' if args.report_only else 'one run'} on "
        f"{platform.node() or 'this machine'} ({os.cpu_count()} cores), "
        f"{time.strftime('%Y-%m-%d')}, seeds {args.seeds}: {args.rounds} rounds of FedAvg over the natural supplier "
        "splits, each task with the features of its spec (AI4I: the measured ones plus "
        f"{list(get_task('predictive-maintenance').derived_features)}, computed at each site). Non-private runs "
        f"(and the centralised reference) use the default local training "
        f"({_arch(FederationConfig.model, FederationConfig.hidden)}, batch 64, "
        "lr 0.003, 2 epochs, balanced class weights); DP runs use the DP defaults "
        f"({DP_TRAINING_DEFAULTS}) with noise calibrated per site so the "
        "whole run ends at or under the per-site epsilon with everything accounted: the DP data profile "
        "(`privacy.profile`, its share of the target alone), the DP evaluation of the last round "
        "(`privacy.evaluation`, its share) and DP-SGD calibrated to what they leave (RDP accountant, delta = "
        "0.1/records). A seed's noise comes from OS entropy (as at a real site), so reruns differ. ROC-AUC on the "
        "union of the sites' held-out splits, mean ± sd over seeds; in brackets the largest epsilon any site spent."
        + (f" {args.note}" if args.note else ""),
        "",
        "Local-only: each site trains alone without DP for rounds x local epochs and is scored on the same held-out "
        "rows, the mean over sites; once with the non-private defaults, once with the DP run's model and settings "
        "(the stronger of the two is the bar). MIA: the largest membership-inference ROC-AUC (`privacy.membership`, "
        "each site attacking the final model with its own training rows against its held-out rows) over every site "
        "and seed; 0.5 is chance.",
        "",
        "| task (sites) | centralised | federated | local-only mean: default / DP model | "
        + " | ".join(f"federated DP eps={c[2:]}" for c in eps_cols)
        + " | DP eps=3 / centralised | MIA max: federated / "
        + " / ".join(f"eps {c[2:]}" for c in eps_cols)
        + " |",
        "|---|---|---|---|" + "---|" * len(eps_cols) + "---|---|",
    ]
    verdicts = []
    targets = {"predictive-maintenance": ("AI4I", 0.95), "injection-molding-quality": ("KAMP", 0.85)}
    for task, group in table.groupby("task", sort=False):

        def ms(col: str, g: pd.DataFrame = group) -> str:
            if col not in g:
                return "n/a"
            done = int(g[col].notna().sum())
            part = f" [{done} of {len(g)} seeds]" if done < len(g) else ""
            return f"{g[col].mean():.3f} ± {g[col].std(ddof=0):.3f}{part}"

        def mx(col: str, g: pd.DataFrame = group) -> str:
            return f"{g[col].max():.3f}" if col in g else "n/a"

        # The ratio over the seeds that ran DP at epsilon 3 (a run cut short may lack some).
        ran = group[group["dp3"].notna()] if "dp3" in group else group.iloc[:0]
        ratio = ran["dp3"].mean() / ran["centralized"].mean() if len(ran) else float("nan")
        local_bar = max(group["local_mean"].mean(), group.get("local_mean_dp_model", group["local_mean"]).mean())
        cells = " | ".join(
            f"{ms(c)} ({group[c + '_max_eps'].max():.2f})" if c in group else "not run" for c in eps_cols
        )
        mias = " / ".join([mx("federated_mia"), *(mx(c + "_mia") for c in eps_cols)])
        locals_ = f"{ms('local_mean')} / {ms('local_mean_dp_model')}"
        seeds = ", ".join(str(int(x)) for x in group["seed"])
        head = f"{task} ({int(group['sites'].iloc[0])}; seeds {seeds})"
        lines.append(f"| {head} | {ms('centralized')} | {ms('federated')} | "
                     f"{locals_} | {cells} | {ratio:.3f} | {mias} |")  # fmt: skip
        name, bar = targets[task]
        dp3 = group["dp3"].mean() if "dp3" in group else float("nan")
        above = dp3 > local_bar
        seeds_above = ""
        if "dp3" in group and "local_mean_dp_model" in group:
            best_local = group[["local_mean", "local_mean_dp_model"]].max(axis=1)
            seeds_above = f" (above in {int((group['dp3'] > best_local).sum())} of {len(ran)} seeds)"
        verdicts.append(f"- {name}: federated DP at epsilon 3 / centralised = {ratio:.3f} (target >= {bar}): "
                        f"**{'met' if ratio >= bar else 'MISSED'}**; federated DP at epsilon 3 {dp3:.3f} vs the "
                        f"local-only mean {local_bar:.3f}: **{'above, met' if above else 'not above, MISSED'}**"
                        f"{seeds_above}")  # fmt: skip
        if "dp3_mia" in group:
            worst = group["dp3_mia"].max()
            verdicts.append(f"- {name}: membership-inference ROC-AUC at epsilon 3, every site and seed, at most "
                            f"{worst:.3f} (target <= 0.55): **{'met' if worst <= 0.55 else 'MISSED'}**")  # fmt: skip
    if t is None:
        lines += [
            "",
            "Targets:",
            *verdicts,
            "- DP-SGD time: not measured in this run (no timing.json in --out); see this section's history in git.",
        ]
    else:
        same = t["dp"] / t["plain_same"]
        deployed = t["dp"] / t["plain_default"]
        wide = t["dp_wide"] / t["plain_wide"]
        dp_model = _arch(DP_TRAINING_DEFAULTS["model"], DP_TRAINING_DEFAULTS["hidden"])
        plain_model = _arch(FederationConfig.model, FederationConfig.hidden)
        big_model = _arch(*BIG_MODEL)
        lines += [
            "",
            "Wall time of one round of local training on AI4I site L (4,200 rows), median of 7 interleaved runs, "
            "1 torch thread. Every DP-SGD job is Opacus' (`privacy/dp_sgd.py`): 'head' takes per-sample gradients "
            "from the output layer with Opacus' nn.Linear grad sampler (the model's only trained layer), 'ghost' is "
            "Opacus' ghost clipping, 'ew' materialises every per-sample gradient in Opacus' GradSampleModule "
            "(ExpandedWeights). The first of each is what a site runs for that model.",
            "",
            "| job | model | seconds | DP-SGD / this |",
            "|---|---|---|---|",
            f"| DP-SGD (batch {DP_TRAINING_DEFAULTS['batch_size']}, {DP_TRAINING_DEFAULTS['local_epochs']} "
            f"epochs), head | {dp_model} | {t['dp']:.3f} | 1.00 |",
            f"| the same DP-SGD, ew | {dp_model} | {t['dp_ew']:.3f} | {t['dp'] / t['dp_ew']:.2f} |",
            f"| non-private, same model, batch and epochs | {dp_model} | {t['plain_same']:.3f} | {same:.2f} |",
            f"| non-private, its own defaults (batch 64, 2 epochs) | {plain_model} | {t['plain_default']:.3f} | "
            f"{deployed:.2f} |",
            f"| DP-SGD as above on the non-private model, ghost | {plain_model} | {t['dp_wide']:.3f} | 1.00 |",
            f"| the same DP-SGD, ew | {plain_model} | {t['dp_wide_ew']:.3f} | {t['dp_wide'] / t['dp_wide_ew']:.2f} |",
            f"| non-private, that model, same batch and epochs | {plain_model} | {t['plain_wide']:.3f} | {wide:.2f} |",
            f"| DP-SGD as above on a wider MLP, ghost | {big_model} | {t['dp_big']:.3f} | 1.00 |",
            f"| the same DP-SGD, ew | {big_model} | {t['dp_big_ew']:.3f} | {t['dp_big'] / t['dp_big_ew']:.2f} |",
            f"| non-private, that model, same batch and epochs | {big_model} | {t['plain_big']:.3f} | "
            f"{t['dp_big'] / t['plain_big']:.2f} |",
            "",
            "Targets:",
            *verdicts,
            f"- DP-SGD time / non-private time with the same model, batch size and epochs = {same:.2f} (target <= 2): "
            f"**{'met' if same <= 2 else 'MISSED'}**; per round as each is configured = {deployed:.2f} "
            f"(**{'met' if deployed <= 2 else 'MISSED'}**); on the non-private model = {wide:.2f} "
            f"(**{'met' if wide <= 2 else 'MISSED'}**)",
            f"- Materialising every per-sample gradient ('ew') instead: {t['dp_ew'] / t['plain_same']:.2f} on the DP "
            f"model, {t['dp_wide_ew'] / t['plain_wide']:.2f} on the non-private model, "
            f"{t['dp_big_ew'] / t['plain_big']:.2f} on the wider MLP.",
        ]
    path = write_section("privacy", "\n".join(lines))
    print("\n".join(lines))
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
