"""Evaluation histograms (models.histogram): the metrics and the operating point read from them agree with
scikit-learn and with the pooled per-row computation, within the error of one bin."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from models.histogram import (
    DP_SCORE_BINS,
    LOGIT_RANGE,
    SCORE_BINS,
    EvalHistogram,
    bin_index,
    build_histogram,
    histogram_loss,
    histogram_metrics,
    merge,
    operating_point,
    parse_rule,
    rebin,
    score_edges,
)
from models.metrics import compute_metrics
from models.rul import rul_metrics


def _scores(seed: int, n: int = 3000, rate: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < rate).astype(np.float64)
    logits = rng.normal(0, 1, n) + 2.5 * y
    return y, 1 / (1 + np.exp(-logits + 2))


def _sites(y: np.ndarray, p: np.ndarray, parts: int = 3) -> list[EvalHistogram]:
    return [build_histogram("binary", yy, pp) for yy, pp in zip(np.array_split(y, parts), np.array_split(p, parts),
                                                               strict=True)]  # fmt: skip


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_binary_metrics_from_merged_histograms_match_scikit_learn_on_the_pooled_scores(seed):
    y, p = _scores(seed)
    merged = merge(_sites(y, p))
    got, want = histogram_metrics(merged), compute_metrics("binary", y, p)
    # Tie error of ROC-AUC: at most the share of positive-negative pairs that share a bin.
    neg, pos = merged.blocks["negatives"], merged.blocks["positives"]
    tie = float((neg * pos).sum() / (neg.sum() * pos.sum()))
    assert 0 < tie < 0.05
    assert abs(got["roc_auc"] - want["roc_auc"]) <= tie / 2 + 1e-12
    # Exactly scikit-learn's on the binned scores (bins as tied scores), and close to the raw one.
    binned = bin_index(p, SCORE_BINS)
    assert got["roc_auc"] == pytest.approx(roc_auc_score(y, binned), abs=1e-12)
    assert got["pr_auc"] == pytest.approx(average_precision_score(y, binned), abs=1e-12)
    assert got["pr_auc"] == pytest.approx(want["pr_auc"], abs=0.02)
    assert got["f1"] == pytest.approx(want["f1"], abs=1e-12)  # 0.5 is a bin edge: exact
    assert 0.1 < histogram_loss(merged) < 1.0


def test_a_histogram_survives_json_and_merging_rebins_to_the_coarser_bins():
    y, p = _scores(4)
    fine = build_histogram("binary", y[:1500], p[:1500])
    coarse = build_histogram("binary", y[1500:], p[1500:], bins=DP_SCORE_BINS)
    again = EvalHistogram.from_json(fine.to_json())
    assert np.array_equal(again.blocks["positives"], fine.blocks["positives"]) and again.bins == SCORE_BINS
    merged = merge([fine, coarse])
    assert merged.bins == DP_SCORE_BINS and merged.rows == 3000
    assert np.array_equal(merged.blocks["positives"], build_histogram("binary", y, p, bins=20).blocks["positives"])
    with pytest.raises(ValueError, match="even number of bins"):
        build_histogram("binary", y, p, bins=7)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("rule", ["recall>=0.95", "recall>=0.8", "f1"])
def test_the_threshold_from_merged_histograms_is_the_pooled_one_within_one_bin(seed, rule):
    y, p = _scores(seed)
    point = operating_point(merge(_sites(y, p)), rule)
    assert point is not None
    t, width = point["threshold"], point["bin_width"]
    edges = score_edges(SCORE_BINS)
    j = int(np.flatnonzero(edges == t)[0])  # a bin edge, and its bin's width
    assert width == edges[j + 1] - edges[j]
    positives, flagged = p[y == 1], p >= t
    if rule.startswith("recall"):
        target = parse_rule(rule)[1]
        # Pooled: the highest score threshold that keeps the recall at target.
        need = math.ceil(target * len(positives) - 1e-9)
        pooled = np.sort(positives)[::-1][need - 1]
        assert t <= pooled < t + width
    else:
        candidates = np.unique(p)
        f1s = [2 * (p[y == 1] >= c).sum() / ((p >= c).sum() + len(positives)) for c in candidates]
        pooled = candidates[int(np.argmax(f1s))]
        best = max(f1s)
        assert point["f1"] >= best - 0.02 and abs(pooled - t) <= 0.1
    # The workload, recall and precision at that threshold are the pooled rows' own.
    assert point["workload"] == pytest.approx(flagged.mean(), abs=1e-12)
    assert point["recall"] == pytest.approx((positives >= t).mean(), abs=1e-12)
    assert point["precision"] == pytest.approx(y[flagged].mean(), abs=1e-12)
    if rule.startswith("recall"):
        assert point["recall"] >= parse_rule(rule)[1]


def test_an_unknown_rule_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown operating rule 'recall>=2'"):
        parse_rule("recall>=2")


def test_multiclass_metrics_from_histograms_match_the_pooled_ones():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 4, 2000)
    y[y == 3] = 0  # class 3 never occurs: not scored, as scikit-learn does
    logits = rng.normal(0, 1, (2000, 4))
    logits[np.arange(2000), y] += 1.5
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    classes = ("a", "b", "c", "d")
    halves = [build_histogram("multiclass", y[s], proba[s], classes=classes) for s in (slice(0, 900), slice(900, None))]
    got, want = histogram_metrics(merge(halves)), compute_metrics("multiclass", y, proba, classes=classes)
    for key in ("macro_f1", "accuracy", "balanced_accuracy", "recall_a", "recall_b", "recall_c"):
        assert got[key] == pytest.approx(want[key], abs=1e-12), key
    assert math.isnan(got["recall_d"]) and math.isnan(want["recall_d"])
    assert got["macro_roc_auc"] == pytest.approx(want["macro_roc_auc"], abs=0.005)


def test_regression_sums_give_the_pooled_rmse_mae_and_rul_scores():
    rng = np.random.default_rng(6)
    truth, pred = rng.uniform(0, 150, 500), rng.uniform(0, 150, 500)
    last = rng.random(500) < 0.1
    parts = [build_histogram("regression", truth[s], pred[s], last=last[s]) for s in (slice(0, 200), slice(200, None))]
    got = histogram_metrics(merge(parts))
    want = compute_metrics("regression", truth, pred) | rul_metrics(truth, pred, last)
    for key in ("rmse", "mae", "phm08_score", "rmse_last"):
        assert got[key] == pytest.approx(want[key], rel=1e-9), key
    clipped = histogram_metrics(build_histogram("regression", truth, pred, clip=10.0))
    assert clipped["mae"] <= 10.0 < want["mae"]


@pytest.mark.parametrize("seed", [0, 1])
def test_a_multiclass_operating_point_catches_any_defect_as_the_pooled_rows_say(seed):
    """Failure modes: the line flags a part when 1 - P(none) reaches the threshold; within one bin of pooled."""
    rng = np.random.default_rng(seed)
    classes = ("none", "TWF", "HDF", "PWF")
    n = 4000
    y = np.where(rng.random(n) < 0.9, 0, rng.integers(1, 4, n))
    logits = rng.normal(0, 1, (n, 4))
    logits[np.arange(n), y] += 2.0
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    sites = [build_histogram("multiclass", yy, pp, classes=classes)
             for yy, pp in zip(np.array_split(y, 3), np.array_split(proba, 3), strict=True)]  # fmt: skip
    point = operating_point(merge(sites), "recall>=0.95")
    assert point is not None and point["normal_class"] == "none" and point["score"] == "1 - P(none)"
    defect, is_defect = 1 - proba[:, 0], y != 0
    need = math.ceil(0.95 * is_defect.sum() - 1e-9)
    pooled = np.sort(defect[is_defect])[::-1][need - 1]  # the highest threshold still catching 95 %
    edges = score_edges(SCORE_BINS)
    j = int(np.argmin(np.abs(edges - point["threshold"])))
    assert abs(edges[j] - point["threshold"]) < 1e-15
    assert edges[j - 1] <= pooled < edges[j + 1]
    flagged = defect >= point["threshold"]
    # The reversed bins put a score on a bin edge one bin off at most: the figures agree within that bin's rows.
    slack = ((defect >= edges[j - 1]) & (defect < edges[j + 1])).mean()
    assert abs(point["workload"] - flagged.mean()) <= slack + 1e-12
    assert point["recall"] >= 0.95 and abs(point["recall"] - flagged[is_defect].mean()) <= slack * n / is_defect.sum()
    assert operating_point(build_histogram("regression", np.zeros(5), np.ones(5))) is None


@pytest.mark.parametrize("scale", ["logit", "linear"])
@pytest.mark.parametrize("bins", [SCORE_BINS, DP_SCORE_BINS])
def test_a_score_on_an_edge_is_flagged_by_that_edge_and_the_edges_are_fixed(scale, bins):
    """Flagging the bins j.. flags exactly the scores >= edges[j], for every edge; 0.5 is an edge; symmetric."""
    edges = score_edges(bins, scale)
    assert edges[0] == 0.0 and edges[-1] == 1.0 and edges[bins // 2] == 0.5 and (np.diff(edges) > 0).all()
    assert np.allclose(1 - edges[::-1], edges, rtol=0, atol=1e-15)  # 1 - P(normal) reverses the bins
    scores = np.r_[edges, np.nextafter(edges, 0), np.nextafter(edges, 1)].clip(0, 1)
    binned = bin_index(scores, bins, scale)
    for j in range(bins):
        assert np.array_equal(binned >= j, scores >= edges[j]), j
    assert np.array_equal(score_edges(SCORE_BINS, scale)[:: SCORE_BINS // DP_SCORE_BINS], score_edges(20, scale))


def test_low_scores_get_their_own_bins_on_the_logit_scale():
    """The KAMP case: every defect scored under 0.005. On equal bins over [0, 1] the 95 %-recall threshold is 0
    (inspect every part); on the logit bins it is the pooled one within one bin, at the pooled rows' workload."""
    rng = np.random.default_rng(8)
    y = np.r_[np.ones(40), np.zeros(2000)]
    p = np.r_[10 ** rng.uniform(-3.5, -2.4, 40), 10 ** rng.uniform(-5, -2, 2000)]
    old = operating_point(build_histogram("binary", y, p, bins=200, scale="linear"))  # the bins before
    assert old is not None and old["threshold"] == 0.0 and old["workload"] == 1.0
    point = operating_point(merge(_sites(y, p)))
    assert point is not None
    need = math.ceil(0.95 * 40 - 1e-9)
    pooled = np.sort(p[y == 1])[::-1][need - 1]
    assert point["threshold"] <= pooled < point["threshold"] + point["bin_width"]
    assert point["workload"] == pytest.approx((p >= point["threshold"]).mean(), abs=1e-12)
    assert point["recall"] == pytest.approx((p[y == 1] >= point["threshold"]).mean(), abs=1e-12)
    assert point["recall"] >= 0.95
    exact = (p >= pooled).mean()  # the least workload of any threshold on the rows
    assert exact <= point["workload"] < 0.5 and point["workload"] - exact <= (
        (p >= point["threshold"]) & (p < pooled)).mean() + 1e-12  # fmt: skip
    # Below the first edge above 0 (sigmoid(-10 + 20 / bins)) scores still share bin 0.
    assert score_edges(SCORE_BINS)[1] == pytest.approx(1 / (1 + math.exp(LOGIT_RANGE - 2 * LOGIT_RANGE / SCORE_BINS)))


