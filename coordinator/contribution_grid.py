"""Contribution scores in a run: coalition models scored by the sites, one batched message per round.

`ContributionTracker` is called by `coordinator.strategies.SangsaengStrategy` with each round's
accepted updates. It reconstructs the round's coalition models (`coordinator.contribution`),
packs them all into one legacy evaluate message per site (``ConfigKey.PHASE`` =
``PHASE_CONTRIBUTION``, ``ConfigKey.COALITIONS`` = how many), and pools the aggregate counts
the sites send back (`models.metric_counts`) into the task's primary metric. The round's
values go into the round's record of the manifest; `contribution_summary` turns the records
into results.json's ``"contribution"`` when the run ends.

The legacy strategy runs inside Flower's ``DefaultWorkflow`` on the ServerApp's thread, so the
tracker can use the run's `Grid` between the fit and the evaluate step of a round.

Every site receives every coalition model of the round, one-site coalitions included: a site
could read another site's update off them. That is why utility scores are off under secure
aggregation, whose point is that nobody sees a single update, and under supplier-level
(central) DP, whose noise would not cover the coalition models: only the data shares remain.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from flwr.common import Scalar
from flwr.serverapp.grid import Grid

from coordinator.aggregation import sample_nodes
from coordinator.config import FederationConfig
from coordinator.contribution import (
    LOO_MAX_SITES,
    SECAGG_REASON,
    contribution_result,
    round_contribution,
)
from coordinator.local_only import with_network
from coordinator.phase import ask_sites
from coordinator.progress import RunObserver
from models.metric_counts import pooled_metric
from sangsaeng.protocol import PHASE_CONTRIBUTION, ConfigKey, ReplyKey

__all__ = [
    "ContributionTracker",
    "SiteScorer",
    "contribution_summary",
    "stack_models",
    "CENTRAL_DP_REASON",
    "SITE_DP_REASON",
]

CENTRAL_DP_REASON = (
    "supplier-level DP: the coalition models, sent to every site without the noise, would reveal single "
    "suppliers' updates, which the noise is there to hide"
)

SITE_DP_REASON = (
    "per-site DP: scoring coalition models would release exact counts of each site's held-out rows every "
    "round, outside the epsilon the site signs for (privacy.evaluation accounts only its own evaluations)"
)

logger = logging.getLogger("sangsaeng.coordinator")


def stack_models(models: Sequence[Sequence[np.ndarray]]) -> list[np.ndarray]:
    """One array per weight position with `models` stacked along a new first axis (`client.contribution.unpack_models`).

    Flower sends every array of a message as an object of its own, each fetched and authenticated
    separately by the site's SuperNode: 64 coalition models of 6 arrays were 384 fetches, now 6.
    """
    return [np.stack([model[j] for model in models]) for j in range(len(models[0]))]


class SiteScorer:
    """Scores a batch of models on the sites' held-out rows: one evaluate message per site, counts back.

    With `per_round`, each round's models go to a seeded sample of that many sites (the run's
    evaluation sample size, `coordinator.aggregation.sites_per_evaluation`): at 10,000 sites a
    round asks 100 sites, not every one.
    """

    def __init__(
        self,
        grid: Grid,
        node_ids: Sequence[int],
        *,
        metric: str,
        timeout: float,
        observer: RunObserver | None = None,
        per_round: int | None = None,
        seed: int = 0,
    ):
        self.grid = grid
        self.node_ids = list(node_ids)
        # Sites scoring a round's coalitions: a seeded sample of this many, drawn anew each round (None: all).
        self.per_round = per_round
        self.seed = seed
        self.metric = metric
        self.timeout = timeout
        self.observer = observer or RunObserver()
        self.problems: list[str] = []  # of the last call: sites whose counts are missing, and why
        self.sites_scored: list[str] = []  # of the last call

    def score(
        self, models: Sequence[list[np.ndarray]], instructions: Mapping[str, Scalar], server_round: int
    ) -> list[float]:
        """The pooled metric of each of `models` over every site that answered."""
        arrays = stack_models(models)
        config = {**instructions, ConfigKey.PHASE: PHASE_CONTRIBUTION, ConfigKey.COALITIONS: len(models),
                  ConfigKey.ROUND: server_round}  # fmt: skip
        nodes = self.node_ids
        if self.per_round is not None:
            nodes = sample_nodes(self.node_ids, self.per_round, seed=self.seed * 1013 + server_round)
        replies, silent = ask_sites(self.grid, nodes, arrays, config, group_id=f"contribution-{server_round}",
                                    timeout=self.timeout, observer=self.observer, label="contribution",
                                    server_round=server_round)  # fmt: skip
        per_site: list[list[np.ndarray]] = []
        self.problems, self.sites_scored = [], []
        for reply in replies:
            node, metrics = reply.node, reply.metrics
            if metrics is None:
                self.problems.append(f"node {node}: {reply.error}")
                continue
            try:
                counts = [np.asarray(c, dtype=np.float64) for c in json.loads(str(metrics[ReplyKey.COALITION_COUNTS]))]
            except (KeyError, ValueError, TypeError) as exc:
                self.problems.append(f"node {node}: unreadable coalition counts ({exc})")
                continue
            if len(counts) != len(models):
                self.problems.append(f"node {node}: counts for {len(counts)} models, {len(models)} were sent")
                continue
            per_site.append(counts)
            self.sites_scored.append(str(metrics.get(ReplyKey.SITE, node)))
        self.problems += [f"node {n}: no coalition counts within {self.timeout:.0f} s" for n in silent]
        return [pooled_metric(self.metric, [site[k] for site in per_site]) for k in range(len(models))]


class ContributionTracker:
    """Computes each round's GTG-Shapley values from the round's updates (see the module docstring)."""

    def __init__(self, scorer: SiteScorer, config: FederationConfig):
        self.scorer = scorer
        self.config = config
        self.higher_is_better = config.task.higher_is_better

    def round(
        self,
        server_round: int,
        global_weights: Sequence[np.ndarray],
        updates: Sequence[tuple[str, list[np.ndarray], int]],
        instructions: Mapping[str, Scalar],
    ) -> dict[str, Any]:
        """The round's contribution record for the manifest: values by site, cost, problems."""
        start = time.perf_counter()
        sites = [site for site, _, _ in updates]
        try:
            values = round_contribution(
                global_weights, [u for _, u, _ in updates], [float(n) for _, _, n in updates],
                lambda models: self.scorer.score(models, instructions, server_round),
                higher_is_better=self.higher_is_better, budget=self.config.contribution_coalitions,
                seed=self.config.seed * 1009 + server_round, within=self.config.contribution_truncation,
                between=self.config.contribution_truncation,
            )  # fmt: skip
        except ValueError as exc:  # a budget too small for this many sites: the round has no values
            logger.warning("round %s: no contribution scores: %s", server_round, exc)
            return {"error": str(exc), "seconds": time.perf_counter() - start}
        for problem in self.scorer.problems:
            logger.warning("round %s: contribution evaluation: %s", server_round, problem)
        unchanged = [
            site for site, update, _ in updates
            if all(np.array_equal(a, b) for a, b in zip(update, global_weights, strict=True))
        ]  # fmt: skip
        return {
            "sites": sites,
            "unchanged": unchanged,  # sent back the model they received: evidence beside the utility
            "initial": values.initial,
            "grand": values.grand,
            "gain": values.gain,
            "utilities": values.utilities,
            "leave_one_out": values.leave_one_out,
            "coalitions_evaluated": values.coalitions_evaluated,
            "exact": values.exact,
            "truncated": values.truncated,
            "scored_by": self.scorer.sites_scored,
            "problems": self.scorer.problems,
            "seconds": time.perf_counter() - start,
        }


