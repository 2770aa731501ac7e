"""DP tuning sweep: the in-process FedAvg loop used to choose `DP_TRAINING_DEFAULTS`.

    python bench/dp_tuning.py [--task predictive-maintenance] [--epsilon 3] [--seeds 0 1 2 3 4 5]
        [--set model=mlp hidden=16 lr=0.03 ...] [--write]

Each site trains with the product's own DP-SGD (`privacy.dp_sgd.train_private`, Opacus) from
the round's global weights. The noise is calibrated per site for the whole run, exactly as the
site ledger does it, and the updates are averaged weighted by rows, as FedAvg does. It is the
same computation a Sangsaeng simulation runs, without Flower's engine or the ledger files, so a
configuration takes seconds instead of a minute. The ROC-AUC is measured on the union of the
sites' held-out rows. `bench/privacy.py` measures the chosen defaults through the real runtime.
Prints the mean and each seed's value. With ``--write`` it measures, in one run and on the same
seeds, the current defaults against the previous ones and writes its section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
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
from coordinator.config import DP_TRAINING_DEFAULTS  # noqa: E402
from coordinator.simulation import profile_site  # noqa: E402
from models.datasets import SAMPLES, holdout_split, split_by  # noqa: E402
from models.metrics import compute_metrics  # noqa: E402
from models.nets import build_model, get_weights, set_weights  # noqa: E402
from models.scaler import FederatedScaler  # noqa: E402
from models.schema import validate_frame  # noqa: E402
from models.tasks import get_task  # noqa: E402
from models.training import TrainConfig, predict, prepare  # noqa: E402
from privacy.accounting import calibrate_noise  # noqa: E402
from privacy.dp_sgd import train_private  # noqa: E402


def federated_dp_auc(task: str, seed: int, epsilon: float, rounds: int, settings: dict) -> float:
    spec, frame = get_task(task), dataset(task)
    sites, _ = split_by(frame, SAMPLES[task].split_by, min_rows=20)
    splits = [holdout_split(validate_frame(part, spec, source=name), spec, seed=seed) for name, part in sites.items()]
    scaler = FederatedScaler.combine([profile_site(train, spec) for train, _ in splits], spec)
    data = [prepare(train, spec, scaler) for train, _ in splits]
    x_held, y_held = prepare(pd.concat([test for _, test in splits], ignore_index=True), spec, scaler)

    def fresh(seed: int = 0) -> torch.nn.Module:
        return build_model(scaler.n_inputs, name=settings["model"], hidden=settings["hidden"], seed=seed)

    batch, epochs = settings["batch_size"], settings["local_epochs"]
    noise = []
    for x, _ in data:  # as privacy.ledger.PrivacyLedger.plan_round: fixed for the whole run
        batches = max(1, math.ceil(len(x) / batch))
        noise.append(
            calibrate_noise(
                target_epsilon=epsilon, delta=0.1 / len(x), sample_rate=1 / batches, steps=epochs * batches * rounds
            )
        )
    weights = get_weights(fresh(seed))
    for rnd in range(1, rounds + 1):
        updates = []
        for (x, y), sigma in zip(data, noise, strict=True):
            model = fresh()
            set_weights(model, weights)
            config = TrainConfig(epochs=epochs, batch_size=batch, lr=settings["lr"], seed=seed * 7919 + rnd)
            train_private(
                model, x, y, spec=spec, scaler=scaler, config=config,
                noise_multiplier=sigma, max_grad_norm=settings["dp_max_grad_norm"],
            )  # fmt: skip
            updates.append((get_weights(model), len(x)))
        total = sum(n for _, n in updates)
        weights = [sum(w[i] * n / total for w, n in updates) for i in range(len(weights))]
    model = fresh()
    set_weights(model, weights)
    return compute_metrics(spec.kind, y_held, predict(model, x_held, spec=spec, scaler=scaler))["roc_auc"]


# The DP defaults before the piecewise-linear additive model (session 7): the best MLP found.
PREVIOUS_DEFAULTS = {**DP_TRAINING_DEFAULTS, "model": "mlp", "hidden": (16,), "lr": 0.03, "local_epochs": 2,
                     "dp_max_grad_norm": 50.0}  # fmt: skip


def _sweep(args: argparse.Namespace, settings: dict) -> list[float]:
    aucs = [federated_dp_auc(args.task, seed, args.epsilon, args.rounds, settings) for seed in args.seeds]
    print(f"{statistics.mean(aucs):.4f} {[round(a, 3) for a in aucs]} epsilon={args.epsilon:g} {settings}", flush=True)
    return aucs


def _write(args: argparse.Namespace, rows: dict[str, tuple[dict, list[float]]]) -> None:
    lines = [
        "## DP training defaults, many seeds (`bench/dp_tuning.py --write`)",
        "",
        f"Measured in one run on {platform.node() or 'this machine'} ({os.cpu_count()} cores), "
        f"{time.strftime('%Y-%m-%d')}: {args.task}, per-site epsilon {args.epsilon:g}, {args.rounds} rounds of "
        f"FedAvg in-process (the product's DP-SGD and noise calibration, no Flower engine), seeds {args.seeds}. "
        "ROC-AUC on the union of the sites' held-out rows.",
        "",
        "| DP training settings | mean | min | max | per seed |",
        "|---|---|---|---|---|",
    ]
    for name, (settings, aucs) in rows.items():
        shown = {k: v for k, v in settings.items() if k != "batch_size"}
        lines.append(f"| {name}: {shown} | {statistics.mean(aucs):.3f} | {min(aucs):.3f} | {max(aucs):.3f} | "
                     f"{', '.join(f'{a:.3f}' for a in aucs)} |")  # fmt: skip
    print(f"written to {write_section('dp-tuning', chr(10).join(lines))}")


def _setting(text: str) -> tuple[str, object]:
    key, _, value = text.partition("=")
    if key not in DP_TRAINING_DEFAULTS:
        raise argparse.ArgumentTypeError(f"unknown setting '{key}' (known: {sorted(DP_TRAINING_DEFAULTS)})")
    if key == "hidden":
        return key, tuple(int(h) for h in value.split(",") if h)
    return key, type(DP_TRAINING_DEFAULTS[key])(value)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="predictive-maintenance", choices=sorted(SAMPLES))
    parser.add_argument("--epsilon", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    parser.add_argument("--set", type=_setting, nargs="*", default=[], help="override a DP default, e.g. lr=0.1")
    parser.add_argument("--write", action="store_true", help="current vs previous defaults into BENCHMARKS.md")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    settings = {**DP_TRAINING_DEFAULTS, **dict(args.set)}
    if not args.write:
        _sweep(args, settings)
        return 0
    rows = {"current defaults": settings, "previous defaults": PREVIOUS_DEFAULTS}
    _write(args, {name: (s, _sweep(args, s)) for name, s in rows.items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