def test_a_histogram_written_before_the_logit_scale_is_read_as_linear_and_never_merged_with_a_logit_one():
    """Old JSON (no scale): equal bins over [0, 1], its threshold j / bins; merging it with a logit one is refused."""
    y, p = _scores(9)
    new = build_histogram("binary", y, p)
    again = EvalHistogram.from_json(new.to_json())
    assert (again.scale, again.logit_range) == ("logit", LOGIT_RANGE) and np.array_equal(again.edges, new.edges)
    raw = json.loads(new.to_json())
    for key in ("scale", "logit_range"):
        raw.pop(key)
    linear = np.floor(p * 200).clip(0, 199).astype(int)
    raw |= {"bins": 200, "blocks": {"negatives": np.bincount(linear[y == 0], minlength=200).tolist(),
                                    "positives": np.bincount(linear[y == 1], minlength=200).tolist()},
            "shapes": {"negatives": [200], "positives": [200]}}  # fmt: skip
    old = EvalHistogram.from_json(json.dumps(raw))
    assert old.scale == "linear"
    point = operating_point(old)
    assert point is not None and point["threshold"] * 200 == pytest.approx(round(point["threshold"] * 200))
    assert point["bin_width"] == pytest.approx(1 / 200)
    assert point["workload"] == pytest.approx((p >= point["threshold"]).mean(), abs=1e-12)
    with pytest.raises(ValueError, match="score bins differ.*'linear'"):
        merge([new, old])
    with pytest.raises(ValueError, match="unknown score scale 'sqrt'"):
        EvalHistogram.from_json(json.dumps(raw | {"scale": "sqrt"}))
    assert rebin(new, DP_SCORE_BINS).scale == "logit"
