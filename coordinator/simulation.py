"""One-machine experiments: a network of supplier sites trained in Flower's simulation runtime,
compared on the same held-out rows with centralised training and each site training alone.

Used by ``sangsaeng demo`` and ``sangsaeng simulate`` and by the utility benchmark.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from flwr.clientapp.typing import Mod

from client.client_app import make_client_app
from client.site import SiteConfig, SiteRoster
from coordinator.config import FederationConfig
from coordinator.engine import delivering_in_one_pass
from coordinator.held_out import HeldOutEvaluation
from coordinator.progress import RunObserver
from coordinator.report import Comparison, write_results
from coordinator.run_result import RunResult
from coordinator.server_app import make_server_app
from models.datasets import holdout_split, split_by
from models.errors import SiteDataError, TaskSpecError
from models.metrics import mean_of
from models.nets import set_weights
from models.scaler import FederatedScaler
from models.schema import load_site_data
from models.tasks import TaskSpec
from models.training import TrainConfig, last_windows, predict, prepare, task_metrics, train_local
from privacy.policy import SitePrivacyPolicy
from sangsaeng.errors import SangsaengError

__all__ = [
    "BASELINE_SITES",
    "SiteSplit",
    "write_site_files",
    "run_experiment",
    "run_flower_simulation",
    "evaluate_weights",
]

logger = logging.getLogger("sangsaeng.coordinator")

BASELINE_SITES = 200
"""Most sites whose local-only baselines a simulation trains (a seeded sample above it)."""


@dataclass(frozen=True)
class SiteSplit:
    """A site's validated rows and its fixed held-out split."""

    name: str
    train: pd.DataFrame
    test: pd.DataFrame


def write_site_files(
    frame: pd.DataFrame,
    column: str,
    out_dir: Path,
    *,
    spec: TaskSpec,
    min_rows: int = 20,
    base_dir: Path | None = None,
) -> tuple[dict[str, Path], dict[str, int]]:
    """Split a table by `column` into one export per supplier site under `out_dir/sites/`.

    An image task's relative image paths are relative to the table's folder, `base_dir`: the
    site manifests get them resolved (absolute), since they are written elsewhere.
    """
    spec.check_columns(list(frame.columns), source="data")
    if spec.image is not None and base_dir is not None:
        frame = frame.assign(**{spec.image.column: [_absolute(p, base_dir) for p in frame[spec.image.column]]})
    sites, dropped = split_by(frame, column, min_rows=min_rows)
    if not sites:
        raise TaskSpecError(f"splitting by '{column}' gives no site with at least {min_rows} rows")
    site_dir = Path(out_dir) / "sites"
    site_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, part in sites.items():
        paths[name] = site_dir / f"{name}.csv"
        part.to_csv(paths[name], index=False)
    return paths, dropped


def _absolute(value: object, base_dir: Path) -> object:
    if not isinstance(value, str) or not value.strip():
        return value  # the site's validation names the row
    path = Path(value.strip())
    return str(path if path.is_absolute() else (Path(base_dir) / path).resolve())


def _load_splits(spec: TaskSpec, site_files: Mapping[str, Path], seed: int) -> tuple[list[SiteSplit], dict[str, str]]:
    splits, problems = [], {}
    for name, path in site_files.items():
        try:
            frame = load_site_data(path, spec)
            train, test = holdout_split(frame, spec, seed=seed, source=str(path))
        except SiteDataError as exc:
            problems[name] = str(exc)
            continue
        if spec.sequence is not None:
            # Pooled (centralised, held-out) tables must not join two sites' groups of the same name
            # into one series: each site's group becomes (site, group), so windows stay within a site.
            train, test = _own_groups(train, spec.sequence.group, name), _own_groups(test, spec.sequence.group, name)
        splits.append(SiteSplit(name, train, test))
    return splits, problems


def _own_groups(frame: pd.DataFrame, group: str, site: str) -> pd.DataFrame:
    return frame.assign(**{group: [f"{site}/{g}" for g in frame[group]]})


