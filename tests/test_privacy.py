"""Privacy: accounting against Opacus, site budgets, DP-SGD really applied, signed reports, audit log."""

from __future__ import annotations

import json
import math
import os
import shutil
import stat
import subprocess
import warnings

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant

from models.nets import build_model, get_weights
from models.scaler import FederatedScaler
from models.tasks import get_task
from models.training import TrainConfig
from privacy.accounting import calibrate_noise, epsilon_of
from privacy.audit import AuditLog
from privacy.central import CentralDP
from privacy.dp_sgd import make_private, train_private
from privacy.errors import AuditLogBroken, BudgetExhausted, PolicyError, ReportInvalid, SigningKeyError
from privacy.keys import PRIVATE_NAME, PUBLIC_NAME, init_signing_key, load_signing_key
from privacy.ledger import PrivacyLedger
from privacy.policy import DpRequest, SitePrivacyPolicy
from privacy.report import build_report, verify_report, write_signed_report
from tests.factories import dp_manifest

PM = get_task("predictive-maintenance")


# -- accounting ----------------------------------------------------------------------
def test_ledger_epsilon_equals_an_independent_opacus_accountant(tmp_path):
    ledger = PrivacyLedger(tmp_path / "site.ledger.json", "plant")
    request = DpRequest(run_id="r1", target_epsilon=4.0, max_grad_norm=1.0, num_rounds=5)
    policy = SitePrivacyPolicy()
    independent = RDPAccountant()
    for server_round in range(1, 6):
        plan = ledger.plan_round(policy, request, records=1000, batch_size=100, epochs=2)
        epsilon = ledger.record_round(plan, server_round=server_round, steps=plan.steps)
        for _ in range(plan.steps):  # the way Opacus' own engine steps its accountant
            independent.step(noise_multiplier=plan.noise_multiplier, sample_rate=plan.sample_rate)
        assert epsilon == pytest.approx(independent.get_epsilon(delta=plan.delta), rel=1e-9)
    # Noise was calibrated for the whole run: it ends at (not over) the target.
    assert 3.9 < epsilon <= 4.0
    # One accountant per round would understate the spend badly.
    one_round = epsilon_of([(plan.noise_multiplier, plan.sample_rate, plan.steps)], delta=plan.delta)
    assert epsilon > 1.8 * one_round


@pytest.mark.parametrize(("target", "rate", "steps"), [(1.0, 0.01, 500), (3.0, 0.05, 400), (8.0, 0.2, 50)])
@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_calibrated_noise_never_overshoots_the_target(target, rate, steps, accountant):
    sigma = calibrate_noise(target_epsilon=target, delta=1e-5, sample_rate=rate, steps=steps, accountant=accountant)
    reached = epsilon_of([(sigma, rate, steps)], delta=1e-5, accountant=accountant)
    assert reached <= target
    assert reached > 0.95 * target  # and does not waste the budget either


# -- site budgets ------------------------------------------------------------------------
def test_a_site_at_its_budget_refuses_with_budget_exhausted(tmp_path):
    ledger = PrivacyLedger(tmp_path / "site.ledger.json", "plant")
    policy = SitePrivacyPolicy(max_epsilon=2.0)
    first = DpRequest(run_id="r1", target_epsilon=2.0, max_grad_norm=1.0, num_rounds=2)
    for server_round in (1, 2):
        plan = ledger.plan_round(policy, first, records=500, batch_size=50, epochs=1)
        ledger.record_round(plan, server_round=server_round, steps=plan.steps)
    second = DpRequest(run_id="r2", target_epsilon=5.0, max_grad_norm=1.0, num_rounds=2)
    with pytest.raises(BudgetExhausted, match="budget exhausted: epsilon 1.9.* already spent of 2.000"):
        ledger.plan_round(policy, second, records=500, batch_size=50, epochs=1)
    events = [e["event"] for e in ledger.audit.entries()]
    assert events.count("round trained") == 2 and events[-1] == "refusal" and events[0] == "budget change"


