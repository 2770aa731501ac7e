"""Krum, Multi-Krum and Bulyan (issue 18 item 5): hand-computed selections on small arrays, the
refusals of rounds and runs with too few updates, what they cannot be combined with, resume, and
one lean simulation in which a boosted supplier does not drag Krum's model.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.compat.grid_client_proxy import GridClientProxy

from coordinator.aggregation import AGGREGATIONS, sites_per_round
from coordinator.checkpoint import RunRecorder, load_resume_point
from coordinator.config import ROBUST_STRATEGIES, FederationConfig
from coordinator.strategies import SangsaengStrategy, SiteClientManager, build_strategy, strategy_state
from models.scaler import FederatedScaler
from models.tasks import get_task

PM = get_task("predictive-maintenance")
SHAPES = [(2,), (1,)]


def proxy(node_id: int) -> GridClientProxy:
    return GridClientProxy(node_id=node_id, grid=None, run_id=1)  # type: ignore[arg-type]


def point(value: float) -> list[np.ndarray]:
    """An update on the line (v, -2v, 3v): squared distances are 14 x (v - w)^2, the selection that of v."""
    return [np.array([value, -2 * value], np.float32), np.array([3 * value], np.float32)]


def wrapped(tmp_path, name: str, sites: int, **options) -> SangsaengStrategy:
    """`SangsaengStrategy` over ``name``, round 1 configured for ``sites`` sites: ready for `aggregate_fit`."""
    config = FederationConfig(task=PM, strategy=name, out_dir=tmp_path, min_sites=sites, **options)
    initial = [np.zeros(s, np.float32) for s in SHAPES]
    recorder = RunRecorder(tmp_path, header={"schema_hash": PM.schema_hash(), "scaler": "{}"})
    scaler = FederatedScaler(PM.name, (), {}, {}, {}, 0.0, 1.0, 10, 1)
    strategy = SangsaengStrategy(build_strategy(config, initial, sites=sites), config=config, scaler=scaler,
                                 recorder=recorder)  # fmt: skip
    manager = SiteClientManager()
    for i in range(1, sites + 1):
        manager.register(proxy(i))
    strategy.configure_fit(1, ndarrays_to_parameters(initial), manager)
    return strategy


def round_of(strategy: SangsaengStrategy, values, examples=None) -> list[np.ndarray] | None:
    examples = examples or [10] * len(values)
    results = [
        (proxy(i + 1), FitRes(Status(Code.OK, ""), ndarrays_to_parameters(point(v)), n, {"site": f"s{i}"}))
        for i, (v, n) in enumerate(zip(values, examples, strict=True))
    ]
    params, _ = strategy.aggregate_fit(1, results, [])
    return None if params is None else parameters_to_ndarrays(params)


def assert_is_point(got: list[np.ndarray] | None, value: float) -> None:
    assert got is not None
    for array, want in zip(got, point(value), strict=True):
        np.testing.assert_allclose(array, want, rtol=1e-6, atol=1e-6)


# Five sites, f = 1, the last one poisoned. Krum scores each update by the squared distances to
# its n - f - 2 = 2 nearest others (in units of 14, see `point`):
#   0: 1 (to 1) + 4 (to 2) = 5      1: 1 + 1 = 2      2: 1 + 2.25 = 3.25
#   3.5: 2.25 + 6.25 = 8.5          100: 96.5^2 + 97^2
FIVE = [0.0, 1.0, 2.0, 3.5, 100.0]


def test_krum_takes_the_update_with_the_lowest_hand_computed_score(tmp_path):
    assert_is_point(round_of(wrapped(tmp_path, "krum", 5), FIVE), 1.0)


def test_multikrum_averages_the_m_best_scored_updates_weighted_by_examples(tmp_path):
    # m = 3: updates 1, 2 and 0 (scores 2, 3.25, 5), equal weights: (0 + 1 + 2) / 3
    assert_is_point(round_of(wrapped(tmp_path / "m3", "multikrum", 5, multikrum_keep=3), FIVE), 1.0)
    # m = n - f = 4 by default: all but the boosted one, by examples: (1x0 + 1x1 + 2x2 + 4x3.5) / 8
    got = round_of(wrapped(tmp_path / "m4", "multikrum", 5), FIVE, examples=[1, 1, 2, 4, 10_000])
    assert_is_point(got, 19 / 8)


def test_bulyan_selects_n_minus_2f_by_krum_then_averages_the_n_minus_4f_nearest_the_median(tmp_path):
    # Seven sites, f = 1. Krum picks theta = n - 2f = 5 one at a time (scores over the n - 3 nearest):
    #   {0,1,3,4,6,9,100}: 3 (1+1+4+16... = 23, lowest); {0,1,4,6,9,100}: 4 (29); {0,1,6,9,100}: 1 (26);
    #   {0,6,9,100}: 6 and 9 tie at 9, Flower keeps the first listed, 6; {0,9,100}: 0 and 9 tie, 0.
    # Selected {0, 1, 3, 4, 6}: median 3; the beta = n - 4f = 3 values nearest it, 3, 4, 1: mean 8/3.
    assert_is_point(round_of(wrapped(tmp_path, "bulyan", 7), [0, 1, 3, 4, 6, 9, 100]), 8 / 3)


@pytest.mark.parametrize(
    ("name", "sites", "problem"),
    [
        ("krum", 4, "krum assumes up to 1 poisoned site(s) (byzantine_sites) and needs n > 2f + 2, at least "
                    "2f + 3 = 5 updates per round, got 4"),
        ("multikrum", 4, "multikrum assumes up to 1 poisoned site(s) (byzantine_sites) and needs n > 2f + 2, at "
                         "least 2f + 3 = 5 updates per round, got 4"),
        ("bulyan", 6, "bulyan assumes up to 1 poisoned site(s) (byzantine_sites) and needs n >= 4f + 3 = 7 "
                      "updates per round, got 6"),
    ],
)  # fmt: skip
def test_a_round_with_too_few_updates_is_not_aggregated_and_says_why(tmp_path, name, sites, problem):
    strategy = wrapped(tmp_path, name, sites)
    assert round_of(strategy, [float(v) for v in range(sites)]) is None
    record = json.loads((tmp_path / "manifest.json").read_text())["rounds"][0]
    assert record["failures"] == [f"round 1: {problem}: not aggregated, the global model stays"]
    assert "checkpoint" not in record  # the global model stays the one sent


def test_multikrum_with_a_larger_m_needs_m_plus_f_updates(tmp_path):
    config = FederationConfig(task=PM, strategy="multikrum", out_dir=tmp_path, multikrum_keep=6)
    aggregation = AGGREGATIONS["multikrum"]()
    assert "needs m + f = 7 updates per round, got 6" in str(aggregation.shortfall(config, 6))
    assert aggregation.shortfall(config, 7) is None


def test_the_run_is_refused_when_too_few_sites_are_sampled_per_round(tmp_path):
    config = FederationConfig(task=PM, strategy="krum", out_dir=tmp_path, fraction_fit=0.5, min_sites=2)
    assert sites_per_round(config, 8) == 4  # Flower's sampling: max(int(8 x 0.5), min_sites)
    assert "got 4" in str(AGGREGATIONS["krum"]().shortfall(config, sites_per_round(config, 8)))
    assert AGGREGATIONS["krum"]().shortfall(config, sites_per_round(config, 10)) is None
    no_f = config.replace(byzantine_sites=0)  # f = 0: three updates are enough
    assert AGGREGATIONS["krum"]().shortfall(no_f, 3) is None


@pytest.mark.parametrize("name", ["krum", "multikrum", "bulyan"])
@pytest.mark.parametrize(
    ("options", "problem"),
    [({"central_dp_noise": 1.0}, "calibrated to a mean"), ({"secagg": True}, "only reveals the sum")],
)
def test_krum_and_bulyan_refuse_supplier_level_dp_and_secure_aggregation(tmp_path, name, options, problem):
    assert name in ROBUST_STRATEGIES
    with pytest.raises(ValueError, match=problem):
        FederationConfig(task=PM, strategy=name, out_dir=tmp_path, **options)
    FederationConfig(task=PM, strategy=name, out_dir=tmp_path, dp_epsilon=3.0)  # per-site DP-SGD composes


@pytest.mark.parametrize(
    ("options", "problem"),
    [({"byzantine_sites": -1}, "byzantine_sites must be 0 or more"), ({"multikrum_keep": -2}, "multikrum_keep")],
)
def test_krum_settings_are_checked(tmp_path, options, problem):
    with pytest.raises(ValueError, match=problem):
        FederationConfig(task=PM, strategy="multikrum", out_dir=tmp_path, **options)


@pytest.mark.parametrize("name", ["krum", "multikrum", "bulyan"])
def test_a_robust_run_resumes_from_its_checkpoint(tmp_path, name):
    """Krum and Bulyan keep no state between rounds: the checkpointed model is the whole resume point."""
    sites = 7
    strategy = wrapped(tmp_path, name, sites)
    got = round_of(strategy, [0, 1, 3, 4, 6, 9, 100])
    point_ = load_resume_point(tmp_path, schema_hash=PM.schema_hash())
    assert point_ is not None and point_.round == 1 and point_.strategy_state == {} == strategy_state(strategy)
    assert got is not None
    for saved, aggregated in zip(point_.weights, got, strict=True):
        np.testing.assert_array_equal(saved, aggregated)
    config = FederationConfig.from_run_config({**strategy.config.to_run_config(), "resume": True})
    assert config.strategy == name and config.byzantine_sites == 1 and config.multikrum_keep == 0


@pytest.mark.slow
def test_krum_keeps_a_boosted_supplier_from_dragging_the_model_in_a_simulation(ai4i, tmp_path):
    """Five AI4I suppliers in Flower's simulation runtime, one sending 100 x its update (a real ClientApp mod)."""
    import pandas as pd

    from bench.attacks import update_scaling_mod
    from coordinator.simulation import evaluate_weights, run_flower_simulation, write_site_files
    from models.datasets import holdout_split
    from models.nets import get_weights
    from models.schema import load_site_data

    rows = ai4i.sample(n=5000, random_state=0)
    rows = rows.assign(supplier=[f"s{i % 5}" for i in range(len(rows))])
    site_files, _ = write_site_files(rows, "supplier", tmp_path, spec=PM)
    config = FederationConfig(task=PM, strategy="krum", num_rounds=2, local_epochs=2, min_sites=5,
                              fraction_evaluate=0.0, out_dir=tmp_path / "krum")  # fmt: skip
    config.out_dir.mkdir()
    result = run_flower_simulation(PM, site_files, config, observer=None, evaluate_fn=None, site_policies={},
                                   client_mods=[update_scaling_mod(100.0, site="s4")])  # fmt: skip

    assert result.status == "completed" and result.weights is not None
    assert [r["sites_trained"] for r in result.rounds] == [["s0", "s1", "s2", "s3", "s4"]] * 2
    held_out = pd.concat([holdout_split(load_site_data(p, PM), PM, seed=config.seed)[1] for p in site_files.values()])
    initial = get_weights(config.new_model(result.scaler.n_inputs, seed=config.seed))
    before = evaluate_weights(initial, PM, result.scaler, config, held_out)["roc_auc"]
    after = evaluate_weights(list(result.weights), PM, result.scaler, config, held_out)["roc_auc"]
    assert after > max(0.8, before + 0.2), (before, after)


def test_the_bench_attackers_scale_the_update_and_flip_binary_labels(ai4i):
    from bench.attacks import flip_labels, scaled_update

    sent, trained = [np.ones(3, np.float32)], [np.array([1.5, 1.0, 0.0], np.float32)]
    np.testing.assert_allclose(scaled_update(sent, trained, 100.0)[0], [51.0, 1.0, -99.0])
    np.testing.assert_allclose(scaled_update(sent, trained, -1.0)[0], [0.5, 1.0, 2.0])
    rows = ai4i.head(500)
    flipped = flip_labels(rows, PM)
    assert (flipped[PM.label] == 1 - rows[PM.label]).all() and flipped[PM.label].sum() == 500 - rows[PM.label].sum()
    with pytest.raises(ValueError, match="flips 0/1 labels"):
        flip_labels(rows, get_task("failure-mode"))
