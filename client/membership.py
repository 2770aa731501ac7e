"""The site's side of the membership-inference check: per-row losses of the final model, on-site.

The coordinator asks once, after the last round (`sangsaeng.protocol.PHASE_MEMBERSHIP`);
the site computes the loss of every training and held-out row under the final model, attacks
them with `privacy.membership` and keeps the figure in its ledger. Only the figure leaves.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn

from models.scaler import FederatedScaler
from models.tasks import TaskSpec
from models.training import prepare, targets_of
from privacy.membership import MAX_ROWS, MembershipResult, membership_inference

__all__ = ["per_row_losses", "measure_membership"]

_BATCH = 1024  # rows per forward pass: bounds memory on image tasks


@torch.no_grad()
def per_row_losses(
    model: nn.Module, x: np.ndarray, y: np.ndarray, *, spec: TaskSpec, scaler: FederatedScaler
) -> np.ndarray:
    """Each row's own loss under `model`: unweighted BCE, cross-entropy or squared error (scaled target).

    Unweighted: the class weighting of training is the same for a member and a non-member of
    one label, and the calibrated attack compares rows of one label.
    """
    model.eval()
    targets = targets_of(y, spec, scaler)
    losses = []
    for start in range(0, len(x), _BATCH):
        # In float64: a confident model's float32 losses underflow to exactly 0 for most rows,
        # and tied zeros hide the members among them.
        out = model(torch.as_tensor(x[start : start + _BATCH], dtype=torch.float32)).double()
        target = targets[start : start + _BATCH]
        if spec.kind == "multiclass":
            loss = nn.functional.cross_entropy(out, target, reduction="none")
        elif spec.kind == "binary":
            loss = nn.functional.binary_cross_entropy_with_logits(out, target.double(), reduction="none")
        else:
            loss = (out - target.double()) ** 2
        losses.append(loss.reshape(len(out), -1).mean(dim=1).numpy())
    return np.concatenate(losses) if losses else np.zeros(0)


def measure_membership(
    model: nn.Module,
    train: pd.DataFrame,
    held_out: pd.DataFrame,
    *,
    spec: TaskSpec,
    scaler: FederatedScaler,
    seed: int = 0,
    max_rows: int = MAX_ROWS,
) -> MembershipResult:
    """Attack `model` with the site's training rows against its held-out rows (equal-size samples)."""
    x_train, y_train = prepare(train, spec, scaler)
    x_test, y_test = prepare(held_out, spec, scaler)
    # Sample first, so a large site runs forward passes over the attacked rows only.
    rng = np.random.default_rng(seed)
    n = min(len(x_train), len(x_test), max_rows)
    if len(x_train) > n:
        keep = np.sort(rng.choice(len(x_train), size=n, replace=False))
        x_train, y_train = x_train[keep], y_train[keep]
    if len(x_test) > n:
        keep = np.sort(rng.choice(len(x_test), size=n, replace=False))
        x_test, y_test = x_test[keep], y_test[keep]
    labelled = spec.kind in ("binary", "multiclass")
    return membership_inference(
        per_row_losses(model, x_train, y_train, spec=spec, scaler=scaler),
        per_row_losses(model, x_test, y_test, spec=spec, scaler=scaler),
        member_labels=y_train if labelled else None,
        nonmember_labels=y_test if labelled else None,
        max_rows=max_rows,
        seed=seed,
    )
