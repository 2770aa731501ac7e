"""The site's "your line alone": a model trained on its own rows only, scored on its own held-out rows.

After a run's last round the coordinator asks each site once (``ConfigKey.PHASE`` =
``PHASE_LOCAL_ONLY``) with the run's initial model (same architecture, same seed) and the run's
training settings. The site trains that model on its training split alone for the run's whole
budget (``epochs x rounds`` epochs, plain local training) and answers with the held-out
histogram of the result (`models.histogram`), the same kind of reply as an evaluation: no rows,
no per-row scores. The coordinator reads the site's primary metric from it and puts it next to
the federated model's metric on the same rows ("your line alone / with the network").

Under DP (the run asks for an epsilon, or the site requires DP) the site refuses: a local-only
model at the run's settings is a second DP-SGD run on the same rows, costing as much again as
the run's training on top of a target the run already spends in full. The refusal names the
reason and costs nothing; the coordinator reports the site's "alone" as not available.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from client.site import SiteConfig
from models.histogram import SCORE_BINS, build_histogram, histogram_loss
from models.scaler import FederatedScaler
from models.tasks import TaskSpec
from models.training import TrainConfig, last_windows, predict, prepare, train_local
from privacy.errors import PolicyError
from privacy.policy import DpRequest
from sangsaeng.protocol import ReplyKey

__all__ = ["DP_REFUSAL", "local_only_config", "local_only_reply"]

DP_REFUSAL = (
    "no local-only model under DP: at the run's settings it would be a second DP-SGD run on the same rows, "
    "costing as much again as the run's training, beyond the target the run spends"
)


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

    `model` holds the run's initial weights; it is trained in place. Raises `PolicyError` under DP.
    """
    if request.target_epsilon is not None or site.privacy.dp_required:
        raise PolicyError(DP_REFUSAL)
    x, y = prepare(train, spec, scaler)
    train_local(model, x, y, spec=spec, scaler=scaler, config=config)
    x_test, y_test = prepare(test, spec, scaler)
    predictions = predict(model, x_test, spec=spec, scaler=scaler)
    last = last_windows(test, spec) if spec.kind == "regression" else None
    hist = build_histogram(spec.kind, y_test, predictions, bins=SCORE_BINS, classes=scaler.classes, last=last)
    loss = histogram_loss(hist)
    reply: dict[str, bool | bytes | float | int | str] = {
        ReplyKey.SITE: site.name,
        ReplyKey.EVAL_HISTOGRAM: hist.to_json(),
    }
    return (float(loss) if np.isfinite(loss) else 0.0), max(1, int(round(hist.rows))), reply
