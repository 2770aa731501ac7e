"""The coordinator's side of the membership-inference check: one request per site after the last round.

After the last round the coordinator sends each site that joined the run one evaluate
message in the ``membership`` phase (`sangsaeng.protocol.PHASE_MEMBERSHIP`) carrying the
final global model; the site attacks it with its own training rows against its held-out
rows (`client.membership`) and answers with the figures only. Simulation and deployment run
the same `run_federation`, so they share this path. A site that cannot run the check is
reported, not fatal: the run's model and epsilons stand without it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from flwr.common import Scalar
from flwr.serverapp.grid import Grid

from coordinator.phase import ask_sites
from coordinator.progress import RunObserver
from privacy.errors import MembershipCheckError
from privacy.membership import MembershipResult
from sangsaeng.protocol import PHASE_MEMBERSHIP, ConfigKey, ReplyKey

__all__ = ["collect_membership", "PHASE_LABEL"]

PHASE_LABEL = "membership inference"  # the phase as progress displays show it


def collect_membership(
    grid: Grid,
    node_ids: Iterable[int],
    weights: list[np.ndarray],
    *,
    instructions: Mapping[str, Scalar],
    server_round: int,
    timeout: float,
    observer: RunObserver,
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Ask each node once to attack the final `weights`. Returns (figures by site, problems naming the site).

    `instructions` are the ones every round's messages carry (task, scaler, model, run id,
    seed): the site rebuilds the final model from them.
    """
    config: dict[str, Scalar] = {**instructions, ConfigKey.PHASE: PHASE_MEMBERSHIP, ConfigKey.ROUND: server_round}
    replies, silent = ask_sites(grid, node_ids, weights, config, group_id=PHASE_MEMBERSHIP, timeout=timeout,
                                observer=observer, label=PHASE_LABEL, server_round=server_round)  # fmt: skip
    figures: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    for reply in replies:
        if reply.metrics is None:
            problems.append(f"membership inference: {reply.error}")
            continue
        site = str(reply.metrics.get(ReplyKey.SITE, f"node {reply.node}"))
        try:
            result = MembershipResult.from_dict(
                json.loads(str(reply.metrics[ReplyKey.MEMBERSHIP])), source=f"site '{site}' membership inference"
            )
        except (KeyError, ValueError, MembershipCheckError) as exc:
            problems.append(f"site '{site}': membership inference reply unusable: {exc}")
            continue
        figures[site] = result.to_dict()
    for node in sorted(silent):
        problems.append(f"node {node} did not answer the membership-inference request within {timeout:.0f} s")
    for problem in problems:
        observer.site_problem(problem)
    return dict(sorted(figures.items())), problems
