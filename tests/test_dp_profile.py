"""The DP data profile (privacy.profile): noise scale, refusals, accuracy on AI4I, the ledger's charge."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from models.datasets import split_by
from models.scaler import FederatedScaler, profile_site
from models.schema import load_site_data
from models.tasks import TaskSpec, get_task
from privacy.accounting import epsilon_of
from privacy.errors import PolicyError, ReportInvalid
from privacy.profile import PROFILE_SHARE, profile_blocks, profile_noise_multiplier, release_profile
from tests.conftest import dataset_path

PM = get_task("predictive-maintenance")


@pytest.fixture(scope="module")
def ai4i_sites() -> dict[str, pd.DataFrame]:
    frame = load_site_data(dataset_path("ai4i2020.csv"), PM)
    return split_by(frame, "Type")[0]


def test_noise_std_is_sensitivity_times_multiplier_known_values():
    spec = TaskSpec(name="t", kind="binary", label="y", features=("a", "b", "k"), categorical=("k",),
                    ranges={"a": (0, 1), "b": (0, 10)}, levels={"k": ("p", "q")})  # fmt: skip
    # count, two histograms, one level block, the positives: five blocks of sensitivity 1 each
    assert profile_blocks(spec) == ["count", "histogram:a", "histogram:b", "levels:k", "label:positives"]
    frame = pd.DataFrame({"a": [0.5] * 40, "b": [5.0] * 40, "k": ["p"] * 40, "y": [1] * 10 + [0] * 30})
    rng = np.random.default_rng(0)
    released = [release_profile(frame, spec, noise_multiplier=2.0, rng=rng) for _ in range(600)]
    mechanism = released[0][1]
    assert mechanism.sensitivity == pytest.approx(math.sqrt(5))
    assert mechanism.noise_std == pytest.approx(2.0 * math.sqrt(5))
    assert mechanism.step == (2.0, 1.0, 1)
    counts = np.array([p.categories["k"]["p"] for p, _ in released], dtype=float)  # 40 + noise, rounded
    assert counts.mean() == pytest.approx(40, abs=0.5)
    assert counts.std() == pytest.approx(2.0 * math.sqrt(5), rel=0.1)


def test_the_profile_noise_costs_its_share_of_the_target():
    z = profile_noise_multiplier(target_epsilon=3.0, delta=1e-5)
    spent = epsilon_of([(z, 1.0, 1)], delta=1e-5)
    assert 0.95 * PROFILE_SHARE * 3.0 < spent <= PROFILE_SHARE * 3.0


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        (TaskSpec(name="r", kind="regression", label="y", features=("x",), ranges={"x": (0, 1)}), "regression"),
        (TaskSpec(name="n", kind="binary", label="y", features=("x", "z"), ranges={"x": (0, 1)}), r"for \[.z.\]"),
        (TaskSpec(name="c", kind="binary", label="y", features=("k",), categorical=("k",)), r"levels.*\['k'\]"),
    ],
)  # fmt: skip
def test_a_spec_that_cannot_bound_the_profile_is_refused_under_dp(spec, problem):
    with pytest.raises(PolicyError, match=problem):
        profile_blocks(spec)


def test_builtin_ai4i_tasks_bound_their_profile():
    for name in ("predictive-maintenance", "failure-mode", "injection-molding-quality"):
        assert profile_blocks(get_task(name))[0] == "count"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_merged_noisy_profile_is_close_to_the_exact_one_on_ai4i_at_epsilon_3(ai4i_sites, seed):
    z = profile_noise_multiplier(target_epsilon=3.0, delta=1e-5)
    rng = np.random.default_rng(seed)
    released = [release_profile(f, PM, noise_multiplier=z, rng=rng) for f in ai4i_sites.values()]
    noisy = FederatedScaler.combine([p for p, _ in released], PM)
    exact = FederatedScaler.combine([profile_site(f, PM) for f in ai4i_sites.values()], PM)
    total_std = released[0][1].noise_std * math.sqrt(len(ai4i_sites))
    assert abs(noisy.count - exact.count) < 4 * total_std
    assert abs(noisy.positives - exact.positives) < 4 * total_std
    for c in PM.numeric_features:  # measured over seeds 0-2: |error| <= 0.37 std, ratio 0.64-0.97
        assert abs(noisy.mean[c] - exact.mean[c]) < 0.5 * exact.std[c], c
        assert 0.55 < noisy.std[c] / exact.std[c] < 1.2, c
    assert all(n >= 0 for levels in [p.categories["Type"] for p, _ in released] for n in levels.values())


# -- the ledger's charge -----------------------------------------------------------------
def _run_with_profile(ledger, policy, request, frame, rounds):
    plan = ledger.plan_profile(policy, request, records=len(frame))
    profile, mechanism = release_profile(frame, PM, noise_multiplier=plan.noise_multiplier)
    entry = ledger.record_profile(plan, mechanism=mechanism.to_dict(), profile=profile.to_json())
    epsilon = entry["epsilon"]
    for server_round in range(1, rounds + 1):
        step = ledger.plan_round(policy, request, records=len(frame), batch_size=100, epochs=1,
                                 server_round=server_round)  # fmt: skip
        epsilon = ledger.record_round(step, server_round=server_round, steps=step.steps)
    return plan, mechanism, step, epsilon


def test_ledger_after_profile_and_rounds_equals_an_independent_accountant(tmp_path, ai4i_sites):
    from opacus.accountants import RDPAccountant

    from privacy.ledger import PrivacyLedger
    from privacy.policy import DpRequest, SitePrivacyPolicy

    frame = ai4i_sites["h"]
    ledger = PrivacyLedger(tmp_path / "h.ledger.json", "h")
    request = DpRequest(run_id="r1", target_epsilon=3.0, max_grad_norm=1.0, num_rounds=3)
    plan, mechanism, step, epsilon = _run_with_profile(ledger, SitePrivacyPolicy(), request, frame, 3)
    independent = RDPAccountant()
    independent.step(noise_multiplier=mechanism.noise_multiplier, sample_rate=1.0)  # the profile: one Gaussian
    for _ in range(3 * step.steps):
        independent.step(noise_multiplier=step.noise_multiplier, sample_rate=step.sample_rate)
    assert epsilon == pytest.approx(independent.get_epsilon(delta=step.delta), rel=1e-9)
    assert 0.9 * 3.0 < epsilon <= 3.0  # the training noise was calibrated with the profile included
    assert step.prior == []  # the profile is this run's own, not an earlier run's spending
    # The same run asks again (a resume): the same release, nothing new charged.
    again = ledger.plan_profile(SitePrivacyPolicy(), request, records=len(frame))
    assert again.released is not None and again.released["profile"] == ledger.load()["entries"][0]["profile"]
    assert ledger.spent(delta=step.delta) == pytest.approx(epsilon)


def test_a_site_refuses_the_profile_when_its_budget_cannot_cover_it(tmp_path, ai4i_sites):
    from privacy.errors import BudgetExhausted
    from privacy.ledger import PrivacyLedger
    from privacy.policy import DpRequest, SitePrivacyPolicy

    frame = ai4i_sites["h"]
    ledger = PrivacyLedger(tmp_path / "h.ledger.json", "h")
    policy = SitePrivacyPolicy(max_epsilon=3.0)
    _run_with_profile(ledger, policy, DpRequest(run_id="r1", target_epsilon=3.0, max_grad_norm=1.0, num_rounds=2),
                      frame, 2)  # fmt: skip
    spent = ledger.spent(delta=policy.delta_for(len(frame)))
    second = DpRequest(run_id="r2", target_epsilon=3.0, max_grad_norm=1.0, num_rounds=2)
    with pytest.raises(BudgetExhausted, match="DP data profile would bring epsilon from 2.9"):
        ledger.plan_profile(policy, second, records=len(frame))
    assert ledger.spent(delta=policy.delta_for(len(frame))) == spent  # nothing charged
    assert ledger.audit.entries()[-1]["event"] == "refusal"


# -- the signed report ---------------------------------------------------------------------
@pytest.fixture
def profile_report(tmp_path):
    from privacy.keys import PUBLIC_NAME, load_signing_key
    from privacy.report import build_report, write_signed_report
    from tests.factories import dp_manifest

    key = load_signing_key(tmp_path / "keys", create=True)
    report = build_report(dp_manifest(profile=True))

    def signed(body: dict) -> tuple:
        path = write_signed_report(body, tmp_path / "privacy", key)
        return path, tmp_path / "privacy" / PUBLIC_NAME

    return report, signed


def test_the_report_lists_the_profile_and_verify_recomputes_it(profile_report):
    from privacy.report import REPORT_VERSION, verify_report

    report, signed = profile_report
    assert report["version"] == REPORT_VERSION
    (mechanism,) = report["sites"]["plant-a"]["mechanisms"]
    assert mechanism["mechanism"] == "profile" and mechanism["noise_std"] == pytest.approx(12 * math.sqrt(11))
    assert "DP data profile" in report["mechanism"]
    assert report["not_covered"] == ""  # the profile and the rounds are all this run released
    verified = verify_report(*signed(report))
    # the rounds' epsilons include the profile: without it they would be lower
    assert verified["sites"]["plant-a"]["rounds"][0]["epsilon"] > epsilon_of([(1.2, 0.05, 40)], delta=1e-5)


@pytest.mark.parametrize(
    ("field", "change", "problem"),
    [
        ("noise_multiplier", 2.0, "noise std .* is not noise multiplier"),  # claim more noise than was added
        ("sensitivity", 0.5, "sensitivity .* is not sqrt of its 11 blocks"),
        ("covers", None, "sensitivity .* is not sqrt of its 10 blocks"),  # hide a block
        ("epsilon", 0.5, "profile: recorded epsilon .* accountant gives"),
        ("steps", 2, "one step without subsampling"),
    ],
)
def test_tampering_with_the_profile_mechanism_fails_verify(profile_report, field, change, problem):
    from privacy.report import verify_report

    report, signed = profile_report
    mechanism = report["sites"]["plant-a"]["mechanisms"][0]
    if field == "covers":
        mechanism["covers"] = mechanism["covers"][1:]
    elif isinstance(change, float):
        mechanism[field] *= change
    else:
        mechanism[field] = change
    with pytest.raises(ReportInvalid, match=problem):
        verify_report(*signed(report))


def test_a_consistently_forged_profile_or_a_dropped_one_fails_on_the_epsilons(profile_report):
    from privacy.report import verify_report

    report, signed = profile_report
    mechanism = report["sites"]["plant-a"]["mechanisms"][0]
    mechanism["noise_multiplier"] *= 2
    mechanism["noise_std"] *= 2
    with pytest.raises(ReportInvalid, match="profile: recorded epsilon"):
        verify_report(*signed(report))
    del report["sites"]["plant-a"]["mechanisms"][0]
    with pytest.raises(ReportInvalid, match="round 1: recorded epsilon"):
        verify_report(*signed(report))
    del report["sites"]["plant-a"]["mechanisms"]
    with pytest.raises(ReportInvalid, match="version 2 report must list the site's mechanisms"):
        verify_report(*signed(report))


def test_a_report_from_before_the_dp_profile_still_verifies(profile_report):
    from privacy.report import build_report, verify_report
    from tests.factories import dp_manifest

    _, signed = profile_report
    old = build_report(dp_manifest())
    del old["version"]
    for entry in old["sites"].values():
        del entry["mechanisms"]
    assert verify_report(*signed(old))["sites"]["plant-a"]["epsilon"] > 0
    old["version"] = 3
    with pytest.raises(ReportInvalid, match="newer than this verifier"):
        verify_report(*signed(old))


def test_the_summary_and_the_terminal_table_show_the_profiles_share(profile_report):
    from rich.console import Console

    from coordinator.report import privacy_table
    from privacy.summary import privacy_summary

    report, _ = profile_report
    summary = privacy_summary(report)
    profile = report["sites"]["plant-a"]["mechanisms"][0]["epsilon"]
    assert summary["sites"]["plant-a"]["profile_epsilon"] == profile
    console = Console(width=120, record=True)
    console.print(privacy_table(summary))
    text = console.export_text()
    assert "profile" in text and f"{profile:.3f}" in text


def test_an_image_sites_noisy_pixel_moments_stay_near_the_exact_ones():
    from models.images import PIXELS
    from tests.test_vision import image_task

    spec = image_task()
    assert profile_blocks(spec) == ["count", "label:positives", "pixels:0"]
    rng = np.random.default_rng(0)
    images = np.clip(rng.normal(100, 30, size=(1000, 1, 12, 16)), 0, 255).astype(np.uint8)
    frame = pd.DataFrame({"defective": [0, 1] * 500})
    frame[PIXELS] = list(images)
    exact = profile_site(frame, spec).pixels["0"]
    z = profile_noise_multiplier(target_epsilon=3.0, delta=1e-4)  # a site of 1000 images at epsilon 3
    for _ in range(5):
        profile, mechanism = release_profile(frame, spec, noise_multiplier=z, rng=rng)
        noisy = profile.pixels["0"]
        # measured over 200 draws: |mean error| <= 0.078 (exact mean 0.39, std 0.12); the std's ratio
        # 0.96 at the median, at most 1.59, and a few draws at its floor (0.15: a 16-value bin's own)
        assert noisy.count > 0 and abs(noisy.mean - exact.mean) < 0.08
        assert 0.15 < math.sqrt(noisy.variance) / math.sqrt(exact.variance) < 1.7
    scaler = FederatedScaler.combine([profile], spec)
    assert scaler.pixel_std[0] > 0


def test_a_multiclass_profile_releases_non_negative_class_counts_the_scaler_can_weight():
    spec = get_task("failure-mode")
    frame = load_site_data(dataset_path("ai4i2020.csv"), spec).head(3000)
    z = profile_noise_multiplier(target_epsilon=3.0, delta=1e-5)
    profile, mechanism = release_profile(frame, spec, noise_multiplier=z, rng=np.random.default_rng(0))
    assert "label:class counts" in mechanism.blocks and set(profile.label_counts) == set(spec.classes)
    assert all(n >= 0 for n in profile.label_counts.values())
    scaler = FederatedScaler.combine([profile], spec)
    assert scaler.classes == spec.classes and np.all(np.isfinite(scaler.class_weights()))
    exact = frame[spec.label].astype(str).value_counts()
    no_failure = spec.classes[0]
    assert abs(profile.label_counts[no_failure] - exact[no_failure]) < 4 * mechanism.noise_std
