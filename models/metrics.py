"""Metrics per task kind: `roc_auc`, `pr_auc`, `f1` for binary; `rmse`, `mae` for regression;
`macro_f1`, `accuracy`, `balanced_accuracy`, `macro_roc_auc` and `recall_<class>` for multiclass."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    f1_score,
    mean_absolute_error,
    roc_auc_score,
)

__all__ = ["compute_metrics", "mean_of"]


def compute_metrics(
    kind: str, y_true: np.ndarray, y_pred: np.ndarray, *, classes: Sequence[str] = ()
) -> dict[str, float]:
    """Metrics of predictions (probabilities for binary, values for regression).

    Multiclass: `y_true` holds class indices, `y_pred` (rows, classes) probabilities and
    `classes` the class names. A metric that is undefined on these rows (ROC-AUC with one
    class present, the recall of a class with no rows) is NaN.
    """
    if kind == "multiclass":
        return _multiclass(np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.float64), classes)
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


def _multiclass(y_true: np.ndarray, proba: np.ndarray, classes: Sequence[str]) -> dict[str, float]:
    names = list(classes) or [str(i) for i in range(proba.shape[1])]
    y_pred = proba.argmax(axis=1)
    present = np.unique(y_true)
    # Macro averages over the classes in these rows or predicted for them (scikit-learn's default):
    # a site that lacks a class is not scored on it.
    with warnings.catch_warnings():
        # A class predicted that these rows lack is normal at a non-IID site, not worth a warning.
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        balanced = float(balanced_accuracy_score(y_true, y_pred))
    out = {
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0.0)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": balanced,
    }
    # One-vs-rest ROC-AUC of each class that is present but not alone, then their mean.
    aucs = [float(roc_auc_score(y_true == k, proba[:, k])) for k in present] if len(present) > 1 else []
    out["macro_roc_auc"] = float(np.mean(aucs)) if aucs else math.nan
    for k, name in enumerate(names):
        rows = y_true == k
        out[f"recall_{name}"] = float((y_pred[rows] == k).mean()) if rows.any() else math.nan
    return out


def mean_of(rows: list[dict[str, float]]) -> dict[str, float]:
    """Per-metric mean over several metric dicts, ignoring NaN."""
    keys = {k for row in rows for k in row}
    out = {}
    for key in sorted(keys):
        values = [row[key] for row in rows if key in row and not math.isnan(row[key])]
        out[key] = float(np.mean(values)) if values else math.nan
    return out