def test_resuming_with_more_rounds_recalibrates_and_stays_within_the_run_target(tmp_path):
    # The site's own budget (10) is far above the run's target (3): only the target stops it.
    ledger = PrivacyLedger(tmp_path / "site.ledger.json", "plant")
    policy = SitePrivacyPolicy(max_epsilon=10.0)
    planned = DpRequest(run_id="r1", target_epsilon=3.0, max_grad_norm=1.0, num_rounds=2)
    for server_round in (1, 2):
        plan = ledger.plan_round(policy, planned, records=500, batch_size=50, epochs=1, server_round=server_round)
        ledger.record_round(plan, server_round=server_round, steps=plan.steps)
    first_noise = plan.noise_multiplier
    # The run is resumed from its checkpoint with 5 rounds instead of 2.
    extended = DpRequest(run_id="r1", target_epsilon=3.0, max_grad_norm=1.0, num_rounds=5)
    for server_round in (3, 4, 5):
        plan = ledger.plan_round(policy, extended, records=500, batch_size=50, epochs=1, server_round=server_round)
        epsilon = ledger.record_round(plan, server_round=server_round, steps=plan.steps)
    assert plan.noise_multiplier > first_noise  # more noise for the extra rounds ...
    assert epsilon <= 3.0 * (1 + 1e-9)  # ... so the run ends within its target, not over it
    assert epsilon == pytest.approx(epsilon_of(ledger.history(), delta=plan.delta))
    assert "noise recalibrated" in [e["event"] for e in ledger.audit.entries()]


def test_a_round_beyond_the_runs_plan_is_refused_not_overspent(tmp_path):
    # Without a round number to replan from, a round past the plan that would pass the run's
    # target is refused, even though the site's own budget would still allow it.
    ledger = PrivacyLedger(tmp_path / "site.ledger.json", "plant")
    policy = SitePrivacyPolicy(max_epsilon=10.0)
    request = DpRequest(run_id="r1", target_epsilon=3.0, max_grad_norm=1.0, num_rounds=2)
    for server_round in (1, 2):
        plan = ledger.plan_round(policy, request, records=500, batch_size=50, epochs=1)
        ledger.record_round(plan, server_round=server_round, steps=plan.steps)
    with pytest.raises(BudgetExhausted, match="over the run's target of 3.000"):
        ledger.plan_round(policy, request, records=500, batch_size=50, epochs=1)


def test_site_policy_overrides_the_coordinator(tmp_path):
    ledger = PrivacyLedger(tmp_path / "l.json", "plant")
    no_request = DpRequest(run_id="r", target_epsilon=None, max_grad_norm=1.0, num_rounds=3)
    assert ledger.plan_round(SitePrivacyPolicy(), no_request, records=500, batch_size=50, epochs=1) is None
    required = SitePrivacyPolicy(max_epsilon=1.5, dp_required=True)
    plan = ledger.plan_round(required, no_request, records=500, batch_size=50, epochs=1)
    assert plan is not None and plan.budget_epsilon == 1.5
    generous = DpRequest(run_id="r2", target_epsilon=10.0, max_grad_norm=1.0, num_rounds=3)
    plan = PrivacyLedger(tmp_path / "m.json", "p").plan_round(required, generous, records=500, batch_size=50, epochs=1)
    assert plan.budget_epsilon == 1.5  # the coordinator cannot raise the site's budget


def test_policy_refuses_unusable_settings():
    with pytest.raises(PolicyError, match="must set max-epsilon"):
        SitePrivacyPolicy(dp_required=True)
    with pytest.raises(PolicyError, match="not below 1/n"):
        SitePrivacyPolicy(delta=0.01).delta_for(1000)
    assert SitePrivacyPolicy().delta_for(1000) == pytest.approx(1e-4)


def test_corrupt_ledger_is_an_error_not_a_fresh_start(tmp_path):
    path = tmp_path / "site.ledger.json"
    path.write_text("{not json")
    with pytest.raises(PolicyError, match="corrupt"):
        PrivacyLedger(path, "plant").load()


