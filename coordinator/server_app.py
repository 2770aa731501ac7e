"""The anchor's Flower ServerApp.

A run has two parts:

1. *Profile*: every connected site validates its export and returns aggregate statistics;
   the coordinator combines them into the federated scaler (`models.scaler`). A site whose
   data is broken is reported with its own message and left out of the run.
2. *Train*: Flower's ``DefaultWorkflow`` runs the rounds with the chosen strategy wrapped in
   `SangsaengStrategy` (instructions, records, a checkpoint per round). Swapping the fit
   workflow for Flower's ``SecAggPlusWorkflow`` adds secure aggregation without a rewrite.

The same app runs in Flower's simulation runtime (`coordinator.simulation`) and, unchanged,
in its deployment runtime (SuperLink + SuperNodes), configured by the run config.
`run_federation` returns the run's `RunResult`: the simulation, which runs this app in its
own process, takes it from an ``on_result`` callback; the deployment app (`app`) writes
results.json and metrics.png from it itself (`coordinator.report.write_results`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context, Message
from flwr.common import GetPropertiesIns, MessageTypeLegacy
from flwr.compat.common import recorddict_compat as compat
from flwr.server import LegacyContext, ServerConfig
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.serverapp import ServerApp
from flwr.serverapp.grid import Grid

from coordinator.aggregation import AGGREGATIONS, sample_nodes, sites_per_evaluation, sites_per_round
from coordinator.checkpoint import RunRecorder, load_resume_point
from coordinator.config import FederationConfig
from coordinator.contribution_grid import ContributionTracker, SiteScorer, contribution_summary
from coordinator.deploy import ADMITTED_FILE
from coordinator.errors import FederationError
from coordinator.held_out import HeldOutEvaluation
from coordinator.local_only import local_only_scores
from coordinator.membership import collect_membership
from coordinator.portal_progress import PortalProgress, PortalTarget
from coordinator.progress import LoggingObserver, ProgressGrid, RunObserver
from coordinator.run_result import RunResult, SiteRows
from coordinator.strategies import (
    EvaluateFn,
    SangsaengStrategy,
    SiteClientManager,
    build_strategy,
    restore_strategy_state,
)
from models.nets import get_weights
from models.scaler import FederatedScaler, SiteProfile
from models.tasks import TaskSpec
from privacy.audit import AuditLog
from privacy.central import AdaptiveClipping, CentralDP
from privacy.keys import load_signing_key
from privacy.report import build_report, write_signed_report
from sangsaeng.protocol import PHASE_PROFILE, ConfigKey, ReplyKey

__all__ = [
    "make_server_app",
    "run_federation",
    "collect_profiles",
    "profile_sample",
    "image_report",
    "write_deployment_results",
    "app",
]

OnResult = Callable[[RunResult], None]

# A deployment ServerApp pulls replies from its SuperLink, which answers each pull from its
# database; while none arrives it backs off to a pull a second (a site's SuperNode asks for work
# only every 3 s, so this adds at most about a second to a phase). 20 pulls a second kept a
# SuperLink at a fifth of a core for the whole of a run.
DEPLOYMENT_MAX_PULL_INTERVAL = 1.0

logger = logging.getLogger("sangsaeng.coordinator")


def wait_for_nodes(grid: Grid, want: int, timeout: float, *, hoped: Iterable[int] = ()) -> list[int]:
    """Node ids once `want` SuperNodes are connected; raise after `timeout` seconds.

    `hoped`: the nodes the run is for (a deployment's admitted sites). The wait goes on until all
    of them are connected, for up to `timeout` seconds; then the run starts with those connected
    if they are at least `want`. Without it the run would start as soon as `want` were there, and
    a site a few seconds late would join in round 1 without having been profiled.
    """
    hoped = set(hoped)
    deadline = time.monotonic() + timeout
    while True:
        node_ids = sorted(grid.get_node_ids())
        if len(node_ids) >= want and hoped <= set(node_ids):
            return node_ids
        if time.monotonic() > deadline:
            if len(node_ids) >= want:
                return node_ids
            raise FederationError(f"only {len(node_ids)} of {want} site(s) connected within {timeout:.0f} s")
        time.sleep(0.2)


def admitted_sites(run_config: Mapping[str, Any]) -> dict[int, str]:
    """The admitted sites' names by node id, from the file the run config names ({} without one).

    An unreadable file is logged and read as none: the names only help the run say who is missing.
    """
    path = run_config.get(ADMITTED_FILE)
    if path in (None, "", "none"):
        return {}
    try:
        admitted = json.loads(Path(str(path)).read_text(encoding="utf-8"))
        return {int(entry["node_id"]): str(entry["site"]) for entry in admitted.values()}
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        logger.warning("%s: unreadable admitted sites (%s); the run goes on without their names", path, exc)
        return {}


def image_report(props: Mapping[str, Any]) -> dict[str, Any]:
    """An image site's report from its profile reply: images, skipped, first_skipped (ten at most), converted.

    The coordinator keeps only counts and the site's own file names, as the site sent them.
    """

    def parsed(key: str, empty: str) -> Any:
        try:
            return json.loads(str(props.get(key, empty)))
        except ValueError:  # a garbled report must not stop the run: its counts still stand
            return json.loads(empty)

    first, converted = parsed(ReplyKey.IMAGES_FIRST_SKIPPED, "[]"), parsed(ReplyKey.IMAGES_CONVERTED, "{}")
    return {
        "images": int(props[ReplyKey.IMAGES]),
        "skipped": int(props.get(ReplyKey.IMAGES_SKIPPED, 0)),
        "first_skipped": [str(p) for p in first][:10] if isinstance(first, list) else [],
        "converted": {
            str(k): int(v) for k, v in converted.items() if isinstance(v, int | float)
        } if isinstance(converted, dict) else {},
    }  # fmt: skip


PROFILE_SEED = 4099
"""Mixed into the run's seed to draw the profiled sample (apart from the rounds' and the membership check's)."""


def profile_sample(node_ids: Sequence[int], config: FederationConfig) -> list[int]:
    """The nodes asked for their data profile: every node, or above ``config.profile_sites`` a seeded sample.

    The federated scaler (means, spreads, categories, classes) is combined from the sample's profiles;
    the sites not asked join the rounds all the same, and their row counts are recorded from their
    first training and evaluation replies (`SangsaengStrategy`). A site not asked releases no profile,
    so under DP it is charged nothing for one (its ledger and the signed report hold only what ran).
    A category or class that only sites outside the sample hold is unknown to the scaler, as it is
    to a scaler from every site when a site joins later. Under secagg every site is asked: SecAgg+
    scales each update by the largest site's row count, which a sample cannot bound.

    The sample is drawn over the node ids in order, not over site names (unknown before the
    profile): a resumed run whose nodes came back under new ids (a simulation's always do) asks
    another sample. Its scaler stays the first run's; under DP a newly asked site's profile is
    charged and reported like any release, and a site asked again gets its first release back.
    """
    node_ids = list(node_ids)
    if config.secagg or config.profile_sites == 0 or len(node_ids) <= config.profile_sites:
        return node_ids
    return sample_nodes(node_ids, config.profile_sites, seed=config.seed * PROFILE_SEED + 18)


def collect_profiles(
    grid: Grid,
    node_ids: Iterable[int],
    config: FederationConfig,
    observer: RunObserver,
    *,
    run_id: str = "unnamed-run",
    mechanisms: dict[str, dict[str, Any]] | None = None,
    images: dict[int, dict[str, Any]] | None = None,
) -> tuple[dict[int, tuple[str, SiteProfile, int, int]], dict[int, str]]:
    """Ask each site for its data profile. Returns (healthy sites by node, problems by node).

    Under DP the request carries the run's id and target: a site then releases a noisy profile
    (`privacy.profile`), charged to its ledger, and its mechanism goes into `mechanisms` by site.
    An image task's sites also report their skipped and converted images (`image_report`):
    those reports are put in `images`, by node, when given.
    """
    node_ids = list(node_ids)
    ins = GetPropertiesIns(
        {
            ConfigKey.PHASE: PHASE_PROFILE,
            ConfigKey.TASK: config.task.to_json(),
            ConfigKey.RUN_ID: run_id,
            ConfigKey.NUM_ROUNDS: config.num_rounds,
            ConfigKey.DP_EPSILON: float(config.dp_epsilon or 0.0),
            ConfigKey.EVALUATE_EVERY: config.evaluate_every,
        }
    )
    messages = [
        Message(
            content=compat.getpropertiesins_to_recorddict(ins),
            dst_node_id=node_id,
            message_type=MessageTypeLegacy.GET_PROPERTIES,
            group_id="profile",
        )
        for node_id in node_ids
    ]
    observer.phase_started("profile", 0, len(messages))
    replies = grid.send_and_receive(messages, timeout=config.node_wait_timeout)
    healthy: dict[int, tuple[str, SiteProfile, int, int]] = {}
    problems: dict[int, str] = {}
    images = images if images is not None else {}
    for reply in replies:
        node = reply.metadata.src_node_id
        if reply.has_error():
            problems[node] = str(reply.error.reason)
            continue
        props = compat.recorddict_to_getpropertiesres(reply.content).properties
        healthy[node] = (
            str(props[ReplyKey.SITE]),
            SiteProfile.from_json(str(props[ReplyKey.PROFILE])),
            int(props[ReplyKey.N_TRAIN]),
            int(props[ReplyKey.N_TEST]),
        )
        if mechanisms is not None and ReplyKey.DP_PROFILE in props:
            mechanisms[str(props[ReplyKey.SITE])] = json.loads(str(props[ReplyKey.DP_PROFILE]))
        if images is not None and ReplyKey.IMAGES in props:
            images[node] = image_report(props)
    for node in set(node_ids) - set(healthy) - set(problems):
        problems[node] = f"node {node} did not answer the profile request within {config.node_wait_timeout:.0f} s"
    for problem in problems.values():
        observer.site_problem(problem)
    return healthy, problems


def run_federation(
    grid: Grid,
    context: Context,
    config: FederationConfig,
    *,
    observer: RunObserver | None = None,
    evaluate_fn: EvaluateFn | None = None,
    expected_sites: int | None = None,
    on_result: OnResult | None = None,
    max_pull_interval: float | None = None,
    admitted: Mapping[int, str] | None = None,
) -> RunResult:
    """Profile the sites, then train for `config.num_rounds` rounds. Returns the run's result.

    `admitted`: a deployment's admitted sites, names by node id (`admitted_sites`): the run waits
    for them (`wait_for_nodes`), and names by them a site it has no reply from.

    `max_pull_interval`: the longest wait between two pulls for replies while none arrives (see
    `ProgressGrid`); None keeps the quick 0.05 s of an in-memory simulation.

    The manifest and checkpoints are written as the run goes (to resume and audit it). When the
    run ends, `on_result` (if given) receives the `RunResult`, also for a run that failed after
    it started recording, before the error is raised on.
    """
    observer = observer or LoggingObserver()
    # A lost signing key must stop the run before anyone spends privacy budget on it.
    signing_key = load_signing_key(config.key_dir, create=True) if config.uses_dp else None
    grid = ProgressGrid(grid, observer, default_timeout=config.round_timeout, max_pull_interval=max_pull_interval)
    spec = config.task
    admitted = dict(admitted or {})
    node_ids = wait_for_nodes(grid, expected_sites or config.min_sites, config.node_wait_timeout, hoped=admitted)
    absent = sorted(name for node, name in admitted.items() if node not in node_ids)
    if absent:
        observer.site_problem(
            f"{len(absent)} admitted site(s) not connected within {config.node_wait_timeout:.0f} s, the run goes on "
            f"without them: {', '.join(absent)}"
        )
    # The run id is known before the profile: under DP each site charges its profile to this run.
    resume = load_resume_point(config.out_dir, schema_hash=spec.schema_hash()) if config.resume else None
    run_id = str(resume.manifest["run_id"]) if resume is not None else uuid.uuid4().hex[:12]
    mechanisms: dict[str, dict[str, Any]] = {}
    images: dict[int, dict[str, Any]] = {}
    asked = profile_sample(node_ids, config)
    healthy, problems = collect_profiles(
        grid, asked, config, observer, run_id=run_id, mechanisms=mechanisms, images=images
    )
    # Every connected site that has not shown a problem takes part: the profiled ones and those not asked.
    candidates = [node for node in node_ids if node not in problems]
    profile_record = {"asked": len(asked), "of": len(node_ids), "seed": config.seed}
    sites: dict[str, dict[str, Any]] = {
        name: {
            "node_id": node,
            "n_train": n_train,
            "n_test": n_test,
            **({"images": images[node]} if node in images else {}),
        }
        for node, (name, _, n_train, n_test) in healthy.items()
    }
    for name, site in sites.items():
        report = site.get("images")
        if report and (report["skipped"] or report["converted"]):
            logger.warning(
                "site %s: %d of %d image(s) skipped, converted %s (first skipped: %s)", name, report["skipped"],
                report["images"], report["converted"] or "none", "; ".join(report["first_skipped"]) or "none",
            )  # fmt: skip
    if resume is not None:  # the sites not profiled that the earlier run learned from their replies
        learned = resume.manifest.get("sites", {}).items()
        sites = {**{name: site for name, site in learned if site.get("rows_from") == "replies"}, **sites}
    if resume is not None:  # the profiles released when the run began are the ones the scaler came from
        mechanisms = {**mechanisms, **resume.manifest.get("profile_dp", {})}
    if resume is not None:
        scaler = FederatedScaler.from_json(resume.manifest["scaler"])  # weights were fitted to it
        initial, done = resume.weights, resume.round
    else:
        if not healthy:
            raise FederationError("no site supplied usable data: " + "; ".join(problems.values()))
        scaler = FederatedScaler.combine([p for _, p, _, _ in healthy.values()], spec)
        initial, done = get_weights(config.new_model(scaler.n_inputs, outputs=scaler.n_outputs, seed=config.seed)), 0
    if isinstance(evaluate_fn, HeldOutEvaluation):  # its rows are prepared with the run's own scaler
        evaluate_fn.bind(scaler)

    recorder = RunRecorder(
        config.out_dir,
        header={
            "run_id": run_id,
            # Flower's id of the run writing this manifest: `coordinator run --resume` stops it in the
            # SuperLink when its ServerApp died, so that the sites drop its tasks.
            "flower_run_id": str(context.run_id),
            "config": config.to_dict(),
            "task": {
                "name": spec.name,
                "kind": spec.kind,
                "primary_metric": spec.primary_metric,
                # A sequence task's epsilons are per window: the report states it (privacy.report.record_unit).
                **({"sequence": spec.sequence.to_dict()} if spec.sequence is not None else {}),
            },  # fmt: skip
            "schema_hash": spec.schema_hash(),
            "scaler": scaler.to_json(),
            "sites": sites,
            "excluded_sites": {str(node): problem for node, problem in problems.items()},
            **({"not_connected": absent} if absent else {}),  # admitted sites the run started without
            # A sampled profile: `sites` starts with the profiled sites, the others join it as they reply.
            **({"profile_sample": profile_record} if len(asked) < len(node_ids) else {}),
            **({"profile_dp": mechanisms} if mechanisms else {}),
        },
        previous=resume.manifest if resume else None,
    )
    resumed_weights = resume.weights if resume is not None else None

    def finish(weights: list[np.ndarray] | None, report: dict[str, Any] | None = None) -> RunResult:
        recorder.set(contribution=contribution_summary(recorder.manifest, config))
        result = _run_result(recorder, spec, scaler, weights, report or _recorded_report(config, recorder))
        if on_result is not None:
            on_result(result)
        return result

    if len(candidates) < config.min_sites:
        recorder.set(status="failed", error=f"{len(candidates)} healthy site(s), run needs {config.min_sites}")
        finish(resumed_weights)
        raise FederationError(
            f"only {len(candidates)} site(s) have usable data, the run needs {config.min_sites}: "
            + "; ".join(problems.values())
        )
    per_round = sites_per_round(config, len(candidates))
    shortfall = AGGREGATIONS[config.strategy]().shortfall(config, per_round)
    if shortfall:  # every round would be refused: refuse the run before anyone trains
        error = f"{shortfall}: {len(candidates)} healthy site(s), {per_round} sampled per round"
        recorder.set(status="failed", error=error)
        finish(resumed_weights)
        raise FederationError(error)
    if done >= config.num_rounds:
        recorder.set(status="completed")
        return finish(resumed_weights)

    inner = build_strategy(config, initial, evaluate_fn, sites=len(candidates))
    if resume is not None:
        restore_strategy_state(inner, resume.strategy_state)
    audit = AuditLog(config.out_dir / "privacy" / "audit.jsonl") if config.uses_dp else None
    if audit is not None:  # a site whose budget cannot cover its DP profile refused before round 1
        for problem in problems.values():
            if "budget exhausted" in problem:
                audit.append("refusal", round=0, reason=problem)
    central = None
    if config.central_dp_noise is not None:
        adaptive = None
        if isinstance(inner, AdaptiveClipping):
            adaptive = {
                "target_quantile": inner.target_quantile, "clip_norm_lr": inner.clip_norm_lr,
                "count_stddev": inner.clipped_count_stddev, "update_noise_multiplier": inner.noise_multiplier,
            }  # fmt: skip
        central = CentralDP(
            noise_multiplier=config.central_dp_noise, clipping_norm=config.central_dp_clip,
            delta=config.central_dp_delta, suppliers=len(candidates), adaptive=adaptive,
        )  # fmt: skip
        for record in recorder.rounds:  # a resumed run keeps accounting its earlier rounds
            if record.get("central_dp"):
                central.history.append((config.central_dp_noise, record["central_dp"]["sample_rate"], 1))
                # ... and an adaptive run the clipping norm it had reached
                if isinstance(inner, AdaptiveClipping) and "next_clipping_norm" in record["central_dp"]:
                    inner.clipping_norm = record["central_dp"]["next_clipping_norm"]
    contribution = None
    # SecAgg+ hides the single updates; under supplier-level DP un-noised coalition models would reveal them;
    # under per-site DP the sites' exact coalition scores would be a release their epsilon does not cover.
    if (not config.secagg and config.central_dp_noise is None and config.dp_epsilon is None
            and config.contribution_coalitions > 0):  # fmt: skip
        scorer = SiteScorer(grid, sorted(candidates), metric=spec.primary_metric,
                            timeout=config.round_timeout or config.node_wait_timeout, observer=observer,
                            per_round=sites_per_evaluation(config, len(candidates)), seed=config.seed)  # fmt: skip
        contribution = ContributionTracker(scorer, config)
    strategy = SangsaengStrategy(
        inner, config=config, scaler=scaler, recorder=recorder, observer=observer, round_offset=done,
        central_dp=central, audit=audit, contribution=contribution, site_names=admitted,
    )  # fmt: skip
    legacy = LegacyContext(
        context,
        config=ServerConfig(num_rounds=config.num_rounds - done),
        strategy=strategy,
        client_manager=SiteClientManager(excluded=set(problems)),
    )
    started = time.monotonic()
    try:
        workflow_for(config, max_weight=max(site["n_train"] for site in sites.values()))(grid, legacy)
    except Exception as exc:
        recorder.set(status="failed", error=f"{type(exc).__name__}: {exc}")
        finish(strategy.global_weights or resumed_weights)
        raise
    if evaluate_fn is None:  # a deployment: the sites measure "your line alone" (a simulation has its comparison)
        # The sites train as long again as the run's rounds together: wait that long and more.
        timeout = config.node_wait_timeout + 2 * (time.monotonic() - started)
        recorder.set(local_only=_local_only(grid, sorted(candidates), config, scaler, strategy, observer, timeout))
    recorder.set(status="completed", completed_rounds=config.num_rounds)
    if config.membership_check and strategy.global_weights is not None:
        # The empirical check beside the epsilon: each site attacks the final model on its own rows.
        # On an evaluation-sized seeded sample of the sites (all of them at the default fraction_evaluate of 1).
        attacked = sample_nodes(
            sorted(candidates), sites_per_evaluation(config, len(candidates)), seed=config.seed * 1013
        )
        figures, failures = collect_membership(
            grid, attacked, strategy.global_weights, instructions=strategy.instructions,
            server_round=config.num_rounds, timeout=config.node_wait_timeout, observer=observer,
        )  # fmt: skip
        recorder.set(membership_inference=figures, membership_failures=failures)
        if audit is not None:
            for name, figure in figures.items():
                audit.append("membership inference", site=name, auc=figure["auc"], method=figure["method"],
                             n_train=figure["n_train"], n_holdout=figure["n_holdout"])  # fmt: skip
    report = None
    if signing_key is not None and audit is not None:
        report = build_report(recorder.manifest, audit_head=audit.head())
        path = write_signed_report(report, config.out_dir / "privacy", signing_key)
        audit.append("report issued", run_id=report["run_id"], sha256=hashlib.sha256(path.read_bytes()).hexdigest())
        recorder.set(privacy_report=str(path.relative_to(config.out_dir)))
    return finish(strategy.global_weights or resumed_weights, report)


def _local_only(
    grid: Grid, node_ids: list[int], config: FederationConfig, scaler: FederatedScaler,
    strategy: SangsaengStrategy, observer: RunObserver, timeout: float,
) -> dict[str, Any]:  # fmt: skip
    """The manifest's ``"local_only"``: each site's local-only model scored at the site, or why not.

    The run has finished training when this runs: a failure here is recorded, never the run's.
    """
    # The run's initial model, from its seed (also when the run was resumed from a checkpoint).
    initial = get_weights(config.new_model(scaler.n_inputs, outputs=scaler.n_outputs, seed=config.seed))
    try:
        record = local_only_scores(grid, node_ids, initial=initial, instructions=strategy.instructions,
                                   timeout=timeout, observer=observer)  # fmt: skip
    except Exception as exc:  # the trained model and its scores stand without the comparison
        logger.warning("no local-only scores: %s: %s", type(exc).__name__, exc)
        return {"per_site": {}, "problems": {}, "not_available": f"the request failed: {type(exc).__name__}: {exc}"}
    for where, problem in record["problems"].items():
        logger.warning("local-only model, %s: %s", where, problem)
    return record


def _run_result(
    recorder: RunRecorder,
    spec: TaskSpec,
    scaler: FederatedScaler,
    weights: list[np.ndarray] | None,
    report: dict[str, Any] | None,
) -> RunResult:
    """The run's result as its manifest now records it, with the objects the files only copy."""
    manifest = copy.deepcopy(recorder.manifest)  # the result must not change if the recorder does
    return RunResult(
        run_id=str(manifest["run_id"]),
        status=manifest["status"],
        error=manifest.get("error"),
        task=spec,
        sites={
            name: SiteRows(
                node_id=int(s["node_id"]),
                n_train=_count(s["n_train"]),
                n_test=_count(s["n_test"]),
                images=s.get("images"),
            )
            for name, s in manifest["sites"].items()
        },
        excluded_sites=manifest["excluded_sites"],
        scaler=scaler,
        weights=weights if any(r.get("checkpoint") for r in manifest["rounds"]) else None,
        rounds=manifest["rounds"],
        initial_metrics=manifest.get("initial_metrics", {}),
        privacy_report=report,
        privacy_report_path=manifest.get("privacy_report") if report is not None else None,
        config=manifest["config"],
        contribution=manifest.get("contribution"),
        membership=manifest.get("membership_inference", {}),
    )


def _count(value: Any) -> int | None:
    """A site's row count as the manifest records it (None: not known yet, a site not profiled)."""
    return None if value is None else int(value)


def _recorded_report(config: FederationConfig, recorder: RunRecorder) -> dict[str, Any] | None:
    """The privacy report the manifest names, issued by an earlier run of this (resumed) directory."""
    relative = recorder.manifest.get("privacy_report")
    if not relative:
        return None
    return json.loads((config.out_dir / relative).read_text(encoding="utf-8"))


def workflow_for(config: FederationConfig, *, max_weight: float) -> DefaultWorkflow:
    """Flower's default round loop; with ``secagg`` its fit step is Flower's SecAgg+ protocol.

    `max_weight` is the largest site's training-row count: SecAgg+ scales each update by
    ``num_examples / max_weight`` before quantising, so with this value the securely summed
    average equals FedAvg's weighted average up to quantisation error.
    """
    if not config.secagg:
        return DefaultWorkflow()
    return DefaultWorkflow(
        fit_workflow=SecAggPlusWorkflow(
            num_shares=config.secagg_shares,
            reconstruction_threshold=config.secagg_threshold,
            max_weight=float(max_weight),
            clipping_range=config.secagg_clip,
            timeout=config.round_timeout,
        )
    )


def make_server_app(
    config: FederationConfig | None = None,
    *,
    observer: RunObserver | None = None,
    evaluate_fn: EvaluateFn | None = None,
    expected_sites: int | None = None,
    on_result: OnResult | None = None,
) -> ServerApp:
    """The ServerApp. Without `config` it reads the Flower run config (deployment).

    `on_result` receives the run's `RunResult` when the run ends (see `run_federation`).
    """
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        run_config = config or FederationConfig.from_run_config(dict(context.run_config))
        # Deployment with `coordinator run --portal`: the run reports its progress after every round.
        target = PortalTarget.from_run_config(dict(context.run_config))
        watch = observer
        if target is not None:
            watch = PortalProgress(observer or LoggingObserver(), target, run_config.out_dir)
        run_federation(
            grid, context, run_config, observer=watch, evaluate_fn=evaluate_fn, expected_sites=expected_sites,
            on_result=on_result, max_pull_interval=DEPLOYMENT_MAX_PULL_INTERVAL if config is None else None,
            admitted=admitted_sites(dict(context.run_config)),
        )  # fmt: skip

    return server_app


def write_deployment_results(result: RunResult) -> None:
    """The deployment ServerApp's last step: results.json and metrics.png in the run directory.

    In deployment the ServerApp runs in a process of its own (started for the SuperLink), so it
    writes the results itself; ``sangsaeng coordinator run`` then only reads them.
    """
    from coordinator.report import write_results  # matplotlib and rich only when a run ends

    write_results(result)


app = make_server_app(on_result=write_deployment_results)
