"""The inspection-workload benchmark (bench/workload.py) computes the operating point as the product does:
its figures equal `models.histogram.run_operating_point` over the sites' merged histograms (what
results.json reports) and the per-row computation at the chosen threshold."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench.workload import at_threshold, workload_at
from models.histogram import SCORE_BINS, build_histogram, merge, run_operating_point


def _held_out(seed: int = 7, n: int = 1500) -> tuple[np.ndarray, np.ndarray]:
    """A fixed example: 6 % defects, defects scored higher on average (overlapping)."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.06).astype(np.float64)
    scores = 1 / (1 + np.exp(-(rng.normal(size=n) + 2.2 * y - 1.5)))
    return y, scores


def test_known_value() -> None:
    """19 of 20 defects at 0.9 and one at 0.3: at 95 % recall flag the parts at 0.9 and above, 19 of 120."""
    y = np.r_[np.ones(20), np.zeros(100)]
    scores = np.r_[np.full(19, 0.9), 0.3, np.full(80, 0.05), np.full(20, 0.5)]
    point = workload_at(y, scores)
    assert point["threshold"] <= 0.9 < point["threshold"] + point["bin_width"]  # the edge of 0.9's bin
    assert point["recall"] == pytest.approx(0.95)
    assert point["workload"] == pytest.approx(19 / 120)
    assert point["precision"] == pytest.approx(1.0)


def test_equals_the_runs_operating_point_from_merged_site_histograms() -> None:
    """Pooled held-out rows in the bench == results.json's figure from the three sites' merged histograms."""
    y, scores = _held_out()
    ours = workload_at(y, scores)
    sites = np.array_split(np.arange(len(y)), 3)
    merged = merge([build_histogram("binary", y[i], scores[i], bins=SCORE_BINS) for i in sites])
    record = {"round": 4, "eval_histogram": json.loads(merged.to_json())}
    run = run_operating_point([{"round": 3}, record], "recall>=0.95")
    assert run is not None
    for key in ("threshold", "recall", "precision", "f1", "workload"):
        assert ours[key] == pytest.approx(run[key], abs=1e-12), key
    assert run["held_out_rows"] == len(y)


def test_equals_the_per_row_computation_and_is_the_least_workload() -> None:
    """At the chosen edge the rows flagged give the same recall and workload; one bin higher misses 95 %."""
    y, scores = _held_out(seed=11)
    point = workload_at(y, scores)
    rows = at_threshold(y, scores, point["threshold"])
    assert rows["recall"] == pytest.approx(point["recall"], abs=1e-12)
    assert rows["workload"] == pytest.approx(point["workload"], abs=1e-12)
    assert point["recall"] >= 0.95
    assert at_threshold(y, scores, point["threshold"] + point["bin_width"])["recall"] < 0.95
    assert 0 < point["workload"] < 1


def test_a_held_out_set_without_defects_is_refused() -> None:
    """No defect held out: no operating point, said with the counts."""
    with pytest.raises(ValueError, match="0 defects"):
        workload_at(np.zeros(50), np.linspace(0, 1, 50))


def test_the_demo_table_shows_the_workload() -> None:
    """The demo's operating-point table (coordinator.report) prints the workload the bench measures."""
    from rich.console import Console

    from coordinator.report import operating_point_table

    y, scores = _held_out()
    merged = merge([build_histogram("binary", y, scores, bins=SCORE_BINS)])
    point = run_operating_point([{"round": 1, "eval_histogram": json.loads(merged.to_json())}])
    assert point is not None
    console = Console(width=160, record=True)
    console.print(operating_point_table(point))
    text = console.export_text()
    assert "inspection workload" in text
    assert f"{100 * workload_at(y, scores)['workload']:.1f} % of parts" in text


def test_low_scores_get_bins_of_their_own() -> None:
    """Every score under 0.005 (one bin of the old equal bins over [0, 1], where the edge flagged every part):
    the logit bins separate them, so the bench's threshold is the rows' own and flags 40 % of the parts."""
    y = np.r_[np.ones(20), np.zeros(80)]
    scores = np.r_[np.full(20, 0.004), np.full(60, 0.0001), np.full(20, 0.0045)]
    old = workload_at(y, scores, bins=200, scale="linear")
    assert old["threshold"] == 0.0 and old["workload"] == pytest.approx(1.0)
    point = workload_at(y, scores)
    assert point["threshold"] <= 0.004 < point["threshold"] + point["bin_width"]
    assert point["workload"] == pytest.approx(0.4) == point["exact_workload"]
    assert point["exact_threshold"] == pytest.approx(0.004)


def test_a_score_below_the_first_edge_still_flags_every_part() -> None:
    """Scores under the first edge above 0 (4.6e-5 at 1280 bins) share bin 0: the threshold is 0 there."""
    y = np.r_[np.ones(20), np.zeros(80)]
    scores = np.r_[np.full(20, 2e-6), np.full(80, 1e-6)]
    point = workload_at(y, scores)
    assert point["threshold"] == 0.0 and point["workload"] == pytest.approx(1.0)
    assert point["exact_workload"] == pytest.approx(0.2)
