"""The site's part in the contribution scores: score the coalition models on its held-out rows.

The coordinator packs every coalition model of a round into one evaluate message
(``ConfigKey.PHASE`` = ``PHASE_CONTRIBUTION``, ``ConfigKey.COALITIONS`` = how many; one array
per weight position with the models stacked along its first axis, so a message holds as many
arrays as one model, not one per model and position). The site answers with aggregate counts per model
(`models.metric_counts`: histograms, sums, a confusion matrix), never per-row data.

`misbehaving_mod` is a test tool, not a site option: in a simulation it turns named sites
into free riders (they send back the model they received) or noise senders.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.common import MessageType, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat

from models.errors import TaskSpecError
from models.metric_counts import metric_counts
from models.nets import set_weights
from models.scaler import FederatedScaler
from models.tasks import TaskSpec
from models.training import predict
from sangsaeng.protocol import ReplyKey

__all__ = ["unpack_models", "coalition_counts", "misbehaving_mod", "BEHAVIOURS"]

BEHAVIOURS = ("free_rider", "noise")


def unpack_models(arrays: Sequence[np.ndarray], count: int) -> list[list[np.ndarray]]:
    """The `count` models stacked in `arrays`: model k is every array's k-th slice along its first axis."""
    if count < 1 or not arrays or any(a.ndim < 1 or a.shape[0] != count for a in arrays):
        shapes = ", ".join(str(a.shape) for a in arrays[:3])
        raise TaskSpecError(f"the coordinator sent weight arrays of shapes {shapes}..., not {count} stacked models")
    return [[a[k] for a in arrays] for k in range(count)]


def coalition_counts(
    model: torch.nn.Module,
    models: Sequence[Sequence[np.ndarray]],
    x: np.ndarray,
    y: np.ndarray,
    *,
    spec: TaskSpec,
    scaler: FederatedScaler,
) -> str:
    """JSON: for each of `models` (weights for `model`'s architecture), its primary-metric counts on (x, y)."""
    out = []
    for weights in models:
        set_weights(model, weights)
        predictions = predict(model, x, spec=spec, scaler=scaler)
        counts = metric_counts(spec.primary_metric, y, predictions, classes=scaler.n_outputs)
        out.append([float(c) for c in counts])
    return json.dumps(out)


def misbehaving_mod(behaviour: Mapping[str, str], *, seed: int = 0) -> Mod:
    """Test tool: sites named in `behaviour` misbehave in training ("free_rider" or "noise").

    A free rider trains, then sends back the model it received unchanged; a noise sender sends
    Gaussian noise of each weight array's shape and scale. Every other message passes untouched.
    """
    unknown = sorted(set(behaviour.values()) - set(BEHAVIOURS))
    if unknown:
        raise ValueError(f"unknown behaviour(s) {unknown} (choose from {list(BEHAVIOURS)})")
    rng = np.random.default_rng(seed)

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        reply = call_next(msg, context)
        if msg.metadata.message_type != MessageType.TRAIN or reply.has_error():
            return reply
        res = compat.recorddict_to_fitres(reply.content, keep_input=True)
        kind = behaviour.get(str(res.metrics.get(ReplyKey.SITE)))
        if kind is None:
            return reply
        received = parameters_to_ndarrays(compat.recorddict_to_fitins(msg.content, keep_input=True).parameters)
        if kind == "free_rider":
            sent = [np.array(a, copy=True) for a in received]
        else:
            sent = [rng.normal(0.0, float(np.std(a)) or 1.0, size=a.shape).astype(a.dtype) for a in received]
        res.parameters = ndarrays_to_parameters(sent)
        return Message(compat.fitres_to_recorddict(res, keep_input=True), reply_to=msg)

    return mod