def contribution_summary(manifest: Mapping[str, Any], config: FederationConfig) -> dict[str, Any]:
    """results.json's ``"contribution"`` from a run's manifest (its sites and its rounds' records)."""
    records = {name: int(site["n_train"]) for name, site in manifest.get("sites", {}).items()
               if site.get("n_train") is not None}  # fmt: skip
    trained: dict[str, int] = {}
    rounds = sorted(manifest.get("rounds", []), key=lambda r: r["round"])
    for record in rounds:
        if record.get("checkpoint"):  # the round aggregated: its sites' updates are in the model
            for site in record.get("sites_trained", []):
                trained[site] = trained.get(site, 0) + 1
    scored = [r["contribution"] for r in rounds if r.get("checkpoint") and "utilities" in r.get("contribution", {})]
    not_available: dict[str, str] = {}
    if config.secagg:
        not_available = {"utility": SECAGG_REASON, "leave_one_out": SECAGG_REASON + " (it would need a SecAgg+ "
                         "run per coalition, not offered)"}  # fmt: skip
    elif config.central_dp_noise is not None:
        not_available = {"utility": CENTRAL_DP_REASON, "leave_one_out": CENTRAL_DP_REASON}
    elif config.dp_epsilon is not None:
        not_available = {"utility": SITE_DP_REASON, "leave_one_out": SITE_DP_REASON}
    elif config.contribution_coalitions <= 0:
        not_available = {"utility": "switched off (contribution_coalitions = 0)", "leave_one_out": "switched off"}
    elif not scored:
        errors = sorted({r["contribution"]["error"] for r in rounds if "error" in r.get("contribution", {})})
        not_available = {"utility": "; ".join(errors) or "no round was scored", "leave_one_out": "no round was scored"}
    tolerance = len(scored) * config.contribution_truncation
    inputs = {
        "rounds": len(scored),
        "coalitions_per_round": config.contribution_coalitions,
        "seed": config.seed,
        "truncation": {"within_round": config.contribution_truncation, "between_round": config.contribution_truncation},
        "efficiency_tolerance": tolerance,
        "exact_rounds": sum(1 for r in scored if r.get("exact")),
        "truncated_rounds": sum(1 for r in scored if r.get("truncated")),
        "leave_one_out_max_sites": LOO_MAX_SITES,
        "reconstruction": "coalition model = the round's global model plus the example-weighted mean of the "
        "coalition's updates (FedAvg)",
        "scored_on": "the sites' held-out rows, pooled from per-site counts"
        + ("; each round a seeded sample of an evaluation's size" if config.fraction_evaluate < 1 else ""),
        "seconds": float(sum(float(r.get("contribution", {}).get("seconds", 0.0)) for r in rounds)),
    }
    result = contribution_result(
        metric=config.task.primary_metric, records=records, rounds_trained=trained, rounds=scored, inputs=inputs,
        not_available=not_available,
    )  # fmt: skip
    alone = (manifest.get("local_only") or {}).get("per_site", {})  # measured at the sites (deployment)
    network = with_network(rounds) if manifest.get("local_only") else {}
    primary = config.task.primary_metric
    for site, entry in result["per_site"].items():  # beside the schema: rounds whose update changed nothing
        entry["unchanged_rounds"] = sum(1 for r in scored if site in r.get("unchanged", [])) if scored else None
        entry["alone"] = alone.get(site, {}).get(primary)
        entry["with_network"] = network.get(site, {}).get(primary)  # under DP the released (noisy) evaluation
    local_only = manifest.get("local_only") or {}
    if local_only.get("not_available"):
        result.setdefault("not_available", {})["alone"] = local_only["not_available"]
    return result