def _train_alone(
    spec: TaskSpec, train: pd.DataFrame, config: FederationConfig, seed_offset: int
) -> tuple[Any, FederatedScaler]:
    scaler = FederatedScaler.fit_pooled(train, spec)
    model = config.new_model(scaler.n_inputs, outputs=scaler.n_outputs, seed=config.seed)
    x, y = prepare(train, spec, scaler)
    train_local(
        model, x, y, spec=spec, scaler=scaler,
        config=TrainConfig(
            epochs=config.num_rounds * config.local_epochs, batch_size=config.batch_size,
            lr=config.lr, weight_decay=config.weight_decay, seed=config.seed + seed_offset,
            class_weight=config.class_weight,
        ),
    )  # fmt: skip
    return model, scaler


def _score(model: Any, spec: TaskSpec, scaler: FederatedScaler, frame: pd.DataFrame) -> dict[str, float]:
    x, y = prepare(frame, spec, scaler)
    return task_metrics(
        spec, y, predict(model, x, spec=spec, scaler=scaler), last_windows(frame, spec), classes=scaler.classes
    )


def evaluate_weights(
    weights: list[np.ndarray], spec: TaskSpec, scaler: FederatedScaler, config: FederationConfig, frame: pd.DataFrame
) -> dict[str, float]:
    """The metrics of a model with `weights` (fitted to `scaler`) on the rows of `frame`."""
    model = config.new_model(scaler.n_inputs, outputs=scaler.n_outputs)
    set_weights(model, weights)
    return _score(model, spec, scaler, frame)


def run_experiment(
    spec: TaskSpec,
    site_files: Mapping[str, Path],
    config: FederationConfig,
    *,
    observer: RunObserver | None = None,
    dropped: Mapping[str, int] | None = None,
    site_policies: Mapping[str, SitePrivacyPolicy] | None = None,
    client_mods: Sequence[Mod] = (),
    baseline_sites: int = BASELINE_SITES,
) -> dict[str, Any]:
    """Centralised vs local-only vs federated on the same held-out rows; writes results.json.

    `client_mods` are extra ClientApp mods for every simulated site (test tools, such as
    `client.contribution.misbehaving_mod`). A federation of more than `baseline_sites` sites
    is compared on a seeded sample of that many sites: the coordinator reads only the sampled
    sites' files (each site reads its own, in its ClientApp), and the held-out rows, the
    centralised model, the local-only baselines and the federated per-site scores are theirs;
    results.json's ``local_only_summary.sample`` says which share. The federation itself
    trains on every site.
    """
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = list(site_files)
    sampled_names = _sample_names(names, baseline_sites, config.seed)
    splits, problems = _load_splits(spec, {name: site_files[name] for _, name in sampled_names}, config.seed)
    if not splits:
        raise SiteDataError(out_dir, "no site has usable data: " + "; ".join(problems.values()))
    index = {name: i for i, name in sampled_names}
    # The seed offset of a site's baseline: its place among the loaded sites (all read), or among all sites.
    sampled = list(enumerate(splits)) if len(names) <= baseline_sites else [(index[s.name], s) for s in splits]
    held_out = pd.concat([s.test for s in splits], ignore_index=True)
    timings: dict[str, float] = {}
    held_out_evaluation = HeldOutEvaluation(spec, config, held_out)  # the ServerApp binds the run's scaler

    start = time.perf_counter()
    result = run_flower_simulation(
        spec,
        site_files,
        config,
        observer=observer,
        evaluate_fn=held_out_evaluation,
        site_policies=site_policies or {},
        client_mods=client_mods,
    )
    timings["federated_s"] = time.perf_counter() - start

    aggregated = result.aggregated_rounds
    if result.status == "failed" and result.error and not aggregated:  # refused before round 1: say why
        raise SangsaengError(f"{out_dir}: {result.error}")
    if not aggregated or result.weights is None:
        failures = sorted({f for r in result.rounds for f in r.get("failures", [])})
        hint = ""
        if any("budget exhausted" in f for f in failures):
            hint = (
                f" Each simulated site keeps its privacy ledger in {Path(next(iter(site_files.values()))).parent}"
                "/.sangsaeng-privacy, across runs on the same data, as a real site does: start from a new --out "
                "for new simulated sites, or give them a larger budget."
            )
        raise SangsaengError(f"{out_dir}: no round aggregated an update; every site refused or failed: "
                             f"{'; '.join(failures) or 'no site replied'}.{hint}")  # fmt: skip
    weights = list(result.weights)
    # Multiclass classes left undeclared are the federation's: the baselines, each trained on
    # fewer rows, get the same ones, so a site lacking a class still scores on every held-out row.
    baseline = dataclasses.replace(spec, classes=result.scaler.classes) if result.scaler.classes else spec

    start = time.perf_counter()
    pooled = pd.concat([s.train for s in splits], ignore_index=True)
    model, scaler = _train_alone(baseline, pooled, config, 0)
    centralized = _score(model, baseline, scaler, held_out)
    timings["centralized_s"] = time.perf_counter() - start

    start = time.perf_counter()
    local_only, local_only_own = {}, {}
    for i, split in sampled:
        model, scaler = _train_alone(baseline, split.train, config, i + 1)
        local_only[split.name] = _score(model, baseline, scaler, held_out)
        local_only_own[split.name] = _score(model, baseline, scaler, split.test)  # "your line alone"
    timings["local_only_s"] = time.perf_counter() - start

    # The last round's centralised evaluation scored these weights on these rows with the run's scaler;
    # a resumed run that had nothing left to train has not scored them in this process.
    federated_global = held_out_evaluation.scored(weights, result.scaler)
    if federated_global is None:
        federated_global = evaluate_weights(weights, spec, result.scaler, config, held_out)
    site_rows: dict[str, dict[str, int | None]]
    if len(names) <= baseline_sites:  # every file was read here: the sites and problems as this process saw them
        site_rows = {s.name: {"train": len(s.train), "held_out": len(s.test)} for s in splits}
        excluded = problems
        taking_part = [n for n in names if n in site_rows]
    else:  # the sites' own replies (profiles, then first replies): this process read only the sample
        site_rows = {n: {"train": s.n_train, "held_out": s.n_test} for n, s in result.sites.items()}
        excluded = {**_by_site(result.excluded_sites), **problems}
        # Above `profile_sites`, a site not profiled that never replied has no row counts: it took part all the same.
        taking_part = [n for n in names if n not in excluded]
    comparison = Comparison(
        sites=taking_part,
        site_rows=site_rows,
        excluded_sites=excluded,
        dropped_groups=dict(dropped or {}),
        held_out_rows=len(held_out),
        centralized=centralized,
        local_only=local_only,
        local_only_summary={
            **_summary(spec, local_only),
            "sample": {"sites": len(sampled), "of": len(taking_part), "seed": config.seed, "limit": baseline_sites},
        },
        federated_global=federated_global,
        federated_per_site={s.name: evaluate_weights(weights, spec, result.scaler, config, s.test) for _, s in sampled},
        timings=timings,
        local_only_own=local_only_own,
    )
    results, plot = write_results(result, comparison, out_dir=out_dir)
    results["plot"] = str(plot)
    return results


