"""The site's "your line alone": a model trained on its own rows only, scored on its own held-out rows.

After a run's last round the coordinator asks each site once (``ConfigKey.PHASE`` =
``PHASE_LOCAL_ONLY``) with the run's initial model (same architecture, same seed) and the run's
training settings. The site trains that model on its training split alone for the run's whole
budget (``epochs x rounds`` epochs, plain local training) and answers with the held-out
histogram of the result (`models.histogram`), the same kind of reply as an evaluation: no rows,
no per-row scores. The coordinator reads the site's primary metric from it and puts it next to
the federated model's metric on the same rows ("your line alone / with the network").

Under DP (the run asks for an epsilon, or the site requires DP) the local-only model is trained
like the run's: DP-SGD at the run's noise multiplier and sample rate for the run's planned steps,
and its histogram is released like an evaluation (`privacy.evaluation`, at the noise of the run's
evaluations). Both are charged to the site's ledger (`PrivacyLedger.plan_local_only`): on top of
the run, so only a site whose own budget (``max-epsilon``) leaves room for about the run's cost
again can afford it; otherwise it refuses with `BudgetExhausted`, naming the numbers. The reply
then carries both releases (``ReplyKey.DP_LOCAL_ONLY``) for the signed report. A repeated
request gets the same release at no cost.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import torch

from client.site import SiteConfig
from models.histogram import DP_SCORE_BINS, SCORE_BINS, EvalHistogram, build_histogram, histogram_loss
from models.scaler import FederatedScaler
from models.tasks import TaskSpec
from models.training import TrainConfig, last_windows, predict, prepare, train_local
from privacy.dp_sgd import train_private
from privacy.evaluation import RESIDUAL_CLIP_STDS, release_evaluation
from privacy.ledger import PrivacyLedger
from privacy.policy import DpRequest
from sangsaeng.protocol import ReplyKey

__all__ = ["local_only_config", "local_only_reply"]


def local_only_config(train: TrainConfig, *, num_rounds: int) -> TrainConfig:
    """The run's training settings as one stretch: ``epochs x rounds`` epochs, no proximal term.

    Its seed is the fit's seed of round 0 (fit rounds start at 1), so reproducible and its own.
    """
    return TrainConfig(
        epochs=train.epochs * max(1, num_rounds), batch_size=train.batch_size, lr=train.lr,
        weight_decay=train.weight_decay, proximal_mu=0.0, seed=train.seed, class_weight=train.class_weight,
    )  # fmt: skip


def local_only_reply(
    site: SiteConfig,
    *,
    spec: TaskSpec,
    scaler: FederatedScaler,
    model: torch.nn.Module,
    train: pd.DataFrame,
    test: pd.DataFrame,
    config: TrainConfig,
    request: DpRequest,
) -> tuple[float, int, dict[str, bool | bytes | float | int | str]]:
    """(loss, examples, metrics) for Flower's evaluate: `model` trained on `train` alone, its `test` histogram.

    `model` holds the run's initial weights; it is trained in place. Under DP both steps are
    charged (raises `BudgetExhausted` when the site's budget cannot cover them).
    """
    x, y = prepare(train, spec, scaler)
    ledger = PrivacyLedger(site.ledger_file, site.name)
    plan = ledger.plan_local_only(site.privacy, request, records=len(x),
                                  max_grad_norm=site.privacy.max_grad_norm or request.max_grad_norm)  # fmt: skip
    reply: dict[str, bool | bytes | float | int | str] = {ReplyKey.SITE: site.name}
    if plan is None:
        train_local(model, x, y, spec=spec, scaler=scaler, config=config)
        hist = _histogram(model, spec, scaler, test, bins=SCORE_BINS, clip=None)
    else:
        if plan.released is None:
            _, steps = train_private(
                model, x, y, spec=spec, scaler=scaler, config=config, noise_multiplier=plan.noise_multiplier,
                max_grad_norm=plan.max_grad_norm,
            )  # fmt: skip
            clip = RESIDUAL_CLIP_STDS * float(scaler.label_std) if spec.kind == "regression" else None
            exact = _histogram(model, spec, scaler, test, bins=DP_SCORE_BINS, clip=clip)
            noisy, mechanism = release_evaluation(
                exact, noise_multiplier=plan.evaluation_noise_multiplier, server_round=plan.server_round,
                evaluations=plan.evaluations,
            )  # fmt: skip
            training, evaluation = ledger.record_local_only(plan, steps=steps, mechanism=mechanism.to_dict(),
                                                            histogram=noisy.to_json())  # fmt: skip
        else:
            training, evaluation = plan.released
        hist = EvalHistogram.from_json(str(evaluation["histogram"]))
        reply[ReplyKey.DP_LOCAL_ONLY] = json.dumps({
            "training": {k: v for k, v in training.items() if k not in ("time", "run_id")},
            "evaluation": {k: v for k, v in evaluation.items() if k not in ("histogram", "time", "run_id")},
            "delta": plan.delta, "accountant": plan.accountant, "budget_epsilon": plan.budget_epsilon,
            "records": len(x), "max_grad_norm": plan.max_grad_norm, "prior_history": [list(p) for p in plan.prior],
        })  # fmt: skip
    reply[ReplyKey.EVAL_HISTOGRAM] = hist.to_json()
    loss = histogram_loss(hist)
    return (float(loss) if np.isfinite(loss) else 0.0), max(1, int(round(hist.rows))), reply


def _histogram(
    model: torch.nn.Module, spec: TaskSpec, scaler: FederatedScaler, test: pd.DataFrame, *, bins: int,
    clip: float | None,
) -> EvalHistogram:  # fmt: skip
    x, y = prepare(test, spec, scaler)
    last = last_windows(test, spec) if spec.kind == "regression" else None
    predictions = predict(model, x, spec=spec, scaler=scaler)
    return build_histogram(spec.kind, y, predictions, bins=bins, classes=scaler.classes, clip=clip, last=last)