# -- DP-SGD really applied -----------------------------------------------------------------
def _site_data(rows: int = 256, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 8)).astype(np.float32) * 10
    y = (rng.random(rows) < 0.3).astype(np.float32)
    scaler = FederatedScaler(PM.name, (), {}, {}, {}, 0.0, 1.0, rows, 77)
    return x, y, scaler


def _net(model: str):
    return build_model(8, name=model, hidden=() if model == "ple" else (64, 32), seed=0)


def _private_batch(noise: float, clip: float, seed: int = 0, model: str = "mlp", per_sample: str = "auto"):
    """One batch through make_private: (per-sample gradients or None under ghost clipping, the step's gradient)."""
    x, y, scaler = _site_data()
    torch.manual_seed(0)
    net = _net(model)
    private = make_private(
        net, x, y, spec=PM, scaler=scaler, config=TrainConfig(batch_size=64, seed=seed),
        noise_multiplier=noise, max_grad_norm=clip, per_sample=per_sample,
    )  # fmt: skip
    with warnings.catch_warnings():  # as train_private: ghost clipping's hooks warn, by design
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        private.gradients(torch.as_tensor(x[:64]), torch.as_tensor(y[:64]))
    params = list(net.parameters())
    per_sample_grads = None
    if private.per_sample != "ghost":
        per_sample_grads = torch.cat([p.grad_sample.reshape(64, -1) for p in params], dim=1)
    private.optimiser.pre_step()  # clip, accumulate, add noise, scale: what step() applies
    grad = torch.cat([p.grad.reshape(-1) for p in params])
    return per_sample_grads, grad, private


@pytest.mark.parametrize(("model", "per_sample"), [("mlp", "ew"), ("ple", "ew"), ("ple", "head")])
def test_clipping_bounds_per_sample_gradients(model, per_sample):
    clip = 0.05
    grads, grad, private = _private_batch(noise=0.0, clip=clip, model=model, per_sample=per_sample)
    assert private.per_sample == per_sample
    assert grads.norm(dim=1).max() > 5 * clip  # raw per-sample gradients are far above the bound...
    # ...the clipped mean over the batch is bounded by the clip norm (sum of <= clip, over expected size)
    assert grad.norm() <= clip * 64 / private.optimiser.expected_batch_size + 1e-6


@pytest.mark.parametrize(("model", "per_sample"), [("ple", "head"), ("mlp", "ghost")])
def test_clipped_gradient_equals_opacus_per_sample_clipping(model, per_sample):
    """The output-layer path and ghost clipping bound each sample exactly as materialised per-sample clipping."""
    reference_grads, reference, _ = _private_batch(noise=0.0, clip=0.05, model=model, per_sample="ew")
    per_sample_grads, grad, private = _private_batch(noise=0.0, clip=0.05, model=model, per_sample=per_sample)
    assert private.per_sample == per_sample
    assert reference.norm() > 1e-3  # not vanishing
    torch.testing.assert_close(grad, reference, rtol=1e-4, atol=1e-7)
    if per_sample == "head":
        torch.testing.assert_close(per_sample_grads, reference_grads, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("model", "per_sample"), [("ple", "head"), ("ple", "ew"), ("mlp", "ghost")])
def test_noise_is_present_and_scaled_to_sigma_times_clip(model, per_sample):
    _, clean, private = _private_batch(noise=0.0, clip=0.05, model=model, per_sample=per_sample)
    _, noisy_a, _ = _private_batch(noise=2.0, clip=0.05, seed=1, model=model, per_sample=per_sample)
    _, noisy_b, _ = _private_batch(noise=2.0, clip=0.05, seed=2, model=model, per_sample=per_sample)
    assert not torch.allclose(noisy_a, noisy_b)  # fresh noise per draw
    residual = (noisy_a - clean).numpy()
    expected_std = 2.0 * 0.05 / private.optimiser.expected_batch_size
    assert residual.std() == pytest.approx(expected_std, rel=0.15)


