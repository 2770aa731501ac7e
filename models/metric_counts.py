"""A task's primary metric from aggregate counts that sites can share: no per-row data leaves a site.

A site turns its held-out predictions into `metric_counts` (histograms, sums, a confusion
matrix); the coordinator adds the sites' counts up and reads the pooled metric off the sum
(`pooled_metric`). Used to score many candidate models on data only the sites hold (the
contribution scores, `coordinator.contribution`).

- ``roc_auc`` (binary): histograms of the predicted log-odds of positives and negatives in
  `AUC_BINS` bins over [-`LOGIT_RANGE`, `LOGIT_RANGE`]; the AUC of the binned scores (ties
  within a bin count one half) is within about a bin's share of the exact one.
- ``rmse`` / ``mae`` (regression): sum of squared / absolute errors and the row count (exact).
- ``macro_f1`` / ``accuracy`` (multiclass): the confusion matrix (exact).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from models.errors import TaskSpecError

__all__ = ["AUC_BINS", "LOGIT_RANGE", "POOLABLE", "metric_counts", "pooled_metric"]

AUC_BINS = 400
LOGIT_RANGE = 12.0  # log-odds beyond +-12 (probability 6e-6 from 0 or 1) share the end bins
POOLABLE: frozenset[str] = frozenset({"roc_auc", "rmse", "mae", "macro_f1", "accuracy"})
"""The metrics `pooled_metric` can compute from counts."""


def _check(metric: str) -> None:
    if metric not in POOLABLE:
        raise TaskSpecError(f"metric '{metric}' cannot be pooled from site counts (poolable: {sorted(POOLABLE)})")


def metric_counts(metric: str, y_true: np.ndarray, predictions: np.ndarray, *, classes: int = 0) -> np.ndarray:
    """The counts from which `pooled_metric` computes `metric` of these predictions, as one flat array.

    `predictions` are what `models.training.predict` returns: probabilities (binary),
    (rows, classes) probabilities (multiclass, with `classes` columns), label units (regression).
    """
    _check(metric)
    if metric == "roc_auc":
        p = np.clip(np.asarray(predictions, dtype=np.float64).ravel(), 1e-300, 1 - 1e-16)
        logit = np.clip(np.log(p) - np.log1p(-p), -LOGIT_RANGE, LOGIT_RANGE)
        bins = np.minimum(((logit + LOGIT_RANGE) / (2 * LOGIT_RANGE) * AUC_BINS).astype(np.int64), AUC_BINS - 1)
        positive = np.asarray(y_true).ravel() > 0.5
        pos = np.bincount(bins[positive], minlength=AUC_BINS)
        neg = np.bincount(bins[~positive], minlength=AUC_BINS)
        return np.concatenate([pos, neg]).astype(np.float64)
    if metric in ("rmse", "mae"):
        error = np.asarray(predictions, dtype=np.float64).ravel() - np.asarray(y_true, dtype=np.float64).ravel()
        return np.array([float(np.sum(error**2)), float(np.sum(np.abs(error))), float(error.size)])
    truth = np.asarray(y_true, dtype=np.int64).ravel()
    predicted = np.asarray(predictions, dtype=np.float64).argmax(axis=1)
    confusion = np.zeros((classes, classes))
    np.add.at(confusion, (truth, predicted), 1.0)
    return confusion.ravel()


def pooled_metric(metric: str, counts: Sequence[np.ndarray]) -> float:
    """`metric` from the sum of several sites' `metric_counts` (NaN where undefined, e.g. AUC with one class)."""
    _check(metric)
    if not counts:
        return float("nan")
    total = np.sum(np.stack([np.asarray(c, dtype=np.float64) for c in counts]), axis=0)
    if metric == "roc_auc":
        pos, neg = total[:AUC_BINS], total[AUC_BINS:]
        if pos.sum() == 0 or neg.sum() == 0:
            return float("nan")
        below = np.cumsum(neg) - neg  # negatives in lower bins than each positive's
        return float(np.sum(pos * (below + 0.5 * neg)) / (pos.sum() * neg.sum()))
    if metric in ("rmse", "mae"):
        if total[2] <= 0:
            return float("nan")
        return float(np.sqrt(total[0] / total[2])) if metric == "rmse" else float(total[1] / total[2])
    k = int(round(np.sqrt(total.size)))
    confusion = total.reshape(k, k)
    if confusion.sum() == 0:
        return float("nan")
    if metric == "accuracy":
        return float(np.trace(confusion) / confusion.sum())
    # Macro F1 over the classes present in the rows or predicted for them, as scikit-learn's default.
    tp = np.diag(confusion)
    actual, predicted = confusion.sum(axis=1), confusion.sum(axis=0)
    seen = (actual + predicted) > 0
    f1 = np.where(seen, 2 * tp / np.maximum(actual + predicted, 1e-300), 0.0)
    return float(f1[seen].mean())
