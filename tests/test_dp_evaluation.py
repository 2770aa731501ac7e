"""DP evaluation (privacy.evaluation): the noise matches the sensitivity and the accountant, every release is
charged to the site's ledger, a site refuses one its budget cannot cover, and the signed report lists each
release so that `privacy verify` recomputes it and fails on any tampered parameter."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from flwr.common import Code, EvaluateRes, Status
from opacus.accountants import RDPAccountant

from coordinator.strategies import merged_evaluation
from models.histogram import DP_SCORE_BINS, EvalHistogram, build_histogram, histogram_metrics, merge
from privacy.accounting import epsilon_of
from privacy.errors import BudgetExhausted, ReportInvalid
from privacy.evaluation import (
    EVALUATION_SHARE,
    evaluation_noise_multiplier,
    evaluation_rounds,
    release_evaluation,
)
from privacy.ledger import PrivacyLedger
from privacy.policy import DpRequest, SitePrivacyPolicy
from privacy.profile import profile_noise_multiplier
from sangsaeng.protocol import ReplyKey


def _scores(n: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.1).astype(float)
    return y, 1 / (1 + np.exp(-(rng.normal(0, 1, n) + 2 * y - 1)))


def test_the_evaluations_cost_their_share_of_the_target_known_values():
    one = evaluation_noise_multiplier(target_epsilon=3.0, delta=1e-5, evaluations=1, accountant="rdp")
    # One release at 10 % of the target: the profile's own calibration (12.3 at target 3).
    assert one == pytest.approx(profile_noise_multiplier(target_epsilon=3.0, delta=1e-5), rel=1e-9)
    assert one == pytest.approx(12.3, abs=0.1)
    five = evaluation_noise_multiplier(target_epsilon=3.0, delta=1e-5, evaluations=5, accountant="rdp")
    spent = epsilon_of([(five, 1.0, 5)], delta=1e-5)
    assert 0.97 * EVALUATION_SHARE * 3.0 < spent <= EVALUATION_SHARE * 3.0
    assert evaluation_rounds(10, 0) == [10] and evaluation_rounds(10, 4) == [4, 8, 10]
    assert evaluation_rounds(3, 1) == [1, 2, 3]


def test_noise_std_is_multiplier_times_sensitivity_per_task_kind():
    y, p = _scores()
    binary = build_histogram("binary", y, p, bins=DP_SCORE_BINS)
    noisy, mech = release_evaluation(binary, noise_multiplier=5.0, server_round=1, evaluations=1,
                                     rng=np.random.default_rng(1))  # fmt: skip
    assert mech.sensitivity == 1.0 and mech.noise_std == 5.0 and mech.step == (5.0, 1.0, 1)
    assert noisy.noisy and not binary.noisy
    noise = np.concatenate([noisy.blocks[k] - binary.blocks[k] for k in binary.blocks])
    assert np.std(noise) == pytest.approx(5.0, rel=0.25)

    labels = np.random.default_rng(2).integers(0, 3, 500)
    proba = np.random.default_rng(3).dirichlet(np.ones(3), 500)
    multi = build_histogram("multiclass", labels, proba, bins=DP_SCORE_BINS, classes=("a", "b", "c"))
    _, mech = release_evaluation(multi, noise_multiplier=5.0, server_round=1, evaluations=1)
    assert mech.covers == ["confusion", "ovr:0", "ovr:1", "ovr:2"] and mech.sensitivity == pytest.approx(2.0)

    truth, pred = np.random.default_rng(4).uniform(0, 100, (2, 400))
    rul = build_histogram("regression", truth, pred, clip=30.0, last=np.arange(400) % 10 == 0)
    noisy, mech = release_evaluation(rul, noise_multiplier=5.0, server_round=1, evaluations=1,
                                     rng=np.random.default_rng(5))  # fmt: skip
    assert mech.sensitivity == pytest.approx(math.sqrt(6)) and mech.clip == 30.0
    assert np.isfinite(list(histogram_metrics(noisy).values())).all()


def test_the_logit_bins_keep_the_noise_per_bin_and_the_release_keeps_the_bins():
    """One row still adds 1 to one bin: the noise per bin is that of the equal bins, and the release is on the
    same (logit) edges, in JSON too."""
    y, p = _scores()
    stds = {}
    for scale in ("logit", "linear"):
        exact = build_histogram("binary", y, p, bins=DP_SCORE_BINS, scale=scale)
        rng = np.random.default_rng(7)
        draws = [release_evaluation(exact, noise_multiplier=5.0, server_round=1, evaluations=1, rng=rng)
                 for _ in range(100)]  # fmt: skip
        noisy, mech = draws[0]
        assert mech.noise_std == 5.0 and mech.bins == DP_SCORE_BINS and noisy.scale == scale
        assert np.array_equal(EvalHistogram.from_json(noisy.to_json()).edges, exact.edges)
        stds[scale] = np.std([d.blocks[k] - exact.blocks[k] for d, _ in draws for k in exact.blocks])
    assert stds["logit"] == pytest.approx(5.0, rel=0.05) and stds["linear"] == pytest.approx(5.0, rel=0.05)


def _train_and_evaluate(ledger, policy, request, rounds):
    for r in range(1, rounds + 1):
        plan = ledger.plan_round(policy, request, records=2000, batch_size=500, epochs=2, server_round=r)
        ledger.record_round(plan, server_round=r, steps=plan.steps)
        if r in evaluation_rounds(request.num_rounds, request.evaluate_every):
            y, p = _scores(seed=r)
            ev = ledger.plan_evaluation(policy, request, records=2000, server_round=r)
            noisy, mech = release_evaluation(build_histogram("binary", y, p, bins=DP_SCORE_BINS),
                                             noise_multiplier=ev.noise_multiplier, server_round=r,
                                             evaluations=ev.evaluations)  # fmt: skip
            ledger.record_evaluation(ev, mechanism=mech.to_dict(), histogram=noisy.to_json())
    return plan


@pytest.mark.parametrize("every", [1, 0])
def test_the_ledger_after_rounds_and_evaluations_equals_an_independent_accountant(tmp_path, every):
    ledger = PrivacyLedger(tmp_path / "a.ledger.json", "a")
    policy = SitePrivacyPolicy()
    request = DpRequest(run_id="r1", target_epsilon=3.0, max_grad_norm=1.0, num_rounds=2, evaluate_every=every)
    plan = _train_and_evaluate(ledger, policy, request, 2)
    entries = ledger.load()["entries"]
    evaluations = [e for e in entries if e.get("mechanism") == "evaluation"]
    assert [e["round"] for e in evaluations] == evaluation_rounds(2, every)
    independent = RDPAccountant()
    for e in entries:
        for _ in range(e["steps"]):
            independent.step(noise_multiplier=e["noise_multiplier"], sample_rate=e["sample_rate"])
    spent = ledger.spent(delta=plan.delta)
    assert spent == pytest.approx(independent.get_epsilon(delta=plan.delta), rel=1e-9)
    assert 0.9 * 3.0 < spent <= 3.0  # training was calibrated with the evaluations reserved
    # Fewer evaluations, each less noisy: the same share in fewer releases.
    noise = {e["noise_multiplier"] for e in evaluations}
    assert len(noise) == 1 and noise.pop() == pytest.approx(
        evaluation_noise_multiplier(target_epsilon=3.0, delta=plan.delta, evaluations=len(evaluations),
                                    accountant="rdp"))  # fmt: skip
    # The same round asked again: the same histogram, nothing charged.
    again = ledger.plan_evaluation(policy, request, records=2000, server_round=2)
    assert again.released is not None and again.released["histogram"] == evaluations[-1]["histogram"]
    assert ledger.spent(delta=plan.delta) == spent


def test_a_site_refuses_an_evaluation_its_budget_cannot_cover(tmp_path):
    ledger = PrivacyLedger(tmp_path / "a.ledger.json", "a")
    policy = SitePrivacyPolicy(max_epsilon=3.0)
    first = DpRequest(run_id="r1", target_epsilon=3.0, max_grad_norm=1.0, num_rounds=2)
    _train_and_evaluate(ledger, policy, first, 2)
    delta = policy.delta_for(2000)
    spent = ledger.spent(delta=delta)
    later = DpRequest(run_id="r2", target_epsilon=3.0, max_grad_norm=1.0, num_rounds=2)
    with pytest.raises(BudgetExhausted, match=r"evaluating round 1 would bring epsilon from 2\.9\d* to"):
        ledger.plan_evaluation(policy, later, records=2000, server_round=1)
    assert ledger.spent(delta=delta) == spent  # nothing charged
    refusal = ledger.audit.entries()[-1]
    assert refusal["event"] == "refusal" and refusal["data"]["mechanism"] == "evaluation"


# -- the coordinator's merge and the signed report ------------------------------------------------------------
def test_the_coordinator_merges_the_sites_histograms_and_shows_what_each_revealed():
    y, p = _scores(3000, seed=7)
    parts = [build_histogram("binary", y[s], p[s]) for s in (slice(0, 1000), slice(1000, None))]
    results = [
        (None, EvaluateRes(Status(Code.OK, ""), 0.3, n, {ReplyKey.SITE: site, ReplyKey.EVAL_HISTOGRAM: h.to_json()}))
        for site, n, h in (("a", 1000, parts[0]), ("b", 2000, parts[1]))
    ]
    evaluation = merged_evaluation(results)
    assert histogram_metrics(evaluation.merged) == histogram_metrics(build_histogram("binary", y, p))
    assert evaluation.per_site["a"]["roc_auc"] == histogram_metrics(parts[0])["roc_auc"]
    assert evaluation.per_site["b"]["examples"] == 2000 and not evaluation.mechanisms
    assert histogram_metrics(merge(parts)) == histogram_metrics(evaluation.merged)


def test_a_site_of_an_older_version_sending_linear_bins_is_named_when_the_round_does_not_merge():
    """A histogram without `scale` (equal bins over [0, 1]) does not merge with the logit ones: refused, naming it."""
    y, p = _scores(3000, seed=7)
    new = build_histogram("binary", y[:1000], p[:1000]).to_json()
    old = json.loads(build_histogram("binary", y[1000:], p[1000:], bins=200, scale="linear").to_json())
    old = json.dumps({k: v for k, v in old.items() if k not in ("scale", "logit_range")})  # as written before
    results = [(None, EvaluateRes(Status(Code.OK, ""), 0.3, 1000, {ReplyKey.SITE: site, ReplyKey.EVAL_HISTOGRAM: h}))
               for site, h in (("a", new), ("b", old))]  # fmt: skip
    with pytest.raises(ValueError, match=r"\(a: 1280 logit bins; b: 200 linear bins\).*score bins differ"):
        merged_evaluation(results)


@pytest.fixture
def evaluated_report(tmp_path):
    from privacy.keys import PUBLIC_NAME, load_signing_key
    from privacy.report import build_report, write_signed_report
    from tests.factories import dp_manifest

    key = load_signing_key(tmp_path / "keys", create=True)
    report = build_report(dp_manifest(profile=True, evaluation=True))

    def signed(body: dict) -> tuple:
        path = write_signed_report(body, tmp_path / "privacy", key)
        return path, tmp_path / "privacy" / PUBLIC_NAME

    return report, signed


def test_the_report_lists_every_evaluation_and_verify_recomputes_it(evaluated_report):
    from privacy.report import verify_report

    report, signed = evaluated_report
    site = report["sites"]["plant-a"]
    assert [m["mechanism"] for m in site["mechanisms"]] == ["profile", "evaluation", "evaluation", "evaluation"]
    assert report["not_covered"] == "" and "DP evaluation" in report["mechanism"]
    # The site's epsilon is the one after its last release: the last round's evaluation.
    assert site["epsilon"] == site["mechanisms"][-1]["epsilon"] > site["rounds"][-1]["epsilon"]
    verify_report(*signed(report))


@pytest.mark.parametrize(
    ("field", "change", "problem"),
    [
        ("noise_multiplier", 60.0, "evaluation of round 2: noise std 30 is not noise multiplier 60"),
        ("sensitivity", 0.5, "sensitivity 0.5 is not sqrt of its 1 blocks"),
        ("noise_std", 3.0, "noise std 3 is not noise multiplier 30"),
        ("steps", 2, "one step without subsampling"),
    ],
)
def test_tampering_with_an_evaluation_fails_verify(evaluated_report, field, change, problem):
    from privacy.report import verify_report

    report, signed = evaluated_report
    forged = json.loads(json.dumps(report))
    forged["sites"]["plant-a"]["mechanisms"][2][field] = change
    with pytest.raises(ReportInvalid, match=problem):
        verify_report(*signed(forged))


def test_a_consistently_forged_evaluation_fails_on_the_epsilons(evaluated_report):
    from privacy.report import verify_report

    report, signed = evaluated_report
    forged = json.loads(json.dumps(report))
    forged["sites"]["plant-a"]["mechanisms"][2] |= {"noise_multiplier": 60.0, "noise_std": 60.0}
    with pytest.raises(ReportInvalid, match="evaluation of round 2: recorded epsilon"):
        verify_report(*signed(forged))


def test_a_dropped_evaluation_fails_verify(evaluated_report):
    from privacy.report import verify_report

    report, signed = evaluated_report
    forged = json.loads(json.dumps(report))
    del forged["sites"]["plant-a"]["mechanisms"][1]  # round 1's evaluation: the later epsilons no longer add up
    with pytest.raises(ReportInvalid, match="recorded epsilon"):
        verify_report(*signed(forged))


def test_noisy_counts_are_cleaned_through_their_totals_not_bin_by_bin():
    """Clamping each noisy bin at 0 would add about 0.4 noise stds to every empty bin; the metrics clean the
    counts above each threshold instead, which keeps the defect count nearer the truth."""
    from models.histogram import EvalHistogram, _clean

    positives = np.zeros(DP_SCORE_BINS)
    positives[-3:] = (10, 20, 30)  # rare defects, scored high: most bins hold none
    negatives = np.linspace(300, 0, DP_SCORE_BINS)
    exact = EvalHistogram("binary", {"negatives": negatives, "positives": positives}, bins=DP_SCORE_BINS)
    assert np.array_equal(_clean(positives), positives)  # an exact histogram is left as it is
    rng = np.random.default_rng(9)
    draws = [release_evaluation(exact, noise_multiplier=5.0, server_round=1, evaluations=1, rng=rng)[0]
             for _ in range(40)]  # fmt: skip
    cleaned = np.mean([_clean(d.blocks["positives"]).sum() for d in draws])
    clamped = np.mean([np.maximum(d.blocks["positives"], 0).sum() for d in draws])
    assert abs(cleaned - 60) < 0.6 * abs(clamped - 60)


def test_evaluate_every_and_the_operating_rule_are_run_settings():
    from coordinator.config import FederationConfig
    from models.tasks import get_task

    task = get_task("predictive-maintenance")
    assert FederationConfig(task=task).evaluate_every == 1
    private = FederationConfig.with_defaults(task=task, dp_epsilon=3.0)
    assert private.evaluate_every == 0  # under DP: the last round only
    chosen = FederationConfig(task=task, evaluate_every=3, operating_rule="f1")
    assert FederationConfig.from_run_config(chosen.to_run_config()) == chosen
    with pytest.raises(ValueError, match="unknown operating rule 'recall>=95'"):
        FederationConfig(task=task, operating_rule="recall>=95")
    with pytest.raises(ValueError, match="evaluate_every must be 0"):
        FederationConfig(task=task, evaluate_every=-1)


def test_a_dp_operating_point_says_when_the_noise_swamps_the_defects():
    # KAMP-like: 18 defects over 4 sites, each releasing its histogram at noise std 12.3 a count (one
    # evaluation at 10 % of epsilon 3). The merged count of defects carries noise of std
    # sqrt(4 x 12.3^2) x sqrt(20 bins) = 110: the threshold is flagged, with the figures in words.
    from models.histogram import RELIABLE_NOISE_STDS, operating_point

    def sites(n: int, rate: float, std: float, seed: int) -> list[EvalHistogram]:
        rng = np.random.default_rng(seed)
        out = []
        for k in range(4):
            y = (rng.random(n) < rate).astype(float)
            p = 1 / (1 + np.exp(-(rng.normal(0, 1, n) + 3 * y - 2)))
            exact = build_histogram("binary", y, p, bins=DP_SCORE_BINS)
            out.append(release_evaluation(exact, noise_multiplier=std, server_round=1, evaluations=1,
                                          rng=np.random.default_rng(seed + k))[0])  # fmt: skip
        return out

    few = merge(sites(400, 0.011, 12.3, 0))
    assert few.noise_std == pytest.approx(math.sqrt(4) * 12.3)
    assert EvalHistogram.from_json(few.to_json()).noise_std == pytest.approx(few.noise_std)  # travels in the JSON
    point = operating_point(few)
    assert point is not None and point["noisy"] and point["reliable"] is False
    assert point["defects_noise_std"] == pytest.approx(24.6 * math.sqrt(DP_SCORE_BINS))
    assert "too few against the noise" in point["warning"] and "+- 110 defects" in point["warning"]
    # Many defects at little noise: reliable, no warning; an exact histogram is always reliable.
    many = operating_point(merge(sites(4000, 0.2, 0.5, 1)))
    assert many is not None and many["reliable"] is True and "warning" not in many
    assert many["defects_noise_std"] * RELIABLE_NOISE_STDS < 4 * 4000 * 0.2
    y, p = _scores()
    exact = operating_point(build_histogram("binary", y, p))
    assert exact is not None and exact["reliable"] is True and "defects_noise_std" not in exact
