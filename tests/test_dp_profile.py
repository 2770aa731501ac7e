"""The DP data profile (privacy.profile): noise scale, refusals, accuracy on AI4I and C-MAPSS, the ledger's
charge, regression targets, sequence tasks counted in windows (DP-SGD's record), and the signed report."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from models.datasets import split_by
from models.scaler import ColumnMoments, FederatedScaler, profile_site
from models.schema import load_site_data
from models.tasks import TaskSpec, get_task
from privacy.accounting import epsilon_of
from privacy.errors import PolicyError, ReportInvalid
from privacy.profile import (
    PROFILE_SHARE,
    profile_blocks,
    profile_noise_multiplier,
    profile_records,
    record_unit,
    release_profile,
)
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
        (TaskSpec(name="r", kind="regression", label="y", features=("x",), ranges={"x": (0, 1)}),
         r"regression label needs a range .* missing for label 'y'"),
        (TaskSpec(name="n", kind="binary", label="y", features=("x", "z"), ranges={"x": (0, 1)}), r"for \[.z.\]"),
        (TaskSpec(name="c", kind="binary", label="y", features=("k",), categorical=("k",)), r"levels.*\['k'\]"),
    ],
)  # fmt: skip
def test_a_spec_that_cannot_bound_the_profile_is_refused_under_dp(spec, problem):
    with pytest.raises(PolicyError, match=problem):
        profile_blocks(spec)


def test_builtin_tabular_tasks_bound_their_profile():
    for name in ("predictive-maintenance", "failure-mode", "injection-molding-quality", "turbofan-rul"):
        assert profile_blocks(get_task(name))[0] == "count"
    rul = get_task("turbofan-rul")
    assert profile_blocks(rul)[-1] == "label:histogram" and len(profile_blocks(rul)) == 1 + 14 + 1
    assert rul.ranges["RUL"] == (0, 125)  # the label's cap is its definition


def test_a_regression_profile_releases_the_clipped_target_like_a_feature():
    spec = TaskSpec(name="r", kind="regression", label="y", features=("a",), ranges={"a": (0, 1), "y": (0, 64)})
    assert profile_blocks(spec) == ["count", "histogram:a", "label:histogram"]  # sensitivity sqrt(3)
    # 30 targets inside the range, 10 above it: clipped into the top bin, not refused by the mechanism
    frame = pd.DataFrame({"a": [0.5] * 40, "y": [10.5] * 30 + [500.0] * 10})
    rng = np.random.default_rng(0)
    released = [release_profile(frame, spec, noise_multiplier=2.0, rng=rng) for _ in range(400)]
    mechanism = released[0][1]
    assert mechanism.noise_std == pytest.approx(2.0 * math.sqrt(3)) and mechanism.unit == {"record": "row"}
    bins = np.array([p.histograms["y"] for p, _ in released])  # 64 unit-wide bins over [0, 64]
    assert bins.shape == (400, 64) and released[0][0].noise_std == pytest.approx(mechanism.noise_std)
    assert bins[:, 10].mean() == pytest.approx(30, abs=0.6) and bins[:, 63].mean() == pytest.approx(10, abs=0.6)
    assert bins[:, 30].mean() == pytest.approx(0, abs=0.6)
    assert bins.std(axis=0).mean() == pytest.approx(2.0 * math.sqrt(3), rel=0.05)
    # the federated target scaler comes from it: mean of 30 x 10.5 and 10 x 63.5 (the clipped bin's centre)
    scaler = FederatedScaler.combine([p for p, _ in released[:1]], spec)
    assert 0 < scaler.label_mean < 64 and scaler.label_std > 0


def test_the_coordinator_sums_the_sites_noisy_histograms_before_reading_moments():
    """Ten small sites: none of their own bins stands out of the noise, their sum does."""
    from models.scaler import NOISE_THRESHOLD, SiteProfile

    spec = TaskSpec(name="r", kind="regression", label="y", features=("a",), ranges={"a": (0, 64), "y": (0, 64)})
    rng = np.random.default_rng(1)
    true = np.zeros(64)
    true[20:24] = 60.0  # 240 records per site over four bins
    noise = 20.0
    assert true.max() < NOISE_THRESHOLD * noise  # a site's own bins are below its threshold
    profiles = []
    for _ in range(10):
        hist = list(true + rng.normal(0, noise, 64))
        profiles.append(SiteProfile(240, {"a": ColumnMoments(0, 0.0, 0.0)}, {}, ColumnMoments(240, 0.0, 0.0),
                                    histograms={"a": hist, "y": hist}, noise_std=noise))  # fmt: skip
    scaler = FederatedScaler.combine(profiles, spec)
    assert scaler.mean["a"] == pytest.approx(22.0, abs=0.1)  # bins 20-23, centres 20.5-23.5
    assert scaler.std["a"] == pytest.approx(math.sqrt(1.25), rel=0.1)  # the four centres' spread (+1/12 - 1/12)
    assert scaler.label_mean == pytest.approx(22.0, abs=0.1) and scaler.count == 2400


def test_a_capped_label_spike_does_not_collapse_the_target_scale():
    """A spike at the cap (most of C-MAPSS' RUL is 125) over a tail no single bin resolves: the bins
    are pooled and read as they are, rather than the one bin above the threshold alone."""
    from models.scaler import histogram_moments

    rng = np.random.default_rng(2)
    values = np.concatenate([np.full(5600, 125.0), rng.uniform(0, 125, 2400)])
    hist = np.histogram(values, bins=np.linspace(0, 125, 65))[0] + rng.normal(0, 131, 64)
    moments = histogram_moments(hist, (0, 125), count=8000, noise_std=131)
    assert math.sqrt(moments.variance) / values.std() == pytest.approx(1.0, abs=0.45)
    assert abs(moments.mean - values.mean()) < 0.5 * values.std()


# -- sequence tasks: DP-SGD's record is a window, and so is the profile's ---------------------------
def _sequence(stride: int = 1, short: str = "pad") -> TaskSpec:
    from models.sequence import SequenceSpec

    return TaskSpec(name="s", kind="regression", label="y", features=("a",), id_columns=("g",),
                    ranges={"a": (0, 100), "y": (0, 100)},
                    sequence=SequenceSpec("g", "t", 4, stride, short))  # type: ignore[arg-type]  # fmt: skip


def _groups(lengths: list[int]) -> pd.DataFrame:
    rows = [{"g": f"e{g}", "t": float(t), "a": float(t), "y": float(n - t)} for g, n in enumerate(lengths)
            for t in range(n)]  # fmt: skip
    return pd.DataFrame(rows).sample(frac=1.0, random_state=0).reset_index(drop=True)


@pytest.mark.parametrize(("stride", "short"), [(1, "pad"), (3, "pad"), (1, "drop")])
def test_a_sequence_profile_counts_windows_the_unit_dp_sgd_trains_on(stride, short):
    from models.training import prepare

    spec = _sequence(stride, short)
    frame = _groups([10, 7, 3])
    scaler = FederatedScaler.fit_pooled(frame, spec)
    x, y = prepare(frame, spec, scaler)  # what DP-SGD samples, clips and noises: one window per record
    records = profile_records(frame, spec)
    assert len(records) == len(x) and sorted(records["y"]) == sorted(y)  # each window by its last row
    assert len(records) < len(frame) or (stride, short) == (1, "pad")
    rng = np.random.default_rng(0)
    released = [release_profile(frame, spec, noise_multiplier=0.5, rng=rng) for _ in range(200)]
    counts = np.array([p.count for p, _ in released], dtype=float)
    assert counts.mean() == pytest.approx(len(x), abs=0.3)  # windows, not rows
    assert released[0][1].unit == record_unit(spec) == {
        "record": "window", "window": 4, "stride": stride, "windows_per_row": math.ceil(4 / stride)}  # fmt: skip
    assert released[0][1].to_dict()["unit"]["record"] == "window"


def test_a_sequence_profile_is_charged_at_the_trainings_delta_and_refused_when_the_budget_is_spent(tmp_path):
    from privacy.errors import BudgetExhausted
    from privacy.ledger import PrivacyLedger
    from privacy.policy import DpRequest, SitePrivacyPolicy

    spec = _sequence(stride=3)
    frame = _groups([40, 35, 30])
    windows = len(profile_records(frame, spec))
    ledger = PrivacyLedger(tmp_path / "s.ledger.json", "s")
    policy = SitePrivacyPolicy(max_epsilon=3.0)
    request = DpRequest(run_id="r1", target_epsilon=3.0, max_grad_norm=1.0, num_rounds=1)
    plan = ledger.plan_profile(policy, request, records=windows)
    profile, mechanism = release_profile(frame, spec, noise_multiplier=plan.noise_multiplier)
    entry = ledger.record_profile(plan, mechanism=mechanism.to_dict(), profile=profile.to_json())
    step = ledger.plan_round(policy, request, records=windows, batch_size=8, epochs=1, server_round=1)
    assert plan.delta == step.delta == policy.delta_for(windows)  # one unit, one delta
    assert entry["unit"]["record"] == "window" and entry["epsilon"] == pytest.approx(
        epsilon_of([(plan.noise_multiplier, 1.0, 1)], delta=plan.delta))  # fmt: skip
    ledger.record_round(step, server_round=1, steps=step.steps)
    second = DpRequest(run_id="r2", target_epsilon=3.0, max_grad_norm=1.0, num_rounds=1)
    with pytest.raises(BudgetExhausted, match="DP data profile would bring epsilon from 2.9"):
        ledger.plan_profile(policy, second, records=windows)


def _cmapss_sites() -> list[pd.DataFrame]:
    from models.datasets import holdout_split
    from models.schema import validate_frame

    spec = get_task("turbofan-rul")
    raw = pd.read_csv(dataset_path("cmapss_fd003.csv"))
    return [holdout_split(validate_frame(g, spec, source=op), spec, seed=0)[0] for op, g in raw.groupby("operator")]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_merged_noisy_profile_of_turbofan_rul_stays_usable_at_epsilon_3(seed):
    """Ten operators of 514-1228 training windows: 16 blocks, noise std 41.5 per bin and site."""
    spec = get_task("turbofan-rul")
    sites = _cmapss_sites()
    z = profile_noise_multiplier(target_epsilon=3.0, delta=1e-4)
    rng = np.random.default_rng(seed)
    released = [release_profile(f, spec, noise_multiplier=z, rng=rng) for f in sites]
    noisy = FederatedScaler.combine([p for p, _ in released], spec)
    exact = FederatedScaler.combine([profile_site(f, spec) for f in sites], spec)
    # measured over seeds 0-9: |mean error| <= 0.50 std (median 0.12), std ratio 0.22-1.00 (median 0.50);
    # the label's mean within 0.58 std, its std ratio 1.00-1.43 (the capped spike is pooled, not thresholded)
    for c in spec.numeric_features:
        assert abs(noisy.mean[c] - exact.mean[c]) < 0.6 * exact.std[c], c
        assert 0.15 < noisy.std[c] / exact.std[c] < 1.2, c
    assert abs(noisy.label_mean - exact.label_mean) < 0.7 * exact.label_std
    assert 0.8 < noisy.label_std / exact.label_std < 1.6
    assert abs(noisy.count - exact.count) < 4 * released[0][1].noise_std * math.sqrt(len(sites))


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


# -- the signed report of a sequence task: its epsilons are per window, and say so -----------------
_WINDOW = {"record": "window", "window": 30, "stride": 1, "windows_per_row": 30}


def _sequence_report() -> dict:
    from privacy.report import build_report
    from tests.factories import dp_manifest

    manifest = dp_manifest(profile=True)
    sequence = {"group": "unit", "order": "cycle", "window": 30, "stride": 1, "short": "pad"}
    manifest["task"] = {"name": "turbofan-rul", "kind": "regression", "sequence": sequence}
    for mechanism in manifest["profile_dp"].values():
        mechanism["unit"] = dict(_WINDOW)
    return build_report(manifest)


def test_a_sequence_tasks_report_states_per_window_epsilons_and_verifies(profile_report):
    from privacy.report import verify_report

    _, signed = profile_report
    report = _sequence_report()
    unit = report["record_unit"]
    assert {k: v for k, v in unit.items() if k != "note"} == _WINDOW
    assert "one window of 30 rows" in unit["note"] and "up to 30 windows" in unit["note"]
    assert report["sites"]["plant-a"]["mechanisms"][0]["unit"] == _WINDOW
    assert report["not_covered"] == ""
    verified = verify_report(*signed(report))
    assert verified["record_unit"]["record"] == "window"
    path, _ = signed(report)
    assert "One record is one window" in (path.parent / "report.html").read_text()


@pytest.mark.parametrize(
    ("tamper", "problem"),
    [
        (lambda r: r.update(record_unit={"record": "row"}), r"record_unit .* is not the task's: .* per window"),
        (lambda r: r.pop("record_unit"), r"record_unit .* is not the task's"),  # a sequence report must state it
        (lambda r: r["record_unit"].update(windows_per_row=1), r"record_unit .* is not the task's"),
        (lambda r: r["task"].pop("sequence"), r"is not the task's: the epsilons of this task are per row"),
        (lambda r: r["sites"]["plant-a"]["mechanisms"][0].update(unit={"record": "row"}),
         r"site 'plant-a' profile: released per .*row.* one epsilon cannot mix two units"),
    ],
)  # fmt: skip
def test_a_report_that_misstates_its_record_unit_fails_verify(profile_report, tamper, problem):
    from privacy.report import verify_report

    _, signed = profile_report
    report = _sequence_report()
    tamper(report)
    with pytest.raises(ReportInvalid, match=problem):
        verify_report(*signed(report))


def test_without_per_site_dp_the_report_says_exactly_what_is_uncovered():
    from privacy.report import build_report

    manifest = {"run_id": "plain", "task": {"name": "turbofan-rul"}, "config": {},
                "rounds": [{"round": 1, "per_site": {"a": {"rmse": 20.0}}, "failures": []}]}  # fmt: skip
    text = build_report(manifest)["not_covered"]
    assert text.startswith("No per-site DP in this run")
    for part in ("model update in every round", "the label's counts or mean and variance", "held-out scores"):
        assert part in text
    assert "supplier-level" not in text  # no central DP either


def test_a_row_tasks_report_states_per_row_epsilons(profile_report):
    report, _ = profile_report
    assert report["record_unit"] == {"record": "row"}


# -- end to end: turbofan-rul under DP, the real ServerApp and ClientApps in one process ---------------
def test_turbofan_rul_under_dp_covers_everything_it_released(tmp_path, monkeypatch):
    """Three operators (five engines each) in Flower's message loop (tests/loopback.py); a fourth has
    spent its budget and refuses its profile. Every release is accounted: `not_covered` is empty, and
    verify recomputes it."""
    import json

    import flwr.simulation

    from coordinator.config import FederationConfig
    from coordinator.simulation import run_experiment, write_site_files
    from privacy.ledger import PrivacyLedger
    from privacy.policy import DpRequest, SitePrivacyPolicy
    from privacy.report import verify_report
    from tests.loopback import run_in_process

    monkeypatch.setattr(flwr.simulation, "run_simulation", run_in_process)
    spec = get_task("turbofan-rul")
    raw = pd.read_csv(dataset_path("cmapss_fd003.csv"))
    raw = raw[raw["operator"].isin(["OP01", "OP02", "OP04", "OP05"])]
    raw = raw[raw["unit"].isin(raw.groupby("operator")["unit"].apply(lambda u: sorted(u.unique())[:5]).explode())]
    out = tmp_path / "run"
    site_files, _ = write_site_files(raw, "operator", out, spec=spec)  # sites op01, op02, op04, op05
    # op05 spent its whole budget of 1.0 in an earlier run (its ledger is on-site).
    policies = {"op05": SitePrivacyPolicy(max_epsilon=1.0)}
    ledger = PrivacyLedger(out / "sites" / ".sangsaeng-privacy" / "op05.ledger.json", "op05")
    earlier = DpRequest(run_id="earlier", target_epsilon=1.0, max_grad_norm=1.0, num_rounds=1)
    plan = ledger.plan_round(policies["op05"], earlier, records=100, batch_size=16, epochs=2)
    ledger.record_round(plan, server_round=1, steps=plan.steps)
    config = FederationConfig(
        task=spec, num_rounds=1, local_epochs=1, batch_size=128, out_dir=out, min_sites=2, dp_epsilon=3.0,
        key_dir=tmp_path / "keys",
    )  # fmt: skip

    results = run_experiment(spec, site_files, config, site_policies=policies)

    (refusal,) = results["privacy"]["refusals"]
    assert "site 'op05': budget exhausted: the DP data profile would bring epsilon" in refusal
    report = verify_report(out / "privacy" / "report.json", out / "privacy" / "coordinator.pub.pem")
    assert report["not_covered"] == ""  # the profile, the rounds and the evaluation: all accounted
    assert report["record_unit"]["record"] == "window" and report["record_unit"]["windows_per_row"] == 30
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    scaler = FederatedScaler.from_json(manifest["scaler"])
    assert set(report["sites"]) == {"op01", "op02", "op04"}
    for site, entry in report["sites"].items():
        profile, *_ = entry["mechanisms"]
        assert profile["mechanism"] == "profile" and profile["covers"][-1] == "label:histogram"
        assert profile["unit"] == {"record": "window", "window": 30, "stride": 1, "windows_per_row": 30}
        assert profile["sensitivity"] == pytest.approx(4.0)  # 16 blocks
        # The profile's records are the training's windows: one delta for every release.
        assert entry["records"] == manifest["sites"][site]["n_train"] and entry["delta"] < 1 / entry["records"]
        assert 2.9 < entry["epsilon"] <= 3.0
    # The federated scaler came from the noisy profiles: near the real sensors' scale, never 0 / 1. Three
    # sites of about 400 windows: the label's spike at 125 is read pooled, leaning toward the range's middle.
    # The noise comes from OS entropy: the threshold can cut sensor_2's tails or keep a noisy bin, so its std
    # reads up to about 4.5 x the exact ~0.5 (measured over seeds 0-9; a fresh-clone CI run read 1.72).
    assert 641.5 < scaler.mean["sensor_2"] < 643 and 0.05 < scaler.std["sensor_2"] < 2.5
    assert 30 < scaler.label_mean < 125 and 5 < scaler.label_std < 65
    assert np.isfinite(results["federated"]["global"]["rmse"])
