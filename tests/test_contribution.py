"""Contribution scores (issue 16): GTG-Shapley on synthetic score functions, pooled metrics, and one real run.

The unit tests drive `coordinator.contribution` with cheap score functions over reconstructed
coalition models; the federation at the end runs the whole path (the real ServerApp and
ClientApps through `tests.loopback`, batched evaluation at the sites, results.json) with a
free-riding site.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from coordinator.config import FederationConfig
from coordinator.contribution import (
    LOO_MAX_SITES,
    coalition_model,
    contribution_result,
    plan_coalitions,
    round_contribution,
)
from coordinator.contribution_grid import contribution_summary
from models.errors import TaskSpecError
from models.metric_counts import metric_counts, pooled_metric
from models.tasks import get_task

BLOCK = 4


def coverage(models):
    """The number of data blocks a model has learned (a block is learned once any member's data moved it)."""
    return [float(sum(np.any(np.abs(m[0][b * BLOCK : (b + 1) * BLOCK]) > 1e-9) for b in range(8))) for m in models]


def block_update(block: int) -> list[np.ndarray]:
    """A site whose data teaches block `block` only (from a zero global model)."""
    w = np.zeros(8 * BLOCK)
    w[block * BLOCK : (block + 1) * BLOCK] = 1.0
    return [w]


TARGET = np.linspace(-1, 1, 12)


def closeness(models):
    """Higher is better: minus the distance to the true weights."""
    return [-float(np.linalg.norm(m[0] - TARGET)) for m in models]


def honest(global_w: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """Half way to the truth, seen through the site's own noisy data."""
    return [global_w + 0.5 * (TARGET + rng.normal(0, 0.05, TARGET.shape) - global_w)]


def test_coalition_models_travel_stacked_one_array_per_weight_and_unpack_to_the_same_models():
    # A message holds as many arrays as one model (Flower fetches each array as an object of its own).
    from client.contribution import unpack_models
    from coordinator.contribution_grid import stack_models

    rng = np.random.default_rng(0)
    models = [[rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32)] for _ in range(5)]
    arrays = stack_models(models)
    assert [a.shape for a in arrays] == [(5, 4, 3), (5, 3)]
    for got, sent in zip(unpack_models(arrays, 5), models, strict=True):
        for a, b in zip(got, sent, strict=True):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(TaskSpecError, match="not 4 stacked models"):
        unpack_models(arrays, 4)


def test_coalition_model_is_the_weighted_mean_of_the_members_updates():
    g = [np.zeros(2)]
    updates = [[np.array([1.0, 0.0])], [np.array([0.0, 4.0])]]
    assert np.allclose(coalition_model(g, updates, [3, 1], [0, 1])[0], [0.75, 1.0])
    assert np.allclose(coalition_model(g, updates, [3, 1], [])[0], [0.0, 0.0])


def test_exact_shapley_is_efficient_and_an_exact_copy_does_not_double_the_credit():
    g = [np.zeros(8 * BLOCK)]
    alone = round_contribution(g, [block_update(0), block_update(1), block_update(2)], [100, 100, 100], coverage)
    copied = round_contribution(
        g, [block_update(0), block_update(0), block_update(1), block_update(2)], [100, 100, 100, 100], coverage
    )
    assert alone.exact and copied.exact
    assert sum(alone.utilities) == pytest.approx(alone.gain) == pytest.approx(3.0)
    assert sum(copied.utilities) == pytest.approx(copied.gain)
    # The copy and its original share the credit for the one block their data teaches.
    assert copied.utilities[0] == pytest.approx(copied.utilities[1])
    assert copied.utilities[0] + copied.utilities[1] < 1.5 * alone.utilities[0]
    # Leave-one-out sees neither: without either one, the other still teaches the block.
    assert copied.leave_one_out is not None and copied.leave_one_out[0] == pytest.approx(0.0)


@pytest.mark.parametrize("bad", ["free_rider", "noise"])
def test_a_free_rider_and_a_noise_sender_score_near_zero_and_are_flagged(bad):
    rng = np.random.default_rng(0)
    g = [np.zeros_like(TARGET)]
    rounds = []
    names = ["a", "b", "c", bad]
    for _ in range(3):
        misbehaving = [g[0].copy()] if bad == "free_rider" else [rng.normal(0, 1, TARGET.shape)]
        updates = [honest(g[0], rng) for _ in range(3)] + [misbehaving]
        values = round_contribution(g, updates, [100.0] * 4, closeness, budget=32, seed=1)
        rounds.append({**values.__dict__, "sites": names})
        g = coalition_model(g, updates, [100.0] * 4, range(4))  # FedAvg: the next global model
    result = contribution_result(
        metric="closeness", records=dict.fromkeys(names, 100), rounds_trained=dict.fromkeys(names, 3),
        rounds=rounds, inputs={},
    )  # fmt: skip
    per_site = result["per_site"]
    fair = result["total_gain"] / len(names)
    assert fair > 0
    assert per_site[bad]["utility"] < 0.1 * fair, per_site[bad]
    assert per_site[bad]["flag"] == "free_rider"
    for good in ("a", "b", "c"):
        assert per_site[good]["utility"] > fair and per_site[good]["flag"] is None
    assert sum(s["utility"] for s in per_site.values()) == pytest.approx(result["total_gain"])
    assert sum(s["data_share"] for s in per_site.values()) == pytest.approx(1.0)


def test_monte_carlo_rounds_are_efficient_within_the_truncation_and_reproducible_for_a_seed():
    rng = np.random.default_rng(3)
    g = [np.zeros_like(TARGET)]
    updates = [honest(g[0], rng) for _ in range(9)]
    within = 1e-3
    first = round_contribution(g, updates, list(range(1, 10)), closeness, budget=100, seed=7, within=within)
    again = round_contribution(g, updates, list(range(1, 10)), closeness, budget=100, seed=7, within=within)
    other = round_contribution(g, updates, list(range(1, 10)), closeness, budget=100, seed=8, within=within)
    assert not first.exact and first.coalitions_evaluated <= 100 and first.leave_one_out is None
    assert abs(sum(first.utilities) - first.gain) <= within
    assert first.utilities == again.utilities
    assert first.utilities != other.utilities
    # Guided sampling: every site opens a permutation before any opens a second one.
    assert [p[0] for p in first.permutations[:9]] == list(range(9))


def test_a_round_with_negligible_gain_is_truncated_to_zero():
    g = [TARGET.copy()]
    values = round_contribution(g, [[TARGET + 1e-6], [TARGET - 1e-6]], [1, 1], closeness, between=1e-3)
    assert values.truncated and values.utilities == [0.0, 0.0]


def test_the_budget_bounds_the_coalitions_and_must_cover_one_permutation():
    coalitions, permutations = plan_coalitions(5, budget=32, seed=0, leave_one_out=True)
    assert len(coalitions) == 32 and permutations is None
    coalitions, permutations = plan_coalitions(7, budget=30, seed=0, leave_one_out=7 <= LOO_MAX_SITES)
    assert len(coalitions) <= 30 and permutations
    with pytest.raises(ValueError, match="cannot cover one permutation"):
        plan_coalitions(10, budget=8, seed=0, leave_one_out=False)


def test_pooled_metrics_from_site_counts_match_the_metrics_on_the_pooled_rows():
    rng = np.random.default_rng(0)
    y = rng.random(3000) < 0.1
    p = 1 / (1 + np.exp(-(rng.normal(0, 1.5, 3000) + 2.0 * y - 2)))
    halves = [slice(0, 1200), slice(1200, None)]
    counts = [metric_counts("roc_auc", y[h], p[h]) for h in halves]
    assert pooled_metric("roc_auc", counts) == pytest.approx(roc_auc_score(y, p), abs=0.005)
    truth, pred = rng.normal(size=500), rng.normal(size=500)
    counts = [metric_counts("rmse", truth[h], pred[h]) for h in (slice(0, 200), slice(200, None))]
    assert pooled_metric("rmse", counts) == pytest.approx(float(np.sqrt(np.mean((truth - pred) ** 2))))
    labels, proba = rng.integers(0, 3, 400), rng.random((400, 3))
    counts = [metric_counts("macro_f1", labels[h], proba[h], classes=3) for h in (slice(0, 100), slice(100, None))]
    assert pooled_metric("macro_f1", counts) == pytest.approx(f1_score(labels, proba.argmax(1), average="macro"))
    assert math.isnan(pooled_metric("roc_auc", [metric_counts("roc_auc", np.zeros(5), np.full(5, 0.3))]))


def test_under_secure_aggregation_only_data_shares_are_given_and_the_reason_is_stated():
    config = FederationConfig(task=get_task("injection-molding-quality"), secagg=True)
    manifest = {
        "sites": {"a": {"n_train": 300}, "b": {"n_train": 100}},
        "rounds": [
            {"round": 1, "checkpoint": "c1", "sites_trained": ["a", "b"]},
            {"round": 2, "checkpoint": "c2", "sites_trained": ["a"]},  # b refused round 2
            {"round": 3, "sites_trained": ["a", "b"]},  # failed: nothing aggregated
        ],
    }
    result = contribution_summary(manifest, config)
    assert result["method"] is None
    assert "secure aggregation" in result["not_available"]["utility"]
    assert result["per_site"]["a"]["rounds_trained"] == 2 and result["per_site"]["b"]["rounds_trained"] == 1
    assert result["per_site"]["a"]["data_share"] == pytest.approx(600 / 700)
    assert result["per_site"]["b"]["utility"] is None and result["per_site"]["b"]["utility_share"] is None


def test_a_simulated_run_scores_its_sites_and_flags_the_free_rider(tmp_path, kamp, monkeypatch):
    import flwr.simulation

    from client.contribution import misbehaving_mod
    from coordinator.simulation import run_experiment, write_site_files
    from tests.loopback import run_in_process

    # The real ServerApp and ClientApps in Flower's message loop in this process (tests/loopback.py): seconds.
    monkeypatch.setattr(flwr.simulation, "run_simulation", run_in_process)

    spec = get_task("injection-molding-quality")
    site_files, dropped = write_site_files(kamp, "PART_NAME", tmp_path, spec=spec)
    sites = sorted(site_files)[:3]
    site_files = {s: site_files[s] for s in sites}
    rider = sites[-1]
    config = FederationConfig(task=spec, num_rounds=2, local_epochs=1, out_dir=tmp_path / "run", min_sites=3)
    results = run_experiment(spec, site_files, config, client_mods=[misbehaving_mod({rider: "free_rider"})])
    contribution = results["contribution"]
    assert contribution["method"] == "gtg-shapley" and contribution["metric"] == "roc_auc"
    per_site = contribution["per_site"]
    assert per_site[rider]["flag"] == "free_rider"
    assert per_site[rider]["unchanged_rounds"] == 2 and all(
        per_site[s]["unchanged_rounds"] == 0 for s in per_site if s != rider
    )
    assert min(per_site, key=lambda s: per_site[s]["utility"]) == rider
    utilities = sum(s["utility"] for s in per_site.values())
    tolerance = contribution["inputs"]["efficiency_tolerance"] + 1e-9
    assert utilities == pytest.approx(contribution["total_gain"], abs=tolerance)
    assert contribution["inputs"]["coalitions_evaluated"] == 2 * 8  # 3 sites: every coalition, both rounds
    assert all(s["alone"] is not None and s["with_network"] is not None for s in per_site.values())
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["contribution"]["inputs"] == contribution["inputs"]
    # What `sangsaeng simulate` prints under the comparison table.
    from rich.console import Console

    from coordinator.report import contribution_table

    console = Console(record=True, width=160)
    console.print(contribution_table(contribution))
    text = console.export_text()
    assert "your line alone" in text and "with the network" in text and "free_rider" in text


def test_under_supplier_level_dp_utility_is_not_computed_and_the_reason_is_stated():
    config = FederationConfig(task=get_task("injection-molding-quality"), central_dp_noise=1.0)
    manifest = {"sites": {"a": {"n_train": 10}}, "rounds": [{"round": 1, "checkpoint": "c", "sites_trained": ["a"]}]}
    result = contribution_summary(manifest, config)
    assert result["method"] is None and "supplier-level DP" in result["not_available"]["utility"]
    assert result["per_site"]["a"]["data_share"] == 1.0
