"""Remaining-useful-life metrics, for regression tasks on sequences (see `models.sequence`).

- ``rmse`` (primary) and ``mae`` over every held-out window;
- ``phm08_score``: the asymmetric score of the PHM 2008 data challenge (Saxena et al., 2008),
  ``sum(exp(-d / 13) - 1 if d < 0 else exp(d / 10) - 1)`` with ``d = predicted - true`` life,
  summed over the last observed cycle of each held-out group: a late prediction (the engine
  fails before it was due) costs more than an early one. Lower is better; 0 is perfect;
- ``rmse_last``: the RMSE at the last observed cycle of each held-out group, the usual
  C-MAPSS test protocol (one prediction per engine).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["RUL_METRICS", "phm08_score", "rul_metrics"]

RUL_METRICS: tuple[str, ...] = ("rmse", "mae", "phm08_score", "rmse_last")


def phm08_score(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """The PHM 2008 score of these predictions (summed; late predictions cost more)."""
    d = np.asarray(y_pred, dtype=np.float64) - np.asarray(y_true, dtype=np.float64)
    return float(np.where(d < 0, np.expm1(-d / 13.0), np.expm1(d / 10.0)).sum())


def rul_metrics(y_true: np.ndarray, y_pred: np.ndarray, last: np.ndarray) -> dict[str, float]:
    """``phm08_score`` and ``rmse_last`` at the windows flagged `last` (NaN where there are none)."""
    last = np.asarray(last, dtype=bool)
    y_true = np.asarray(y_true, dtype=np.float64)[last]
    y_pred = np.asarray(y_pred, dtype=np.float64)[last]
    if not len(y_true):
        return {"phm08_score": math.nan, "rmse_last": math.nan}
    return {
        "phm08_score": phm08_score(y_true, y_pred),
        "rmse_last": float(np.sqrt(np.mean((y_true - y_pred) ** 2))),
    }
