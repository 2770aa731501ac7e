"""Metrics per task kind: `roc_auc`, `pr_auc`, `f1` for binary; `rmse`, `mae` for regression."""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import average_precision_score, f1_score, mean_absolute_error, roc_auc_score

__all__ = ["compute_metrics", "mean_of"]


def compute_metrics(kind: str, y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Metrics of predictions (probabilities for binary, values for regression).

    A metric that is undefined on these rows (ROC-AUC with one class present) is NaN.
    """
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    if kind == "binary":
        both = len(np.unique(y_true)) == 2
        return {
            "roc_auc": float(roc_auc_score(y_true, y_pred)) if both else math.nan,
            "pr_auc": float(average_precision_score(y_true, y_pred)) if both else math.nan,
            "f1": float(f1_score(y_true, y_pred >= 0.5, zero_division=0.0)),
        }
    if kind == "regression":
        return {
            "rmse": float(np.sqrt(np.mean((y_true - y_pred) ** 2))),
            "mae": float(mean_absolute_error(y_true, y_pred)),
        }
    raise ValueError(f"unknown task kind '{kind}'")


def mean_of(rows: list[dict[str, float]]) -> dict[str, float]:
    """Per-metric mean over several metric dicts, ignoring NaN."""
    keys = {k for row in rows for k in row}
    out = {}
    for key in sorted(keys):
        values = [row[key] for row in rows if key in row and not math.isnan(row[key])]
        out[key] = float(np.mean(values)) if values else math.nan
    return out
