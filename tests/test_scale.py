"""Large simulated federations: the seeded Dirichlet split, evaluation on a sample of sites, summarised tables."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays

from models.dirichlet import DirichletSplit, write_dirichlet_sites
from models.errors import TaskSpecError
from models.tasks import get_task
from tests.conftest import explain, sangsaeng


def _failure_share(split: DirichletSplit) -> np.ndarray:
    return split.mix[:, list(split.classes).index(1)]


def test_the_dirichlet_split_is_seeded_and_reproducible(tmp_path, ai4i):
    spec = get_task("predictive-maintenance")
    first, plan = write_dirichlet_sites(ai4i, spec, tmp_path / "a", n_sites=30, alpha=0.5, seed=3)
    again, _ = write_dirichlet_sites(ai4i, spec, tmp_path / "b", n_sites=30, alpha=0.5, seed=3)
    other, _ = write_dirichlet_sites(ai4i, spec, tmp_path / "c", n_sites=30, alpha=0.5, seed=4)
    assert list(first) == list(again) and len(first) == 30
    for name in first:
        assert first[name].read_bytes() == again[name].read_bytes()
    assert any(first[n].read_bytes() != other[n].read_bytes() for n in first)
    sizes = [len(pd.read_csv(p)) for p in first.values()]
    assert sizes == plan.sizes.tolist() and min(sizes) >= 20
    assert json.loads((tmp_path / "a" / "sites" / "dirichlet.json").read_text())["rows"] == sum(sizes)


def test_sizes_and_labels_follow_alpha(ai4i):
    labels = ai4i["Machine failure"]
    skewed = DirichletSplit.plan(labels, n_sites=2000, alpha=0.1, seed=0, rows_per_site=60)
    even = DirichletSplit.plan(labels, n_sites=2000, alpha=100.0, seed=0, rows_per_site=60)
    # Mean rows per site as asked; a small alpha spreads the sizes far more than a large one.
    assert skewed.sizes.mean() == pytest.approx(60) and even.sizes.mean() == pytest.approx(60)
    assert skewed.sizes.std() > 5 * even.sizes.std()
    # Class mixes: near the table's failure rate at a large alpha, scattered (many all-normal sites) at a small one.
    rate = labels.mean()
    assert abs(_failure_share(even).mean() - rate) < 0.01 and _failure_share(even).std() < 0.03
    assert _failure_share(skewed).std() > 3 * _failure_share(even).std()
    assert (_failure_share(skewed) < 1e-3).mean() > 0.5


def test_the_split_refuses_bad_settings(ai4i):
    with pytest.raises(TaskSpecError, match="alpha must be positive"):
        DirichletSplit.plan(ai4i["Machine failure"], n_sites=5, alpha=0.0)
    with pytest.raises(TaskSpecError, match="at least 1 site"):
        DirichletSplit.plan(ai4i["Machine failure"], n_sites=0, alpha=1.0)


@pytest.mark.slow  # about 100 s on 2 busy cores: 50 sites profiled, 2 rounds, 50 local-only baselines
def test_simulate_50_dirichlet_sites_evaluating_on_a_sample(tmp_path):
    out = tmp_path / "run"
    done = sangsaeng("simulate", "--task", "predictive-maintenance", "--sites", "50", "--dirichlet", "0.5",
                     "--fraction-fit", "0.2", "--fraction-evaluate", "0.2", "--rounds", "2", "--local-epochs", "1",
                     "--min-sites", "2", "--out", str(out))  # fmt: skip
    assert done.exit_code == 0, explain(done)
    assert "50 supplier sites drawn from ai4i2020.csv" in done.output
    results = json.loads((out / "results.json").read_text())
    assert len(results["sites"]) == 50
    for record in results["rounds"]:
        assert len(record["sites_trained"]) == 10
    summary = results["local_only_summary"]
    assert summary["sample"] == {"sites": 50, "of": 50, "seed": 0, "limit": 200}
    assert set(summary["quantiles"]) == {"0.1", "0.25", "0.5", "0.75", "0.9"}
    assert len(summary["worst_ten"]) == 10
    key = results["task"]["primary_metric"]
    worst = [e[key] for e in summary["worst_ten"]]
    assert worst == sorted(worst) and worst[0] <= summary["quantiles"]["0.1"]
    # The table summarises 50 sites: quantile and worst-ten rows, no row per site.
    assert "quantile of" in done.output and "local-only, worst:" in done.output
    assert "local-only: site-" not in done.output


def test_the_streaming_mean_equals_flowers_weighted_average():
    from flwr.server.strategy.aggregate import aggregate

    from coordinator.streaming import streaming_weighted_mean

    rng = np.random.default_rng(0)
    updates = [([rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32)], int(n))
               for n in rng.integers(1, 50, size=7)]  # fmt: skip
    mine = streaming_weighted_mean(iter([([a.copy() for a in arrays], n) for arrays, n in updates]))
    theirs = aggregate(updates)
    for a, b in zip(mine, theirs, strict=True):
        assert a.dtype == np.float32 and np.allclose(a, b, atol=1e-6)
    with pytest.raises(ValueError, match="at least one update"):
        streaming_weighted_mean(iter([]))


def test_streaming_fedavg_aggregates_as_flowers_fedavg():
    from flwr.server.strategy import FedAvg

    from coordinator.streaming import StreamingFedAvg

    rng = np.random.default_rng(1)
    updates = [(rng.normal(size=(5, 2)).astype(np.float32), int(n)) for n in rng.integers(1, 9, size=5)]

    def replies():  # fresh replies each time: the streaming mean releases each reply's bytes
        ok = Status(Code.OK, "")
        return [(None, FitRes(ok, ndarrays_to_parameters([a]), n, {"x": float(n)})) for a, n in updates]

    theirs, _ = FedAvg().aggregate_fit(1, replies(), [])
    mine, _ = StreamingFedAvg().aggregate_fit(1, replies(), [])
    assert mine is not None and theirs is not None
    assert np.allclose(parameters_to_ndarrays(mine)[0], parameters_to_ndarrays(theirs)[0], atol=1e-6)