@pytest.mark.parametrize(
    ("model", "per_sample", "rows", "batch"),
    [("ple", "head", 400, 64), ("ple", "head", 40, 1), ("mlp", "ghost", 400, 64), ("mlp", "ghost", 40, 1)],
)  # batch 1 of 40 rows: about a third of the Poisson batches are empty
def test_a_round_trains_the_same_weights_as_materialised_per_sample_clipping(model, per_sample, rows, batch):
    x, y, scaler = _site_data(rows)
    config = TrainConfig(epochs=2, batch_size=batch, lr=0.05, seed=3)
    runs = {}
    for method in (per_sample, "ew"):
        net = _net(model)
        loss, steps = train_private(
            net, x, y, spec=PM, scaler=scaler, config=config, noise_multiplier=1.0, max_grad_norm=1.0,
            per_sample=method, noise_seed=7,  # the same draws for both methods
        )  # fmt: skip
        runs[method] = (loss, steps, get_weights(net))
    assert runs[per_sample][1] == runs["ew"][1] == 2 * math.ceil(rows / batch)  # empty batches are steps too
    assert runs[per_sample][0] == pytest.approx(runs["ew"][0], rel=1e-4)
    start = get_weights(_net(model))
    moved = max(np.abs(trained - initial).max() for trained, initial in zip(runs["ew"][2], start, strict=True))
    assert moved > 1e-3  # it trained...
    for trained, reference in zip(runs[per_sample][2], runs["ew"][2], strict=True):
        np.testing.assert_allclose(trained, reference, rtol=1e-4, atol=1e-5)  # ...identically


def test_per_sample_method_follows_the_model():
    x, y, scaler = _site_data()
    config = TrainConfig(batch_size=64)

    def method(net, per_sample="auto"):
        return make_private(
            net, x, y, spec=PM, scaler=scaler, config=config, noise_multiplier=1.0, max_grad_norm=1.0,
            per_sample=per_sample,
        ).per_sample  # fmt: skip

    assert method(_net("ple")) == "head"
    assert method(_net("mlp")) == "ghost"
    assert method(build_model(8, name="ple", hidden=(16,))) == "ghost"  # a hidden layer trains weights before the head
    with pytest.raises(ValueError, match="only trainable layer"):
        method(_net("mlp"), per_sample="head")
    with pytest.raises(ValueError, match="unknown per-sample gradient method 'hooks'"):
        method(_net("mlp"), per_sample="hooks")


# -- signing and reports ---------------------------------------------------------------------
@pytest.fixture
def signed(tmp_path):
    key = load_signing_key(tmp_path / "keys", create=True)
    report = build_report(dp_manifest())
    path = write_signed_report(report, tmp_path / "privacy", key)
    return path, tmp_path / "privacy" / PUBLIC_NAME, tmp_path


def test_signing_key_is_private_and_created_once(tmp_path):
    load_signing_key(tmp_path / "keys", create=True)
    private = tmp_path / "keys" / PRIVATE_NAME
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    with pytest.raises(SigningKeyError, match="refusing to replace"):
        init_signing_key(tmp_path / "keys")
    private.unlink()
    with pytest.raises(SigningKeyError, match="the key was lost"):
        load_signing_key(tmp_path / "keys", create=True)
    assert not private.exists()  # no silent new key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl command not installed")
