"""Shared fixtures: the real datasets and small factories for site files."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from sangsaeng import airgap

airgap.apply()

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"


def dataset_path(filename: str) -> Path:
    """The shared copy of a dataset when present (CI, developers), else the embedded one."""
    shared = SHARED / filename
    return shared if shared.exists() else ROOT / "models" / "sample_data" / filename


@pytest.fixture(scope="session")
def ai4i() -> pd.DataFrame:
    return pd.read_csv(dataset_path("ai4i2020.csv"))


@pytest.fixture(scope="session")
def kamp() -> pd.DataFrame:
    return pd.read_csv(dataset_path("kamp_injection_molding.csv"))
