"""The DP tuning sweep (bench/dp_tuning.py) calibrates each site's noise as the product's ledger does.

Since the DP data profile and the DP evaluations are charged to a site's epsilon, DP-SGD gets
what they leave; a sweep that calibrated DP-SGD to the whole target would tune for less noise
than a real run trains with.
"""

from __future__ import annotations

import numpy as np
import pytest

from bench.dp_tuning import ServerOptimiser, site_noise
from models.tasks import get_task
from privacy.ledger import PrivacyLedger
from privacy.policy import DpRequest, SitePrivacyPolicy
from privacy.profile import release_profile

SETTINGS = {"batch_size": 512, "local_epochs": 4, "evaluate_every": 0}


@pytest.mark.parametrize(("task", "records", "rounds", "every"), [
    ("predictive-maintenance", 702, 10, 0),
    ("injection-molding-quality", 1389, 10, 0),
    ("predictive-maintenance", 4200, 6, 2),
])  # fmt: skip
def test_site_noise_equals_the_ledgers_noise_after_the_profile_with_evaluations_reserved(
    tmp_path, task, records, rounds, every
):
    """The sweep's noise multiplier equals plan_round's after the site released its DP profile."""
    spec = get_task(task)
    settings = {**SETTINGS, "evaluate_every": every}
    ledger = PrivacyLedger(tmp_path / "site.ledger.json", "site")
    policy = SitePrivacyPolicy()
    request = DpRequest(run_id="r1", target_epsilon=3.0, max_grad_norm=10.0, num_rounds=rounds, evaluate_every=every)
    frame = _rows(spec, records)
    plan = ledger.plan_profile(policy, request, records=records)
    profile, mechanism = release_profile(frame, spec, noise_multiplier=plan.noise_multiplier)
    ledger.record_profile(plan, mechanism=mechanism.to_dict(), profile=profile.to_json())
    step = ledger.plan_round(policy, request, records=records, batch_size=512, epochs=4, server_round=1)
    assert step is not None
    noise, batches = site_noise(records, spec=spec, epsilon=3.0, rounds=rounds, settings=settings)
    assert step.sample_rate == pytest.approx(1 / batches)
    assert noise == pytest.approx(step.noise_multiplier, rel=1e-9)
    # Calibrated to the whole target instead (the sweep before the profile and evaluations were charged), the
    # noise is lower: the check above can tell the two apart.
    whole = site_noise(records, spec=spec, epsilon=3.0, rounds=rounds, settings=settings, charged=False)[0]
    assert whole < noise * (1 - 1e-3)


def _rows(spec, n: int):
    """`n` rows inside the task's declared ranges, enough for a profile release."""
    import pandas as pd

    rng = np.random.default_rng(0)
    data = {c: rng.uniform(*spec.ranges[c], size=n) for c in spec.numeric_features}
    data |= {c: rng.choice([str(v) for v in spec.levels[c]], size=n) for c in spec.categorical_features}
    data[spec.label] = (rng.random(n) < 0.05).astype(float)
    return pd.DataFrame(data)


def test_server_momentum_and_adam_steps_known_values():
    """FedAvg takes the mean; momentum adds 0.9 of the last step; Adam as Flower's FedAdam (no bias correction)."""
    w, mean = [np.array([1.0, 2.0])], [np.array([2.0, 2.0])]
    assert np.allclose(ServerOptimiser("fedavg", 1.0, w).step(w, mean)[0], [2.0, 2.0])
    momentum = ServerOptimiser("fedavgm", 1.0, w)
    first = momentum.step(w, mean)
    assert np.allclose(first[0], [2.0, 2.0])
    assert np.allclose(momentum.step(first, [np.array([3.0, 2.0])])[0], [2.0 + 0.9 + 1.0, 2.0])
    adam = ServerOptimiser("fedadam", 0.1, w)
    # m = 0.1 * delta, v = 0.01 * delta^2: the step is lr * 0.1 * d / (0.1 * |d| + 1e-3)
    assert np.allclose(adam.step(w, mean)[0], [1.0 + 0.1 * 0.1 / (0.1 + 1e-3), 2.0])
