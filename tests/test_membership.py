"""Membership inference: the attack's math, the site's measurement on real models, the ledger and the signed report."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from client.membership import measure_membership, per_row_losses
from models.datasets import holdout_split, sample_path
from models.nets import build_model
from models.scaler import FederatedScaler
from models.schema import validate_frame
from models.tasks import get_task
from models.training import TrainConfig, prepare, train_local
from privacy.accounting import calibrate_noise
from privacy.dp_sgd import train_private
from privacy.errors import MembershipCheckError, ReportInvalid
from privacy.keys import PUBLIC_NAME, load_signing_key
from privacy.ledger import PrivacyLedger
from privacy.membership import (
    MembershipResult,
    attack_auc,
    balanced_sample,
    membership_inference,
    null_sd,
)
from privacy.report import build_report, verify_report, write_signed_report
from privacy.summary import privacy_summary
from tests.conftest import explain, sangsaeng
from tests.factories import dp_manifest

PM = get_task("predictive-maintenance")


# -- the attack's math ------------------------------------------------------------------------------------
def test_auc_known_values():
    assert attack_auc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0  # every member scores higher
    assert attack_auc(np.array([1.0, 2.0]), np.array([3.0, 4.0])) == 0.0
    assert attack_auc(np.array([1.0, 3.0]), np.array([2.0, 2.0])) == 0.5  # one pair won, one lost of each
    # members have the lower losses: the loss attack finds them all
    result = membership_inference(np.array([0.1, 0.2, 0.3]), np.array([0.5, 0.6, 0.7]), seed=0)
    assert result.auc == 1.0 and result.method == "loss" and result.n_train == result.n_holdout == 3
    assert result.null_sd == pytest.approx(math.sqrt(7 / 108))


def test_same_distribution_is_chance():
    """Members and non-members drawn alike: the AUC stays within 3 standard deviations of 0.5 (seeded)."""
    rng = np.random.default_rng(3)
    for _ in range(5):
        losses = rng.exponential(1.0, 4000)
        labels = rng.random(4000) < 0.1
        result = membership_inference(losses[:2000], losses[2000:], member_labels=labels[:2000],
                                      nonmember_labels=labels[2000:], seed=1)  # fmt: skip
        assert abs(result.auc - 0.5) < 3 * result.null_sd + 0.005  # the max over two methods leans high
        assert set(result.by_method) == {"loss", "calibrated-loss"}


def test_balanced_samples_are_equal_distinct_and_capped():
    members, nonmembers = balanced_sample(1000, 300, seed=0)
    assert len(members) == len(nonmembers) == 300
    assert len(set(members)) == 300 and members.max() < 1000  # without replacement, within range
    members, nonmembers = balanced_sample(1000, 800, max_rows=50, seed=0)
    assert len(members) == len(nonmembers) == 50
    result = membership_inference(np.ones(500), np.ones(40), seed=0)
    assert result.n_train == result.n_holdout == 40 and result.auc == 0.5  # all tied
    with pytest.raises(MembershipCheckError, match="at least 2 training and 2 held-out rows, got 10 and 1"):
        membership_inference(np.ones(10), np.ones(1))


def test_calibration_by_label_finds_members_a_pooled_threshold_misses():
    """Rare positives have high losses, members or not: pooled, they drown the members; per label, they do not."""
    rng = np.random.default_rng(0)
    n = 2000

    def losses(member: bool) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.random(n) < 0.2
        base = np.where(labels, 3.0, 0.05)  # the minority class is harder, for members and non-members alike
        return base * rng.lognormal(-0.3 if member else 0.0, 0.4, n), labels.astype(int)

    (m, ml), (nm, nml) = losses(True), losses(False)
    result = membership_inference(m, nm, member_labels=ml, nonmember_labels=nml, seed=0)
    assert result.method == "calibrated-loss"
    assert result.by_method["calibrated-loss"] > result.by_method["loss"] + 0.05
    # regression (no labels): only the loss attack applies
    assert set(membership_inference(m, nm, seed=0).by_method) == {"loss"}


def test_result_round_trip_and_inconsistent_figures():
    result = membership_inference(np.arange(10.0), np.arange(10.0) + 0.5, seed=0)
    assert MembershipResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result
    bad = {**result.to_dict(), "auc": 0.5}
    with pytest.raises(MembershipCheckError, match="site 'x': AUC 0.5 is not its method 'loss'"):
        MembershipResult.from_dict(bad, source="site 'x'")
    with pytest.raises(MembershipCheckError, match="equal"):
        MembershipResult.from_dict({**result.to_dict(), "n_holdout": 9})
    with pytest.raises(MembershipCheckError, match="not in"):
        MembershipResult.from_dict({**result.to_dict(), "auc": 1.5, "by_method": {}})
    with pytest.raises(MembershipCheckError, match="not a membership result"):
        MembershipResult.from_dict({"auc": 0.5})


def test_null_sd():
    assert null_sd(100, 100) == pytest.approx(math.sqrt(201 / 120000))


# -- measured on real models -------------------------------------------------------------------------------
def _noisy_ai4i(rows: int, flip: float, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, FederatedScaler]:
    """AI4I rows with a share of labels flipped, split half training, half held-out.

    The machine-failure physics are easy: a model fits its easy rows as confidently when it has
    not seen them, so on clean AI4I even a memorising MLP leaks little by its loss (measured:
    0.48-0.53 on 200+200 rows). Flipped labels are what memorisation shows on: the training
    copies get fitted, the held-out ones cannot be.
    """
    raw = pd.read_csv(sample_path(PM.name)).sample(rows, random_state=seed).reset_index(drop=True)
    flipped = np.random.default_rng(seed + 1).random(rows) < flip
    raw.loc[flipped, PM.label] = 1 - raw.loc[flipped, PM.label]
    frame = validate_frame(raw, PM, source="ai4i sample")
    train, test = holdout_split(frame, PM, test_fraction=0.5, seed=seed)
    return train, test, FederatedScaler.fit_pooled(train, PM)


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on a shared 2-core machine more threads slow these small models down many times."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_overfitted_model_is_found_out():
    """A wide MLP trained 60 epochs without DP on 400 noisy rows memorises them: measured AUC 0.701 (loss 0.676)."""
    train, test, scaler = _noisy_ai4i(800, 0.2)
    x, y = prepare(train, PM, scaler)
    net = build_model(scaler.n_inputs, name="mlp", hidden=(128, 128), seed=0)
    config = TrainConfig(epochs=60, batch_size=32, lr=0.003, weight_decay=0.0, class_weight="none")
    train_local(net, x, y, spec=PM, scaler=scaler, config=config)
    result = measure_membership(net, train, test, spec=PM, scaler=scaler, seed=0)
    assert result.n_train == result.n_holdout == min(len(train), len(test)) == 400
    assert result.auc >= 0.65, result  # 0.5 + 10 sd of chance at n = 400
    assert result.by_method["loss"] >= 0.62, result


def test_dp_model_is_near_chance():
    """The DP-SGD defaults (additive model, clip 10, Poisson batches of 512) at epsilon 3 on 2,000 noisy rows.

    Measured 0.504-0.515 over noise seeds 5-8 (chance spread 0.009 at n = 2,000); 0.515 with seed 5.
    """
    train, test, scaler = _noisy_ai4i(4000, 0.2)
    x, y = prepare(train, PM, scaler)
    net = build_model(scaler.n_inputs, name="ple", hidden=(), seed=0)
    config = TrainConfig(epochs=4, batch_size=512, lr=0.05, weight_decay=0.0)
    batches = math.ceil(len(x) / config.batch_size)
    rounds = 5  # noise for a five-round run's whole budget, of which this is one round
    noise = calibrate_noise(
        target_epsilon=3.0, delta=1e-5, sample_rate=1 / batches, steps=config.epochs * batches * rounds
    )
    train_private(net, x, y, spec=PM, scaler=scaler, config=config, noise_multiplier=noise, max_grad_norm=10.0,
                  noise_seed=5)  # fmt: skip
    result = measure_membership(net, train, test, spec=PM, scaler=scaler, seed=0)
    assert result.n_train == 2000
    assert result.auc <= 0.55, result  # the target for every site


def test_per_row_losses_are_float64_and_not_tied_at_zero():
    train, _, scaler = _noisy_ai4i(400, 0.0)
    x, y = prepare(train, PM, scaler)
    net = build_model(scaler.n_inputs, name="mlp", hidden=(8,), seed=0)
    for weight in net.parameters():  # a very confident model: float32 losses would round to 0
        weight.data.mul_(8.0)
    losses = per_row_losses(net, x, y, spec=PM, scaler=scaler)
    assert losses.dtype == np.float64 and losses.shape == (len(x),)
    with torch.no_grad():
        single = nn.functional.binary_cross_entropy_with_logits(net(torch.as_tensor(x)), torch.as_tensor(y),
                                                                reduction="none").numpy()  # fmt: skip
    assert np.mean(single == 0.0) > 0.02  # float32: measured 4.75% of rows tied at 0
    assert np.all(np.isfinite(losses)) and np.all(losses > 0.0)


# -- the ledger and the signed report ----------------------------------------------------------------------
def test_ledger_keeps_the_figure_outside_the_accountant(tmp_path):
    ledger = PrivacyLedger(tmp_path / "plant-a.ledger.json", "plant-a")
    figure = membership_inference(np.arange(10.0), np.arange(10.0) + 0.5, seed=0).to_dict()
    entry = ledger.record_membership("run-1", figure)
    assert entry["auc"] == figure["auc"] and entry["run_id"] == "run-1"
    assert ledger.history() == [] and ledger.spent(delta=1e-5) == 0.0  # the check charges no epsilon
    assert [e["auc"] for e in ledger.membership("run-1")] == [figure["auc"]] and ledger.membership("other") == []
    assert [e["event"] for e in ledger.audit.entries()] == ["membership inference"]
    ledger.audit.verify()


def _signed(tmp_path, manifest):
    key = load_signing_key(tmp_path / "keys", create=True)
    path = write_signed_report(build_report(manifest), tmp_path / "privacy", key)
    return path, tmp_path / "privacy" / PUBLIC_NAME, key


def test_report_signs_the_figure_and_tampering_fails_verify(tmp_path):
    # 1,465 of 2,500 pairs won, 45 tied: AUC (1465 + 45 / 2) / 2500 = 0.595
    figure = membership_inference(np.arange(50.0), np.arange(50.0) + 5, seed=0).to_dict()
    assert figure["auc"] == pytest.approx(0.595)
    manifest = {**dp_manifest(sites=("plant-a", "plant-b")), "membership_inference": {"plant-a": figure}}
    path, public, key = _signed(tmp_path, manifest)
    report = verify_report(path, public)
    assert report["membership_inference"]["plant-a"]["auc"] == figure["auc"]
    assert "not recomputable" in report["membership_inference_note"]
    assert "Membership inference on the final model" in (tmp_path / "privacy" / "report.html").read_text()
    shown = sangsaeng("privacy", "verify", str(path), "--public-key", str(public))
    assert shown.exit_code == 0, explain(shown)
    assert "plant-a: membership-inference ROC-AUC 0.595 (loss, 50 training vs 50 held-out rows) signed" in " ".join(
        shown.stdout.split()
    )
    summary = privacy_summary(report)["sites"]
    assert summary["plant-a"]["membership_auc"] == figure["auc"] and summary["plant-b"]["membership_auc"] is None

    # an auditor's copy with a friendlier figure: the signature no longer holds
    tampered = json.loads(path.read_text())
    tampered["membership_inference"]["plant-a"]["auc"] = 0.5
    path.write_text(json.dumps(tampered, indent=2, sort_keys=True) + "\n")
    with pytest.raises(ReportInvalid, match="bad signature"):
        verify_report(path, public)
    refused = sangsaeng("privacy", "verify", str(path), "--public-key", str(public))
    assert refused.exit_code == 1 and "bad signature" in refused.stdout
    # re-signed, the figures no longer hang together (the best method's AUC is 0.595)
    (tmp_path / "privacy" / "report.json.sig").write_bytes(key.sign(path.read_bytes()))
    with pytest.raises(ReportInvalid, match="site 'plant-a' membership inference: AUC 0.5 is not its method"):
        verify_report(path, public)


def test_report_without_the_check_has_no_membership_keys(tmp_path):
    path, public, _ = _signed(tmp_path, dp_manifest())
    report = verify_report(path, public)
    assert "membership_inference" not in report
    assert privacy_summary(report)["sites"]["plant-a"]["membership_auc"] is None