def _sample_names(names: Sequence[str], limit: int, seed: int) -> list[tuple[int, str]]:
    """Every site (with its index) up to `limit`; above it a seeded sample of `limit`, in input order."""
    if len(names) <= limit:
        return list(enumerate(names))
    picked = np.sort(np.random.default_rng([seed, 18]).choice(len(names), size=limit, replace=False))
    return [(int(i), names[i]) for i in picked]


def _by_site(excluded: Mapping[str, str]) -> dict[str, str]:
    """The run's excluded sites (by node id) by the site name their problem starts with ("site 'NAME': ...")."""
    named = {}
    for node, problem in excluded.items():
        match = re.match(r"site '([^']+)': ", problem)
        named[match.group(1) if match else f"node {node}"] = problem
    return named


SITE_ROSTER = "site-roster.json"
"""The simulated sites' settings (`client.site.SiteRoster`), in the run directory."""

SIMULATION_WAIT_S = 600.0
"""The least a simulation waits for its sites (``node_wait_timeout`` is raised to it): its clock starts
before Ray has started its workers, and each worker's first message imports torch, which on 2 busy cores
(load 18) took the whole of a 124 s wait at 4 sites. A simulated site that never answers is a broken engine,
so a long wait costs nothing in a run that works."""

PROFILE_S_PER_SITE = 1.0
"""Seconds the profile wait grows by per simulated site, beyond ``node_wait_timeout``.

The sites answer one after another on this machine's few cores, shared with whatever else
runs there: at a load of 20 on 2 cores, 100 sites missed a 120 s wait altogether. The wait
is a bound for a site that never answers, not the time a profile takes.
"""

_QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def _summary(spec: TaskSpec, local_only: Mapping[str, Mapping[str, float]]) -> dict[str, Any]:
    """The local-only figures in a few rows: mean, quantiles of the primary metric and the worst ten sites."""
    rows = [dict(v) for v in local_only.values()]
    key = spec.primary_metric
    scored = [(name, m[key]) for name, m in local_only.items() if not np.isnan(m[key])]
    worst_first = sorted(scored, key=lambda t: t[1], reverse=not spec.higher_is_better)
    worst_name = worst_first[0][0] if worst_first else None
    values = np.array([v for _, v in scored])
    return {
        "mean": mean_of(rows),
        "worst": {"site": worst_name, **(dict(local_only[worst_name]) if worst_name else {})},
        "quantiles": {f"{q:g}": float(np.quantile(values, q)) for q in _QUANTILES} if len(values) else {},
        "worst_ten": [{"site": name, key: value} for name, value in worst_first[:10]],
        "unscored": len(local_only) - len(scored),  # sites whose metric is undefined (one class in the held-out rows)
    }


def run_flower_simulation(
    spec: TaskSpec,
    site_files: Mapping[str, Path],
    config: FederationConfig,
    *,
    observer: RunObserver | None,
    evaluate_fn: Any,
    site_policies: Mapping[str, SitePrivacyPolicy],
    client_mods: Sequence[Mod] = (),
) -> RunResult:
    """Run the ServerApp and one ClientApp per site in Flower's simulation runtime; return its result.

    The federated run alone (`run_experiment` adds the centralised and local-only baselines and
    results.json): benchmarks that repeat a federation under other settings call this directly.

    Flower's `run_simulation` runs the ServerApp in a thread of this process, so its
    `RunResult` comes back through the app's ``on_result`` callback, not through files.
    ``client_mods`` go into every site's ClientApp (`client.client_app.make_client_app`).
    """
    from flwr.app import ConfigRecordValues
    from flwr.simulation import run_simulation

    from sangsaeng.extras import require

    require("coordinator", "Flower's simulation engine", modules=["ray"])
    # Every simulated site answers the profile request on this machine's few cores, one after another:
    # a fixed wait would leave out the sites still queued at 1,000 sites and more (measured: 300 of 1,000 at 120 s).
    wait = max(config.node_wait_timeout, SIMULATION_WAIT_S) + PROFILE_S_PER_SITE * len(site_files)
    if wait != config.node_wait_timeout:
        config = dataclasses.replace(config, node_wait_timeout=wait)
    # In a file, not in the ClientApp: Flower pickles the ClientApp with every message it hands to a worker.
    sites = SiteRoster(
        (
            SiteConfig(
                name=name,
                data_path=Path(path).resolve(),
                holdout_seed=config.seed,
                privacy=site_policies.get(name, SitePrivacyPolicy()),
            )
            for name, path in site_files.items()
        ),
        Path(config.out_dir) / SITE_ROSTER,
    )
    results: list[RunResult] = []
    server_app = make_server_app(
        config, observer=observer, evaluate_fn=evaluate_fn, expected_sites=len(sites), on_result=results.append
    )
    client_app = make_client_app(sites, extra_mods=client_mods)
    cpus = max(1, os.cpu_count() or 1)
    backend_config: dict[str, dict[str, ConfigRecordValues]] = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"num_cpus": cpus, "logging_level": "ERROR", "log_to_driver": False},
    }
    with _flower_logs_to(Path(config.out_dir) / "flower.log"), delivering_in_one_pass():
        run_simulation(
            server_app=server_app, client_app=client_app, num_supernodes=len(sites), backend_config=backend_config
        )
    if not results:  # the ServerApp raises when a run fails; this is only a broken runtime
        raise SangsaengError(f"{config.out_dir}: the simulation ended without a result from the ServerApp")
    return results[-1]


class _flower_logs_to:
    """Send Flower's console log to a file while a run shows its own progress display."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> None:
        self.logger = logging.getLogger("flwr")
        self.saved = list(self.logger.handlers)
        self.propagate = self.logger.propagate
        self.logger.propagate = False  # some libraries configure the root logger on import
        self.handler = logging.FileHandler(self.path, encoding="utf-8")
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        for h in self.saved:
            self.logger.removeHandler(h)
        self.logger.addHandler(self.handler)

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self.handler)
        self.logger.propagate = self.propagate
        self.handler.close()
        for h in self.saved:
            self.logger.addHandler(h)