def test_openssl_verifies_a_genuine_report_and_rejects_a_tampered_one(signed):
    path, public, _ = signed

    def openssl_verify(report_path):
        return subprocess.run(
            ["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(public), "-rawin", "-in", str(report_path),
             "-sigfile", str(path.with_name("report.json.sig"))],
            capture_output=True, text=True,
        )  # fmt: skip

    assert openssl_verify(path).returncode == 0
    assert len(path.with_name("report.json.sig").read_bytes()) == 64
    tampered = path.with_name("tampered.json")
    body = bytearray(path.read_bytes())
    body[len(body) // 2] ^= 0x01  # one changed bit
    tampered.write_bytes(bytes(body))
    assert openssl_verify(tampered).returncode != 0


def test_privacy_verify_accepts_a_genuine_report(signed):
    path, public, _ = signed
    report = verify_report(path, public)
    assert report["sites"]["plant-a"]["epsilon"] <= 4.0
    assert (path.parent / "report.html").read_text().count("data:image/png;base64,") == 1


def test_privacy_verify_catches_a_changed_epsilon_even_when_resigned(signed, tmp_path):
    path, public, _ = signed
    report = json.loads(path.read_text())
    report["sites"]["plant-a"]["rounds"][1]["epsilon"] *= 0.8  # understate the spend
    forged_key = load_signing_key(tmp_path / "forger", create=True)
    forged = write_signed_report(report, tmp_path / "forged", forged_key)
    with pytest.raises(ReportInvalid, match="bad signature"):
        verify_report(forged, public)  # under the coordinator's key
    with pytest.raises(ReportInvalid, match="site 'plant-a' round 2: recorded epsilon .* accountant gives"):
        verify_report(forged, tmp_path / "forged" / PUBLIC_NAME)  # even under the forger's own key


def test_privacy_verify_flags_a_site_over_budget(tmp_path):
    manifest = dp_manifest()
    for record in manifest["rounds"]:
        record["dp"]["plant-a"]["budget_epsilon"] = 0.5
    key = load_signing_key(tmp_path / "k", create=True)
    path = write_signed_report(build_report(manifest), tmp_path / "p", key)
    with pytest.raises(ReportInvalid, match="site 'plant-a' is over budget"):
        verify_report(path, tmp_path / "p" / PUBLIC_NAME)


def test_privacy_verify_cli_exit_codes(signed):
    path, public, _ = signed
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    ok = subprocess.run(["sangsaeng", "privacy", "verify", str(path), "--public-key", str(public)],
                        capture_output=True, text=True, env=env)  # fmt: skip
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "valid" in ok.stdout
    path.write_bytes(path.read_bytes().replace(b'"abc123"', b'"abc124"'))
    bad = subprocess.run(["sangsaeng", "privacy", "verify", str(path), "--public-key", str(public)],
                         capture_output=True, text=True, env=env)  # fmt: skip
    assert bad.returncode == 1 and "bad signature" in bad.stdout


def test_privacy_verify_checks_adaptive_clippings_noise_split(tmp_path):
    from flwr.server.strategy import FedAvg

    from privacy.central import AdaptiveClipping

    wrapper = AdaptiveClipping(FedAvg(), noise_multiplier=0.8, num_sampled_clients=3, initial_clipping_norm=1.0)
    central = CentralDP(noise_multiplier=0.8, clipping_norm=1.0, delta=1e-3, suppliers=3, adaptive={
        "target_quantile": 0.5, "clip_norm_lr": 0.2, "count_stddev": wrapper.clipped_count_stddev,
        "update_noise_multiplier": wrapper.noise_multiplier,
    })  # fmt: skip
    manifest = dp_manifest()
    for record in manifest["rounds"]:
        record["central_dp"] = central.account_round(3, clipping_norm=1.0)
    key = load_signing_key(tmp_path / "k", create=True)
    path = write_signed_report(build_report(manifest), tmp_path / "p", key)
    verify_report(path, tmp_path / "p" / PUBLIC_NAME)  # Flower's split of 0.8 into update and count noise
    report = json.loads(path.read_text())
    report["central_dp"]["adaptive_clipping"]["update_noise_multiplier"] = 0.5  # less noise than accounted
    path = write_signed_report(report, tmp_path / "forged", key)
    with pytest.raises(ReportInvalid, match="amounts to a noise multiplier of .* but epsilon is accounted at 0.8"):
        verify_report(path, tmp_path / "forged" / PUBLIC_NAME)


def test_central_dp_accounting_matches_the_accountant():
    central = CentralDP(noise_multiplier=1.0, clipping_norm=0.5, delta=1e-3, suppliers=4)
    for _ in range(5):
        record = central.account_round(sampled=2)
    assert record["sample_rate"] == 0.5
    assert record["epsilon"] == pytest.approx(epsilon_of([(1.0, 0.5, 5)], delta=1e-3))
    assert record["epsilon"] > 3  # honest: few suppliers give a weak guarantee


# -- audit log ------------------------------------------------------------------------------------
@pytest.fixture
def audit(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl")
    for r in range(1, 5):
        log.append("round trained", site="plant-a", round=r, epsilon=0.5 * r)
    return log


def _rewrite(log: AuditLog, change) -> None:
    lines = log.path.read_text().splitlines()
    log.path.write_text("\n".join(change(lines)) + "\n")


def test_audit_log_intact_chain_verifies(audit):
    assert audit.verify() == 4
    assert audit.verify(expected_head=audit.head()) == 4


def test_audit_log_catches_an_edited_entry(audit):
    _rewrite(audit, lambda lines: [ln.replace('"epsilon": 1.0', '"epsilon": 0.1') for ln in lines])
    with pytest.raises(AuditLogBroken, match="entry 2 .* was edited"):
        audit.verify()


def test_audit_log_catches_a_removed_entry(audit):
    _rewrite(audit, lambda lines: lines[:1] + lines[2:])
    with pytest.raises(AuditLogBroken, match="entry 2 has sequence number 2, expected 1"):
        audit.verify()


def test_audit_log_catches_reordered_entries(audit):
    _rewrite(audit, lambda lines: [lines[0], lines[2], lines[1], lines[3]])
    with pytest.raises(AuditLogBroken, match="removed or the entries were reordered"):
        audit.verify()


def test_audit_log_catches_a_cut_tail(audit):
    head = audit.head()
    _rewrite(audit, lambda lines: lines[:-1])
    with pytest.raises(AuditLogBroken, match="cut off the end"):
        audit.verify(expected_head=head)


def test_epsilon_is_finite_and_monotone_over_rounds():
    values = [epsilon_of([(1.1, 0.02, 100)] * r, delta=1e-5) for r in range(1, 6)]
    assert all(math.isfinite(v) for v in values) and values == sorted(values)


@pytest.mark.parametrize(
    "name", ["privacy.central:CentralDP", "privacy.ledger:RoundPlan", "privacy.dp_sgd:PrivateTraining"]
)
def test_privacy_critical_arguments_are_keyword_only(name):
    """Noise, clip, delta and rates are all floats: by position two could swap without an error (Opacus' rule)."""
    import dataclasses
    import importlib

    module, cls = name.split(":")
    target = getattr(importlib.import_module(module), cls)
    assert all(f.kw_only for f in dataclasses.fields(target))
    with pytest.raises(TypeError, match="positional"):
        target(*range(len(dataclasses.fields(target))))


def test_dp_sgd_noise_and_sampling_are_not_reproducible_from_the_runs_seed():
    """The coordinator knows the run's seed: noise it could regenerate, it could subtract."""
    x, y, scaler = _site_data(200)
    config = TrainConfig(epochs=1, batch_size=32, lr=0.05, seed=3)
    trained = []
    for _ in range(2):
        net = _net("ple")
        train_private(net, x, y, spec=PM, scaler=scaler, config=config, noise_multiplier=1.0, max_grad_norm=1.0)
        trained.append(get_weights(net))
    assert any(not np.allclose(a, b) for a, b in zip(*trained, strict=True))  # same seed, different draws
    again = []
    for _ in range(2):
        net = _net("ple")
        train_private(net, x, y, spec=PM, scaler=scaler, config=config, noise_multiplier=1.0, max_grad_norm=1.0,
                      noise_seed=11)  # fmt: skip
        again.append(get_weights(net))
    for a, b in zip(*again, strict=True):  # only an explicit noise seed (tests) repeats them
        np.testing.assert_array_equal(a, b)
