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

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import dataset  # noqa: E402  (sets up the environment first)
from bench._report import write_section  # noqa: E402
from coordinator.config import DP_TRAINING_DEFAULTS  # noqa: E402
from models.datasets import SAMPLES, holdout_split, split_by  # noqa: E402
from models.metrics import compute_metrics  # noqa: E402
from models.nets import build_model, get_weights, set_weights  # noqa: E402
from models.scaler import FederatedScaler  # noqa: E402
from models.schema import validate_frame  # noqa: E402
from models.tasks import get_task  # noqa: E402
from models.training import TrainConfig, predict, prepare  # noqa: E402
from privacy.accounting import calibrate_noise  # noqa: E402
from privacy.dp_sgd import train_private  # noqa: E402
from privacy.evaluation import evaluation_noise_multiplier, evaluation_rounds  # noqa: E402
from privacy.profile import profile_noise_multiplier, release_profile  # noqa: E402


def dp_profile_scaler(splits: list[tuple[pd.DataFrame, pd.DataFrame]], spec, epsilon: float, seed: int):
    """The federation's scaler from each site's DP profile, released at the product's noise (`privacy.profile`)."""
    rng = np.random.default_rng([seed, 41])
    profiles = []
    for train, _ in splits:  # every task kind releases its profile under DP
        noise = profile_noise_multiplier(target_epsilon=epsilon, delta=0.1 / len(train))
        profiles.append(release_profile(train, spec, noise_multiplier=noise, rng=rng)[0])
    return FederatedScaler.combine(profiles, spec)


def site_noise(
    records: int, *, spec, epsilon: float, rounds: int, settings: dict, charged: bool = True
) -> tuple[float, int]:
    """The DP-SGD noise multiplier a site's ledger calibrates for the run, and its batches per epoch.

    As `privacy.ledger.PrivacyLedger.plan_round`: Poisson sample rate 1 / batches, every step of
    the run at one noise, with the DP profile (when the task releases one) already in the history
    and the run's planned evaluation releases reserved (``charged=False``: DP-SGD alone, as this
    sweep calibrated before those releases were charged).
    """
    delta = 0.1 / records
    batches = max(1, math.ceil(records / settings["batch_size"]))
    prior: list[tuple[float, float, int]] = []
    if charged:  # every task kind releases its profile under DP
        prior.append((profile_noise_multiplier(target_epsilon=epsilon, delta=delta), 1.0, 1))
    evaluations = len(evaluation_rounds(rounds, settings["evaluate_every"]))
    if charged:
        eval_noise = evaluation_noise_multiplier(target_epsilon=epsilon, delta=delta, evaluations=evaluations,
                                                 accountant="rdp")  # fmt: skip
        prior.append((eval_noise, 1.0, evaluations))
    noise = calibrate_noise(target_epsilon=epsilon, delta=delta, sample_rate=1 / batches,
                            steps=settings["local_epochs"] * batches * rounds, prior=prior)  # fmt: skip
    return noise, batches


def federated_dp_auc(task: str, seed: int, epsilon: float, rounds: int, settings: dict) -> float:
    """ROC-AUC on the union of held-out rows of `rounds` of federated DP-SGD with `settings`, in-process."""
    spec, frame = get_task(task), dataset(task)
    sites, _ = split_by(frame, SAMPLES[task].split_by, min_rows=20)
    splits = [holdout_split(validate_frame(part, spec, source=name), spec, seed=seed) for name, part in sites.items()]
    scaler = dp_profile_scaler(splits, spec, epsilon, seed)
    data = [prepare(train, spec, scaler) for train, _ in splits]
    x_held, y_held = prepare(pd.concat([test for _, test in splits], ignore_index=True), spec, scaler)

    def fresh(seed: int = 0) -> torch.nn.Module:
        return build_model(scaler.n_inputs, name=settings["model"], hidden=settings["hidden"], seed=seed)

    batch, epochs = settings["batch_size"], settings["local_epochs"]
    noise = [site_noise(len(x), spec=spec, epsilon=epsilon, rounds=rounds, settings=settings)[0] for x, _ in data]
    weights = get_weights(fresh(seed))
    server = ServerOptimiser(settings.get("strategy", "fedavg"), settings.get("server_lr", 1.0), weights)
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
        mean = [sum(w[i] * n / total for w, n in updates) for i in range(len(weights))]
        weights = server.step(weights, mean)
    model = fresh()
    set_weights(model, weights)
    return compute_metrics(spec.kind, y_held, predict(model, x_held, spec=spec, scaler=scaler))["roc_auc"]


class ServerOptimiser:
    """The server's step from the mean update: FedAvg (take it), server momentum, or FedAdam as Flower's."""

    def __init__(self, strategy: str, server_lr: float, weights: list[np.ndarray]):
        self.strategy, self.lr = strategy, server_lr
        self.m = [np.zeros_like(w) for w in weights]
        self.v = [np.zeros_like(w) for w in weights]

    def step(self, weights: list[np.ndarray], mean: list[np.ndarray]) -> list[np.ndarray]:
        """The next global weights."""
        delta = [m - w for m, w in zip(mean, weights, strict=True)]
        if self.strategy == "fedavg":
            return mean
        if self.strategy == "fedavgm":  # server momentum 0.9 (Hsu et al. 2019)
            self.m = [0.9 * m + d for m, d in zip(self.m, delta, strict=True)]
            return [w + self.lr * m for w, m in zip(weights, self.m, strict=True)]
        # fedadam, as flwr.server.strategy.FedAdam (beta_1 0.9, beta_2 0.99, tau 1e-3, no bias correction)
        self.m = [0.9 * m + 0.1 * d for m, d in zip(self.m, delta, strict=True)]
        self.v = [0.99 * v + 0.01 * d * d for v, d in zip(self.v, delta, strict=True)]
        return [w + self.lr * m / (np.sqrt(v) + 1e-3) for w, m, v in zip(weights, self.m, self.v, strict=True)]


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


# The server's step (`ServerOptimiser`) on top of the DP training defaults: FedAvg unless set.
SERVER_SETTINGS: dict[str, object] = {"strategy": "fedavg", "server_lr": 1.0}


def _setting(text: str) -> tuple[str, object]:
    key, _, value = text.partition("=")
    known = {**SERVER_SETTINGS, **DP_TRAINING_DEFAULTS}
    if key not in known:
        raise argparse.ArgumentTypeError(f"unknown setting '{key}' (known: {sorted(known)})")
    if key == "hidden":
        return key, tuple(int(h) for h in value.split(",") if h)
    return key, type(known[key])(value)


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
    settings = {**DP_TRAINING_DEFAULTS, **SERVER_SETTINGS, **dict(args.set)}
    if not args.write:
        _sweep(args, settings)
        return 0
    rows = {"current defaults": settings, "previous defaults": PREVIOUS_DEFAULTS}
    _write(args, {name: (s, _sweep(args, s)) for name, s in rows.items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
