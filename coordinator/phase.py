"""One evaluate message to each site outside the round loop, and its replies sorted out.

The coordinator asks the sites extra questions with Flower's evaluate message type: the
round's coalition models (`coordinator.contribution_grid`), the membership-inference check
of the final model (`coordinator.membership`) and the local-only model (`coordinator.local_only`).
Each names its ``ConfigKey.PHASE`` in the config; `ask_sites` builds the messages, waits for
the replies and hands back each site's metrics or error, and the nodes that did not answer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import Message
from flwr.common import EvaluateIns, MessageType, Scalar, ndarrays_to_parameters
from flwr.compat.common import recorddict_compat as compat
from flwr.serverapp.grid import Grid

from coordinator.progress import RunObserver

__all__ = ["PhaseReply", "ask_sites"]


@dataclass(frozen=True)
class PhaseReply:
    """One site's answer: its reply's metrics, or (``metrics`` None) the error it sent."""

    node: int
    metrics: Mapping[str, Scalar] | None
    error: str | None = None


def ask_sites(
    grid: Grid,
    node_ids: Iterable[int],
    weights: list[np.ndarray],
    config: Mapping[str, Scalar],
    *,
    group_id: str,
    timeout: float,
    observer: RunObserver,
    label: str,
    server_round: int,
) -> tuple[list[PhaseReply], list[int]]:
    """Send `weights` and `config` to every node in one evaluate message each; (replies, nodes that did not answer).

    `label` and `server_round` are what progress displays show (`RunObserver.phase_started`).
    """
    node_ids = list(node_ids)
    ins = EvaluateIns(ndarrays_to_parameters(weights), dict(config))
    messages = [
        Message(
            content=compat.evaluateins_to_recorddict(ins, keep_input=True),
            dst_node_id=node,
            message_type=MessageType.EVALUATE,
            group_id=group_id,
        )  # fmt: skip
        for node in node_ids
    ]
    observer.phase_started(label, server_round, len(messages))
    replies = list(grid.send_and_receive(messages, timeout=timeout)) if messages else []
    answers = [
        PhaseReply(reply.metadata.src_node_id, None, str(reply.error.reason))
        if reply.has_error()
        else PhaseReply(reply.metadata.src_node_id, compat.recorddict_to_evaluateres(reply.content).metrics)
        for reply in replies
    ]
    answered = {answer.node for answer in answers}
    return answers, [node for node in node_ids if node not in answered]
