"""Poisoning attackers for benchmarks and tests: one supplier that sends a scaled or sign-flipped
update, or trains on flipped labels. A measuring tool, not a product option.

A model-poisoning attacker is a ClientApp mod (`update_scaling_mod`): the site trains honestly,
then replaces its update ``local - global`` by ``factor x (local - global)`` before it leaves
(``factor`` 100: a boosted update; -1: a sign-flipped one). It sits innermost in the ClientApp
(`client.client_app.make_client_app`'s ``mods``), so what it sends is well formed and finite and
passes the coordinator's screening. A data-poisoning attacker needs no mod: its export carries
flipped labels (`flip_labels`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from flwr.app import Context, Message, MessageType
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat

from models.tasks import TaskSpec
from sangsaeng.protocol import ReplyKey

__all__ = ["ATTACKS", "scaled_update", "update_scaling_mod", "flip_labels"]

ATTACKS: dict[str, float | None] = {"scaled": 100.0, "sign-flipped": -1.0, "flipped-labels": None}
"""Each attack by name: the factor its update is multiplied by, or None for the label-flipping one."""


def scaled_update(sent: list[np.ndarray], trained: list[np.ndarray], factor: float) -> list[np.ndarray]:
    """``global + factor x (trained - global)``, array by array, in the trained arrays' dtypes."""
    return [(g + factor * (t - g)).astype(t.dtype) for g, t in zip(sent, trained, strict=True)]


def update_scaling_mod(factor: float, *, site: str) -> Mod:
    """A mod by which ``site`` sends ``global + factor x (its update)`` instead of its trained model.

    Other sites, other messages and error replies pass through untouched.
    """

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        reply = call_next(msg, context)
        if msg.metadata.message_type != MessageType.TRAIN or reply.has_error():
            return reply
        fit_res = compat.recorddict_to_fitres(reply.content, keep_input=True)
        if str(fit_res.metrics.get(ReplyKey.SITE)) != site:
            return reply
        sent = parameters_to_ndarrays(compat.recorddict_to_fitins(msg.content, keep_input=True).parameters)
        trained = parameters_to_ndarrays(fit_res.parameters)
        fit_res.parameters = ndarrays_to_parameters(scaled_update(sent, trained, factor))
        reply.content = compat.fitres_to_recorddict(fit_res, keep_input=True)
        return reply

    return mod


def flip_labels(frame: pd.DataFrame, spec: TaskSpec) -> pd.DataFrame:
    """A binary task's export with every label flipped (0 <-> 1): what a data-poisoning site trains on."""
    if spec.kind != "binary":
        raise ValueError(f"flip_labels flips 0/1 labels; task '{spec.name}' is {spec.kind}")
    labels = pd.to_numeric(frame[spec.label])
    return frame.assign(**{spec.label: (1 - labels).astype(np.int64)})
