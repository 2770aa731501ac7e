"""What DP evaluation costs in accuracy: metrics and the operating point from the sites' noisy histograms.

    python bench/dp_evaluation.py [--task predictive-maintenance] [--epsilon 3] [--draws 20] [--evaluations 1]

One model is trained on the pooled training rows (plain PyTorch, a few seconds), then each site
scores its own held-out rows and builds its evaluation histogram (`models.histogram`) exactly as
a site does in a run. The exact histograms (`SCORE_BINS` logit bins, no DP) are compared with `--draws`
noisy releases (`DP_SCORE_BINS` bins, Gaussian noise at the noise multiplier a site uses for `--evaluations`
releases at target `--epsilon`, `privacy.evaluation`): ROC-AUC, PR-AUC of the union, the
threshold at 95 % recall and its inspection workload, and each site's own ROC-AUC. Prints the
exact figures, then the median and the 10-90 % range of the noisy ones. Writes nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import dataset  # noqa: E402  (sets up the environment first)
from models.datasets import SAMPLES, holdout_split, split_by  # noqa: E402
from models.histogram import DP_SCORE_BINS, SCORE_BINS, build_histogram, histogram_metrics, merge, operating_point  # noqa: E402
from models.nets import build_model  # noqa: E402
from models.scaler import FederatedScaler  # noqa: E402
from models.schema import validate_frame  # noqa: E402
from models.tasks import get_task  # noqa: E402
from models.training import TrainConfig, predict, prepare, train_local  # noqa: E402
from privacy.evaluation import evaluation_noise_multiplier, release_evaluation  # noqa: E402


def main() -> None:
    """Run the comparison and print it."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", default="predictive-maintenance")
    parser.add_argument("--epsilon", type=float, default=3.0)
    parser.add_argument("--draws", type=int, default=20)
    parser.add_argument("--evaluations", type=int, default=1)
    args = parser.parse_args()
    spec = get_task(args.task)
    frame = validate_frame(dataset(args.task), spec, source=args.task)
    sites, _ = split_by(frame, SAMPLES[args.task].split_by)
    splits = {name: holdout_split(rows, spec, seed=0) for name, rows in sites.items()}
    train = pd.concat([tr for tr, _ in splits.values()], ignore_index=True)
    scaler = FederatedScaler.fit_pooled(train, spec)
    x, y = prepare(train, spec, scaler)
    net = build_model(scaler.n_inputs, hidden=(64, 32), seed=0)
    train_local(net, x, y, spec=spec, scaler=scaler, config=TrainConfig(epochs=10, batch_size=64))
    exact, held = {}, {}
    for name, (tr, test) in splits.items():
        xt, yt = prepare(test, spec, scaler)
        held[name] = (yt, predict(net, xt, spec=spec, scaler=scaler))
        exact[name] = build_histogram("binary", *held[name])
        delta = 0.1 / len(tr)
    union = merge(list(exact.values()))
    figures = histogram_metrics(union)
    point = operating_point(union)
    assert point is not None
    print(f"{args.task}: {len(sites)} sites, {round(union.rows)} held-out rows, "
          f"{int(union.blocks['positives'].sum())} defects")  # fmt: skip
    print(f"exact ({SCORE_BINS} bins): roc_auc {figures['roc_auc']:.3f} pr_auc {figures['pr_auc']:.3f}; "
          "at 95 % recall: "
          f"threshold {point['threshold']:.3f}, recall {point['recall']:.3f}, workload {point['workload']:.3f}; "
          + ", ".join(f"{n} roc_auc {histogram_metrics(h)['roc_auc']:.3f}" for n, h in exact.items()))  # fmt: skip
    sigma = evaluation_noise_multiplier(target_epsilon=args.epsilon, delta=delta, evaluations=args.evaluations,
                                        accountant="rdp")  # fmt: skip
    rng = np.random.default_rng(0)
    rows: dict[str, list[float]] = {}
    for _ in range(args.draws):
        noisy = {
            n: release_evaluation(build_histogram("binary", *held[n], bins=DP_SCORE_BINS), noise_multiplier=sigma,
                                  server_round=1, evaluations=args.evaluations, rng=rng)[0]
            for n in held
        }  # fmt: skip
        merged = merge(list(noisy.values()))
        m, p = histogram_metrics(merged), operating_point(merged)
        values = {"roc_auc": m["roc_auc"], "pr_auc": m["pr_auc"]}
        if p is not None:
            values |= {"threshold": p["threshold"], "workload": p["workload"]}
            # The workload the noisy threshold really costs, and the recall it really buys, on the exact rows.
            flagged = np.concatenate([s >= p["threshold"] for _, s in held.values()])
            truth = np.concatenate([t for t, _ in held.values()]) > 0.5
            values |= {"true_workload": float(flagged.mean()), "true_recall": float(flagged[truth].mean())}
        values |= {f"{n} roc_auc": histogram_metrics(h)["roc_auc"] for n, h in noisy.items()}
        for k, v in values.items():
            rows.setdefault(k, []).append(v)
    print(f"DP ({DP_SCORE_BINS} bins, noise multiplier {sigma:.2f} per site = {args.evaluations} evaluation(s) "
          "at 10 % of "
          f"epsilon {args.epsilon:g}), {args.draws} draws: median [10 %, 90 %]")  # fmt: skip
    for k, v in rows.items():
        q = np.nanpercentile(v, [50, 10, 90])
        print(f"  {k:>16}: {q[0]:.3f} [{q[1]:.3f}, {q[2]:.3f}]")


if __name__ == "__main__":
    main()
