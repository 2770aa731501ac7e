"""Federated normalisation equals the pooled statistics, without pooling any rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.datasets import split_by
from models.scaler import ColumnMoments, FederatedScaler, SiteProfile, profile_site
from models.schema import validate_frame
from models.tasks import get_task

PM = get_task("predictive-maintenance")


def test_federated_scaler_equals_pooled_statistics_on_real_sites(ai4i):
    sites, _ = split_by(ai4i, "Type")
    frames = [validate_frame(f, PM, source=name) for name, f in sites.items()]
    # Profiles travel as JSON, as they do over the network.
    profiles = [SiteProfile.from_json(profile_site(f, PM).to_json()) for f in frames]
    federated = FederatedScaler.combine(profiles, PM)

    pooled = pd.concat(frames, ignore_index=True)
    for column in PM.numeric_features:
        assert federated.mean[column] == pytest.approx(pooled[column].mean(), rel=1e-12)
        assert federated.std[column] == pytest.approx(pooled[column].std(ddof=0), rel=1e-10)
    assert federated.levels == {"Type": ("L", "M", "H")}
    assert federated.count == len(pooled)
    assert federated.positives == int(pooled["Machine failure"].sum()) == 339
    np.testing.assert_allclose(
        federated.transform(pooled), FederatedScaler.fit_pooled(pooled, PM).transform(pooled), atol=1e-6
    )

    # Standardised pooled data has mean 0 and std 1 in every numeric column.
    x = federated.transform(pooled)[:, : len(PM.numeric_features)]
    np.testing.assert_allclose(x.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(x.std(axis=0), 1, atol=1e-5)


@pytest.mark.parametrize("seed", range(5))
def test_moment_merge_matches_numpy_for_any_split(seed):
    rng = np.random.default_rng(seed)
    values = rng.normal(rng.uniform(-1e3, 1e3), rng.uniform(0.01, 50), size=500)
    cuts = np.sort(rng.choice(np.arange(1, 500), size=rng.integers(1, 6), replace=False))
    merged = ColumnMoments(0, 0.0, 0.0)
    for part in np.split(values, cuts):
        merged = merged.merge(ColumnMoments.of(part))
    assert merged.count == 500
    assert merged.mean == pytest.approx(values.mean(), rel=1e-12)
    assert merged.variance == pytest.approx(values.var(), rel=1e-9)


def test_scaler_round_trips_and_handles_constant_columns():
    spec = get_task("predictive-maintenance")
    frame = pd.DataFrame(
        {c: [300.0] * 4 for c in spec.numeric_features}
        | {"Type": ["L", "L", "M", "H"], "Machine failure": [0, 1, 0, 0]}
    )
    scaler = FederatedScaler.fit_pooled(frame, spec)
    assert all(s == 1.0 for s in scaler.std.values())
    assert FederatedScaler.from_json(scaler.to_json()) == scaler
    assert scaler.pos_weight == 3.0
