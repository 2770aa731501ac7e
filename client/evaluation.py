"""A site's evaluation reply: its held-out histogram (`models.histogram`), noised and charged under DP.

The site scores the global model on its held-out rows and answers with the histogram, never
with metrics or per-row scores; the coordinator reads the metrics from it. Under DP (the
coordinator asks for an epsilon, or the site requires DP) the histogram is released through
`privacy.evaluation`: fewer bins (`DP_SCORE_BINS`), clipped regression residuals, Gaussian
noise, and one step charged to the site's ledger (refused with `BudgetExhausted` when the
budget cannot cover it). A repeated request of the same round gets the same release at no cost.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch

from client.site import SiteConfig
from models.histogram import DP_SCORE_BINS, SCORE_BINS, EvalHistogram, build_histogram, histogram_loss
from models.scaler import FederatedScaler
from models.tasks import TaskSpec
from models.training import last_windows, predict, prepare
from privacy.evaluation import RESIDUAL_CLIP_STDS, release_evaluation
from privacy.ledger import PrivacyLedger
from privacy.policy import DpRequest
from sangsaeng.protocol import ReplyKey

__all__ = ["evaluation_reply", "released_mechanism"]


def released_mechanism(entry: Mapping[str, Any], plan: Any, *, records: int, omit: tuple[str, ...]) -> str:
    """The JSON a site sends of a mechanism its ledger recorded: the entry (less `omit` and its time) and the plan.

    The plan's delta, accountant, budget and prior history, with the records it was calibrated
    for, are what the coordinator's report needs to recompute the site's epsilon.
    """
    kept = {k: v for k, v in entry.items() if k not in ("time", *omit)}
    return json.dumps(kept | {"delta": plan.delta, "accountant": plan.accountant, "budget_epsilon": plan.budget_epsilon,
                              "records": records, "prior_history": [list(p) for p in plan.prior]})  # fmt: skip


def evaluation_reply(
    site: SiteConfig,
    *,
    spec: TaskSpec,
    scaler: FederatedScaler,
    model: torch.nn.Module,
    train: pd.DataFrame,
    test: pd.DataFrame,
    request: DpRequest,
    server_round: int,
) -> tuple[float, int, dict[str, bool | bytes | float | int | str]]:
    """(loss, examples, metrics) for Flower's evaluate: the loss and row count read from the histogram.

    `train` and `test` are the site's validated frames (the training frame gives the ledger's
    record count, hence the delta the training uses).
    """
    x, y = prepare(test, spec, scaler)
    predictions = predict(model, x, spec=spec, scaler=scaler)
    ledger = PrivacyLedger(site.ledger_file, site.name)
    records = len(prepare(train, spec, scaler)[0]) if spec.sequence is not None else len(train)
    plan = ledger.plan_evaluation(site.privacy, request, records=records, server_round=server_round)
    last = last_windows(test, spec) if spec.kind == "regression" else None
    clip = RESIDUAL_CLIP_STDS * float(scaler.label_std) if plan is not None and spec.kind == "regression" else None
    hist = build_histogram(
        spec.kind, y, predictions, bins=SCORE_BINS if plan is None else DP_SCORE_BINS, classes=scaler.classes,
        clip=clip, last=last,
    )  # fmt: skip
    reply: dict[str, bool | bytes | float | int | str] = {ReplyKey.SITE: site.name}
    if plan is not None:
        entry = plan.released
        if entry is None:
            noisy, mechanism = release_evaluation(
                hist, noise_multiplier=plan.noise_multiplier, server_round=server_round, evaluations=plan.evaluations
            )
            entry = ledger.record_evaluation(plan, mechanism=mechanism.to_dict(), histogram=noisy.to_json())
        hist = EvalHistogram.from_json(str(entry["histogram"]))
        reply[ReplyKey.DP_EVALUATION] = released_mechanism(entry, plan, records=records, omit=("histogram", "run_id"))
        reply[ReplyKey.DP_RUN_RELEASES] = json.dumps(ledger.run_releases(plan.run_id))
    reply[ReplyKey.EVAL_HISTOGRAM] = hist.to_json()
    loss = histogram_loss(hist)
    return (float(loss) if np.isfinite(loss) else 0.0), max(1, int(round(hist.rows))), reply
