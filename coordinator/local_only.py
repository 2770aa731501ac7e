"""What each supplier got back, measured at the sites: its line alone next to its line with the network.

After a deployment run's last round the coordinator sends every healthy site one evaluate
message (``ConfigKey.PHASE`` = ``PHASE_LOCAL_ONLY``) holding the run's initial model (its
seed's) and the run's instructions. Each site trains that model on its own training rows for
the run's budget and answers with the held-out histogram of the result (`client.local_only`);
`local_only_scores` reads each site's metrics from it. The run's record of it (manifest key
``"local_only"``) gives results.json's ``contribution.per_site[site]["alone"]``; the federated
model's metric on the same rows (``"with_network"``) is the site's own evaluation of the last
evaluated round (`with_network`).

A simulation keeps its own comparison (`coordinator.simulation`, trained on the same rows
in-process), so it does not send this message. Under per-site DP the sites train the local-only
model with DP-SGD and release its histogram through the evaluation mechanism, both charged to
their ledgers (`client.local_only`); their replies' mechanisms go into the record (``"dp"``, by
site) and from there into the signed privacy report (`privacy.report`), which recomputes them.
A site whose budget cannot cover it refuses; its reason is in ``"problems"``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from flwr.common import Scalar
from flwr.serverapp.grid import Grid

from coordinator.phase import ask_sites
from coordinator.progress import RunObserver
from models.histogram import EvalHistogram, histogram_metrics
from sangsaeng.protocol import PHASE_LOCAL_ONLY, ConfigKey, ReplyKey

__all__ = ["local_only_scores", "with_network"]


def local_only_scores(
    grid: Grid,
    node_ids: Sequence[int],
    *,
    initial: list[np.ndarray],
    instructions: Mapping[str, Scalar],
    timeout: float,
    observer: RunObserver | None = None,
) -> dict[str, Any]:
    """Ask each site once for its local-only model's held-out metrics; the record for the manifest.

    Returns ``{"per_site": {site: metrics}, "problems": {node or site: reason}, "seconds": ...}``
    and, under DP, ``"dp"``: each site's local-only mechanisms as it sent them.
    """
    observer = observer or RunObserver()
    start = time.perf_counter()
    config = {**instructions, ConfigKey.PHASE: PHASE_LOCAL_ONLY, ConfigKey.ROUND: 0}
    replies, silent = ask_sites(grid, node_ids, initial, config, group_id="local-only", timeout=timeout,
                                observer=observer, label="local_only",
                                server_round=int(instructions.get(ConfigKey.NUM_ROUNDS, 0)))  # fmt: skip
    per_site: dict[str, dict[str, float]] = {}
    problems: dict[str, str] = {}
    mechanisms: dict[str, dict[str, Any]] = {}
    for reply in replies:
        if reply.metrics is None:
            problems[f"node {reply.node}"] = str(reply.error)
            continue
        metrics = reply.metrics
        site = str(metrics.get(ReplyKey.SITE, f"node {reply.node}"))
        try:
            per_site[site] = histogram_metrics(EvalHistogram.from_json(str(metrics[ReplyKey.EVAL_HISTOGRAM])))
            if ReplyKey.DP_LOCAL_ONLY in metrics:
                mechanisms[site] = json.loads(str(metrics[ReplyKey.DP_LOCAL_ONLY]))
        except (KeyError, ValueError, TypeError) as exc:
            problems[site] = f"unreadable local-only histogram ({exc})"
    for node in silent:
        problems[f"node {node}"] = f"no local-only score within {timeout:.0f} s"
    record = {"per_site": per_site, "problems": problems, "seconds": time.perf_counter() - start}
    return record | ({"dp": mechanisms} if mechanisms else {})


def with_network(rounds: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each site's own held-out metrics of the final federated model: the run's last evaluated round's.

    A site missing from that round (its evaluation failed) is missing here: an earlier round's
    score is not the final model's.
    """
    evaluated = [r for r in rounds if r.get("per_site")]
    if not evaluated:
        return {}
    last = max(evaluated, key=lambda r: int(r["round"]))
    return {site: dict(metrics) for site, metrics in last["per_site"].items()}
