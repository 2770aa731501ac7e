"""Aggregation strategies by name, and the wrapper that adds Sangsaeng's bookkeeping.

The strategies are Flower's own legacy ``flwr.server.strategy`` classes (weighted FedAvg,
FedProx, FedAdam, FedMedian, FedTrimmedAvg, Krum, Multi-Krum, Bulyan; by name in
`coordinator.aggregation`) driven by
Flower's ``DefaultWorkflow``: the structure in which Flower's SecAgg+ (``SecAggPlusWorkflow``
+ ``secaggplus_mod``) plugs in as the fit workflow.

`SangsaengStrategy` wraps an inner strategy, as Flower's DP wrappers do: it sends the task,
scaler and training settings with every instruction, records failures and per-site metrics,
and checkpoints the global model after every round.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_manager import ClientManager, SimpleClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.criterion import Criterion
from flwr.server.strategy import Strategy

from coordinator.aggregation import AGGREGATIONS
from coordinator.checkpoint import RunRecorder
from coordinator.config import FederationConfig
from coordinator.contribution_grid import ContributionTracker
from coordinator.progress import RunObserver
from models.histogram import EvalHistogram, histogram_metrics, merge
from models.scaler import FederatedScaler
from privacy.audit import AuditLog
from privacy.central import AdaptiveClipping, CentralDP, wrap_central_dp
from privacy.evaluation import evaluation_rounds
from sangsaeng.protocol import ConfigKey, ReplyKey

__all__ = [
    "SangsaengStrategy",
    "SiteClientManager",
    "build_strategy",
    "weighted_mean",
    "STRATEGY_REGISTRY",
    "innermost",
    "strategy_state",
    "restore_strategy_state",
    "MergedEvaluation",
    "merged_evaluation",
]

logger = logging.getLogger("sangsaeng.coordinator")

EvaluateFn = Callable[[int, list[np.ndarray]], tuple[float, dict[str, float]] | None]


# Metrics whose federation-wide value is not the example-weighted mean of the sites' values:
# an RMSE pools as the root of the weighted mean of squares (exact: each site's RMSE is over its
# `n` examples), the PHM 2008 score is a sum over engines, so over sites. `rmse_last` is over each
# site's engines, not its windows: pooled by windows it is close, not exact.
_POOLED = {"rmse": "rms", "rmse_last": "rms", "phm08_score": "sum"}


def weighted_mean(items: list[tuple[int, dict[str, Scalar]]]) -> dict[str, Scalar]:
    """Example-weighted mean of every numeric metric (NaN values are skipped).

    Except where a mean is not the federation's value: an RMSE is pooled as the root of the
    weighted mean of squares, the PHM 2008 score (a sum over engines) is summed.
    """
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    for n, metrics in items:
        for key, value in metrics.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or np.isnan(value):
                continue
            rule = _POOLED.get(key)
            term = float(value) if rule == "sum" else n * float(value) ** (2 if rule == "rms" else 1)
            sums[key] = sums.get(key, 0.0) + term
            weights[key] = weights.get(key, 0.0) + n
    out: dict[str, Scalar] = {}
    for key, total in sums.items():
        if weights[key] <= 0:
            continue
        rule = _POOLED.get(key)
        out[key] = (
            total if rule == "sum" else float(np.sqrt(total / weights[key])) if rule == "rms" else total / weights[key]
        )
    return out


STRATEGY_REGISTRY = AGGREGATIONS  # the registry, under the name this module has always exported

# Server-side optimiser state worth checkpointing, per strategy attribute.
_STATE_ATTRS = ("m_t", "v_t")


def innermost(strategy: Strategy) -> Strategy:
    """The strategy that aggregates, under every wrapper (Flower's DP wrappers, `SangsaengStrategy`)."""
    # Flower's DP wrappers keep theirs in `.strategy`, `SangsaengStrategy` in `.inner`.
    while True:
        inner = getattr(strategy, "strategy", None) or getattr(strategy, "inner", None)
        if not isinstance(inner, Strategy):
            return strategy
        strategy = inner


def strategy_state(strategy: Strategy) -> dict[str, list[np.ndarray]]:
    """The server-side optimiser state to checkpoint (FedAdam's moments), read where the optimiser keeps it."""
    optimiser = innermost(strategy)  # a DP wrapper has no moments of its own
    return {a: list(getattr(optimiser, a)) for a in _STATE_ATTRS if getattr(optimiser, a, None) is not None}


def restore_strategy_state(strategy: Strategy, state: dict[str, list[np.ndarray]]) -> None:
    """Put checkpointed optimiser state back where the optimiser reads it, on resume.

    Set on a DP wrapper, FedAdam's moments would be ignored and the resumed run would restart them at zero.
    """
    optimiser = innermost(strategy)
    for attr, arrays in state.items():
        setattr(optimiser, attr, arrays)


def build_strategy(
    config: FederationConfig, initial: list[np.ndarray], evaluate_fn: EvaluateFn | None = None, *, sites: int = 1
) -> Strategy:
    """Flower's strategy named by `config.strategy`, weighted by examples per site.

    With supplier-level DP configured it comes wrapped in Flower's server-side DP wrapper (fixed
    clipping) or in `AdaptiveClipping`.
    """
    common: dict[str, Any] = {
        "fraction_fit": config.fraction_fit,
        "fraction_evaluate": config.fraction_evaluate,
        "min_fit_clients": config.min_sites,
        "min_evaluate_clients": config.min_sites if config.fraction_evaluate > 0 else 0,
        "min_available_clients": config.min_sites,
        "initial_parameters": ndarrays_to_parameters(initial),
        "fit_metrics_aggregation_fn": weighted_mean,
        "evaluate_metrics_aggregation_fn": weighted_mean,
    }
    if evaluate_fn is not None:
        common["evaluate_fn"] = lambda rnd, weights, _cfg: evaluate_fn(rnd, weights)
    strategy = AGGREGATIONS[config.strategy]().build(config, common)
    if config.central_dp_noise is not None:
        strategy = wrap_central_dp(
            strategy, noise_multiplier=config.central_dp_noise, clipping_norm=config.central_dp_clip, sites=sites,
            adaptive=config.central_dp_adaptive, target_quantile=config.central_dp_quantile,
            clip_norm_lr=config.central_dp_clip_lr, count_stddev=config.central_dp_count_stddev,
        )  # fmt: skip
    return strategy


class _Excluding(Criterion):
    def __init__(self, excluded: set[int], inner: Criterion | None):
        self.excluded = excluded
        self.inner = inner

    def select(self, client: ClientProxy) -> bool:
        if getattr(client, "node_id", None) in self.excluded:
            return False
        return self.inner.select(client) if self.inner else True


class SiteClientManager(SimpleClientManager):
    """Flower's client manager, minus the nodes left out of the run (bad data, refusals)."""

    def __init__(self, excluded: set[int] | None = None):
        super().__init__()
        self.excluded: set[int] = set(excluded or ())

    def num_available(self) -> int:
        """Connected sites that are not excluded."""
        return sum(1 for c in self.clients.values() if getattr(c, "node_id", None) not in self.excluded)

    def sample(
        self, num_clients: int, min_num_clients: int | None = None, criterion: Criterion | None = None
    ) -> list[ClientProxy]:
        """Flower's sampling, never picking an excluded site."""
        return super().sample(num_clients, min_num_clients, _Excluding(self.excluded, criterion))


def _failure_text(failure: tuple[ClientProxy, FitRes | EvaluateRes] | BaseException) -> str:
    if isinstance(failure, BaseException):
        error = failure.args[0] if failure.args else failure
        return str(getattr(error, "reason", error))
    proxy, res = failure
    return f"node {proxy.cid}: {res.status.message}"


def update_problem(arrays: list[np.ndarray], expected: list[tuple[int, ...]]) -> str | None:
    """Why an update cannot join the average (wrong arrays, non-finite values), or None."""
    if len(arrays) != len(expected):
        return f"update has {len(arrays)} weight arrays, the global model {len(expected)}"
    for i, (array, shape) in enumerate(zip(arrays, expected, strict=True)):
        if tuple(array.shape) != shape:
            return f"weight array {i} has shape {tuple(array.shape)}, the global model's is {shape}"
        if not np.issubdtype(array.dtype, np.number):
            return f"weight array {i} holds {array.dtype}, not numbers"
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        if bad:
            return f"weight array {i} has {bad} non-finite value(s) (NaN or infinity)"
    return None


_DP_KEYS = {
    "epsilon": ReplyKey.DP_EPSILON, "noise_multiplier": ReplyKey.DP_NOISE, "sample_rate": ReplyKey.DP_SAMPLE_RATE,
    "steps": ReplyKey.DP_STEPS, "delta": ReplyKey.DP_DELTA, "max_grad_norm": ReplyKey.DP_MAX_GRAD_NORM,
    "budget_epsilon": ReplyKey.DP_BUDGET, "accountant": ReplyKey.DP_ACCOUNTANT, "records": ReplyKey.DP_RECORDS,
}  # fmt: skip


def _dp_record(metrics: dict[str, Scalar]) -> dict[str, Any]:
    """The DP accounting a site reported with its update (empty when it trained without DP)."""
    if ReplyKey.DP_EPSILON not in metrics:
        return {}
    record = {name: metrics[key] for name, key in _DP_KEYS.items()}
    record["prior_history"] = json.loads(str(metrics.get(ReplyKey.DP_PRIOR, "[]")))
    if ReplyKey.DP_RUN_RELEASES in metrics:  # the site's releases of the run so far (a lost reply's among them)
        record["run_releases"] = json.loads(str(metrics[ReplyKey.DP_RUN_RELEASES]))
    return record


@dataclass(frozen=True)
class MergedEvaluation:
    """One round's evaluation replies: each site's revealed metrics, the merged histogram, the DP mechanisms."""

    per_site: dict[str, dict[str, Any]]
    merged: EvalHistogram | None
    mechanisms: dict[str, dict[str, Any]]


def merged_evaluation(results: list[tuple[ClientProxy, EvaluateRes]]) -> MergedEvaluation:
    """Read each site's histogram, its metrics, and the union's histogram (the sum) from evaluate replies.

    A reply without a histogram (a site of an older version) keeps its own metrics and is left
    out of the merge; other keys of a reply are kept in the site's row as sent.
    """
    per_site: dict[str, dict[str, Any]] = {}
    histograms: list[EvalHistogram] = []
    sources: list[str] = []  # each histogram's site and bins, to name them if they do not merge
    mechanisms: dict[str, dict[str, Any]] = {}
    for proxy, res in results:
        site = str(res.metrics[ReplyKey.SITE]) if ReplyKey.SITE in res.metrics else str(proxy.cid)
        row: dict[str, Any] = {"loss": res.loss, "examples": res.num_examples}
        # Whatever else the reply carries (other branches of a site's evaluation) is kept as sent.
        row |= {k: v for k, v in res.metrics.items()
                if k not in (ReplyKey.SITE, ReplyKey.DP_EVALUATION, ReplyKey.EVAL_HISTOGRAM,
                             ReplyKey.DP_RUN_RELEASES)}  # fmt: skip
        text = res.metrics.get(ReplyKey.EVAL_HISTOGRAM)
        if isinstance(text, str):
            hist = EvalHistogram.from_json(text)
            histograms.append(hist)
            sources.append(f"{site}: {hist.bins} {hist.scale} bins" if hist.kind != "regression" else site)
            row |= histogram_metrics(hist)
        if ReplyKey.DP_EVALUATION in res.metrics:
            mechanisms[site] = json.loads(str(res.metrics[ReplyKey.DP_EVALUATION]))
            if ReplyKey.DP_RUN_RELEASES in res.metrics:  # a lost training reply's release among them
                mechanisms[site]["run_releases"] = json.loads(str(res.metrics[ReplyKey.DP_RUN_RELEASES]))
        per_site[site] = row
    try:
        merged = merge(histograms) if histograms else None
    except ValueError as exc:
        raise ValueError(f"the sites' evaluation histograms do not merge ({'; '.join(sources)}): {exc}") from exc
    return MergedEvaluation(per_site, merged, mechanisms)


class SangsaengStrategy(Strategy):
    """Wraps a Flower strategy with instructions for sites, records and checkpoints."""

    def __init__(
        self,
        inner: Strategy,
        *,
        config: FederationConfig,
        scaler: FederatedScaler,
        recorder: RunRecorder,
        observer: RunObserver | None = None,
        round_offset: int = 0,
        central_dp: CentralDP | None = None,
        audit: AuditLog | None = None,
        contribution: ContributionTracker | None = None,
        site_names: Mapping[int, str] | None = None,
    ):
        self.inner = inner
        # Names by node id of the sites a deployment admitted: a site with no reply yet is named by them.
        self.site_names = dict(site_names or {})
        self.contribution = contribution  # scores each round's updates (None: data shares only)
        self._global: list[np.ndarray] = []  # the global model sent this round
        self._shapes: list[tuple[int, ...]] = []  # of the global model sent this round
        self.central_dp = central_dp
        self.audit = audit
        self._available = 0
        self._instructed: set[int] = set()  # nodes sent this round's fit (or evaluate) instructions
        self.config = config
        self.recorder = recorder
        self.observer = observer or RunObserver()
        self.round_offset = round_offset
        # The global model after the last round that aggregated: what the run hands back.
        self.global_weights: list[np.ndarray] | None = None
        self.instructions: dict[str, Scalar] = {
            ConfigKey.TASK: config.task.to_json(),
            ConfigKey.SCALER: scaler.to_json(),
            ConfigKey.EPOCHS: config.local_epochs,
            ConfigKey.BATCH_SIZE: config.batch_size,
            ConfigKey.LR: config.lr,
            ConfigKey.WEIGHT_DECAY: config.weight_decay,
            ConfigKey.SEED: config.seed,
            ConfigKey.MODEL: config.model,
            ConfigKey.HIDDEN: ",".join(str(h) for h in config.hidden),
            ConfigKey.CLASS_WEIGHT: config.class_weight,
            ConfigKey.RUN_ID: str(recorder.manifest["run_id"]),
            ConfigKey.NUM_ROUNDS: config.num_rounds,
            ConfigKey.DP_EPSILON: float(config.dp_epsilon or 0.0),
            ConfigKey.DP_MAX_GRAD_NORM: config.dp_max_grad_norm,
            ConfigKey.EVALUATE_EVERY: config.evaluate_every,
        }

    def __repr__(self) -> str:
        return f"SangsaengStrategy({self.inner!r})"

    def _round(self, server_round: int) -> int:
        return server_round + self.round_offset

    def _with_instructions(self, server_round: int, config: dict[str, Scalar]) -> dict[str, Scalar]:
        return {**config, **self.instructions, ConfigKey.ROUND: self._round(server_round)}

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        """The inner strategy's initial parameters."""
        return self.inner.initialize_parameters(client_manager)

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        """The inner strategy's fit instructions, with the run's instructions (task, scaler, ...) and round."""
        self._global = parameters_to_ndarrays(parameters)
        self._shapes = [tuple(a.shape) for a in self._global]
        instructions = self.inner.configure_fit(server_round, parameters, client_manager)
        self._instructed = {proxy.node_id for proxy, _ in instructions}
        self._available = client_manager.num_available()
        self.observer.phase_started("train", self._round(server_round), len(instructions))
        return [
            (proxy, FitIns(ins.parameters, self._with_instructions(server_round, ins.config)))
            for proxy, ins in instructions
        ]

    def _lost(
        self,
        results: Sequence[tuple[ClientProxy, FitRes | EvaluateRes]],
        failures: Sequence[tuple[ClientProxy, FitRes | EvaluateRes] | BaseException],
    ) -> list[str]:
        """Sites instructed this round whose reply never came (round deadline passed, node gone), by name.

        Such a site may have trained (and, under DP, charged its own ledger) all the same: only
        its reply was lost. A site not profiled that never replied is named by the deployment's
        admitted sites (`site_names`); a node unknown to both by its node id.
        """
        answered = {proxy.node_id for proxy, _ in results}
        answered |= {f[0].node_id for f in failures if not isinstance(f, BaseException)}
        profiled = self.recorder.manifest.get("sites", {}).items()
        names = self.site_names | {int(site["node_id"]): name for name, site in profiled}
        return sorted(names.get(node, f"node {node}") for node in self._instructed - answered)

    def _learn_rows(self, results: Sequence[tuple[ClientProxy, FitRes | EvaluateRes]], key: str) -> None:
        """Add the sites not profiled (`coordinator.server_app.profile_sample`) to the manifest's ``sites``.

        A site that was not asked for its profile first shows its row counts in its replies: its
        training rows (``n_train``) in its first training reply, its held-out rows (``n_test``) in its
        first evaluation reply, each as the reply counts them (a sequence task's windows); None until then.
        Recorded with ``"rows_from": "replies"``; written with the round's record.
        """
        sites = self.recorder.manifest.setdefault("sites", {})
        for proxy, res in results:
            name = res.metrics.get(ReplyKey.SITE)
            if name is None:
                continue
            entry = sites.setdefault(
                str(name), {"node_id": proxy.node_id, "n_train": None, "n_test": None, "rows_from": "replies"}
            )
            if entry.get("rows_from") == "replies" and entry.get(key) is None:
                entry[key] = int(res.num_examples)

    def _screen(self, results: list[tuple[ClientProxy, FitRes]]) -> tuple[list[tuple[ClientProxy, FitRes]], list[str]]:
        """Leave out updates that would corrupt the average, each with a reason naming the site."""
        kept, rejected = [], []
        for proxy, res in results:
            problem = update_problem(parameters_to_ndarrays(res.parameters), self._shapes) if self._shapes else None
            if problem is None:
                kept.append((proxy, res))
            else:
                site = str(res.metrics.get(ReplyKey.SITE, f"node {proxy.cid}"))
                rejected.append(f"site '{site}': update rejected: {problem}")
        return kept, rejected

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """Record failures and DP spend, screen the updates, then aggregate with the inner strategy."""
        rnd = self._round(server_round)
        problems = [_failure_text(f) for f in failures]
        lost = self._lost(results, failures)
        timeout = f"within the round timeout of {self.config.round_timeout:g} s" if self.config.round_timeout else ""
        problems += [f"site '{site}': no training reply {timeout or 'from its node'} (left out of round {rnd}; "
                     f"if it trained, its own ledger holds that spend)" for site in lost]  # fmt: skip
        # A site whose update is rejected still spent privacy on it: its DP record is kept below.
        dp = {str(res.metrics.get(ReplyKey.SITE, proxy.cid)): _dp_record(res.metrics) for proxy, res in results}
        results, rejected = self._screen(results)
        problems += rejected
        # A rule that needs more updates than arrived (Krum: n > 2f + 2) skips the round, named.
        shortfall = AGGREGATIONS[self.config.strategy]().shortfall(self.config, len(results)) if results else None
        if shortfall:
            problems.append(f"round {rnd}: {shortfall}: not aggregated, the global model stays")
        for problem in problems:
            self.observer.site_problem(problem)
            if self.audit is not None and "budget exhausted" in problem:
                self.audit.append("refusal", round=rnd, reason=problem)
        trained = sorted(str(res.metrics.get(ReplyKey.SITE, proxy.cid)) for proxy, res in results)
        dp = {site: record for site, record in dp.items() if record}
        for site, record in dp.items():
            if self.audit is not None:
                self.audit.append("round trained", site=site, round=rnd, epsilon=record["epsilon"])
        extra: dict[str, Any] = {"dp": dp} if dp else {}
        if self.contribution is not None and results and self._global:
            extra["contribution"] = self.contribution.round(
                rnd, self._global,
                [(str(r.metrics.get(ReplyKey.SITE, p.cid)), parameters_to_ndarrays(r.parameters), r.num_examples)
                 for p, r in results],
                self._with_instructions(server_round, {}),
            )  # fmt: skip
        if self.central_dp is not None and results:
            # Noise is calibrated to an unweighted mean of the updates that arrived.
            results = [(p, FitRes(r.status, r.parameters, 1, r.metrics)) for p, r in results]
            self.inner.num_sampled_clients = len(results)  # type: ignore[attr-defined]  # with central_dp, inner is Flower's DP wrapper
            clip = getattr(self.inner, "clipping_norm", None)  # this round's; adaptive clipping moves it after
            extra["central_dp"] = self.central_dp.account_round(len(results), clipping_norm=clip)
            failures = []  # Flower's DP wrapper drops the whole round on any failure; they are recorded above
        if shortfall:
            parameters, metrics = None, dict[str, Scalar]()
        elif lost and len(results) < self.config.min_sites:  # too few replies before the deadline: model unchanged
            problems.append(f"round {rnd}: {len(results)} update(s) arrived, the run needs {self.config.min_sites}; "
                            "the global model is unchanged")  # fmt: skip
            parameters, metrics = None, dict[str, Scalar]()
        else:
            parameters, metrics = self.inner.aggregate_fit(server_round, results, failures)
        if lost:
            extra["sites_lost"] = lost
        if "central_dp" in extra:
            if isinstance(self.inner, AdaptiveClipping):
                extra["central_dp"]["next_clipping_norm"] = self.inner.clipping_norm
            if self.audit is not None:
                self.audit.append("central dp round", round=rnd, **extra["central_dp"])
        self._learn_rows(results, "n_train")
        self.recorder.update_round(
            rnd,
            sites_trained=trained,
            examples=int(sum(res.num_examples for _, res in results)),
            failures=problems,
            train_loss=metrics.get(ReplyKey.TRAIN_LOSS),
            **extra,
        )
        if parameters is not None:
            self.global_weights = parameters_to_ndarrays(parameters)
            self.recorder.save_checkpoint(rnd, self.global_weights, strategy_state(self.inner))
        else:
            logger.warning("round %s: no update aggregated (%s failure(s))", rnd, len(failures))
        return parameters, metrics

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        """The inner strategy's evaluate instructions, each with the run's instructions and round added.

        None in a round the run does not evaluate in (``evaluate_every``, `privacy.evaluation.evaluation_rounds`).
        """
        scheduled = self._round(server_round) in evaluation_rounds(self.config.num_rounds, self.config.evaluate_every)
        instructions = self.inner.configure_evaluate(server_round, parameters, client_manager) if scheduled else []
        self._instructed = {proxy.node_id for proxy, _ in instructions}
        self.observer.phase_started("evaluate", self._round(server_round), len(instructions))
        if not instructions:
            self._finish_round(server_round)
        return [
            (proxy, EvaluateIns(ins.parameters, self._with_instructions(server_round, ins.config)))
            for proxy, ins in instructions
        ]

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, dict[str, Scalar]]:
        """Merge the sites' held-out histograms and record the union's metrics and each site's, in the round's record.

        The union's metrics are read from the sum of the sites' histograms (`models.histogram`);
        each site's row shows what its own (under DP noisy) histogram reveals. The merged
        histogram and the sites' DP evaluation mechanisms are recorded for the report.
        """
        loss, metrics = self.inner.aggregate_evaluate(server_round, results, failures)
        evaluation = merged_evaluation(results)
        per_site = evaluation.per_site
        record = self.recorder.round_record(self._round(server_round))
        record["failures"] = record.get("failures", []) + [_failure_text(f) for f in failures]
        for problem in (_failure_text(f) for f in failures):
            if self.audit is not None and "budget exhausted" in problem:
                self.audit.append("refusal", round=self._round(server_round), reason=problem)
        extra: dict[str, Any] = {}
        if evaluation.merged is not None:
            metrics = dict[str, Scalar](histogram_metrics(evaluation.merged))
            extra["eval_histogram"] = json.loads(evaluation.merged.to_json())
        if evaluation.mechanisms:
            extra["dp_evaluation"] = evaluation.mechanisms
        lost = self._lost(results, failures)
        if lost:  # under DP a lost evaluation reply, too, may be a release only the site's ledger knows of
            extra["eval_sites_lost"] = lost
            record["failures"] += [f"site '{site}': no evaluation reply (left out of round "
                                   f"{self._round(server_round)}'s evaluation)" for site in lost]  # fmt: skip
        self._learn_rows(results, "n_test")
        self.recorder.update_round(
            self._round(server_round),
            federated_eval={"loss": loss, **metrics} if loss is not None else {},
            per_site=per_site,
            **extra,
        )
        self._finish_round(server_round)
        return loss, metrics

    def evaluate(self, server_round: int, parameters: Parameters) -> tuple[float, dict[str, Scalar]] | None:
        """The inner strategy's centralised evaluation, recorded in the round's record."""
        result = self.inner.evaluate(server_round, parameters)
        if result is None:
            return None
        loss, metrics = result
        if server_round > 0:
            self.recorder.update_round(self._round(server_round), metrics={"loss": loss, **metrics})
        elif self.round_offset == 0:
            self.recorder.set(initial_metrics={"loss": loss, **metrics})
        return result

    def _finish_round(self, server_round: int) -> None:
        self.observer.round_finished(self.recorder.round_record(self._round(server_round)))
