"""What every benchmark needs: an air-gapped Flower, the project on the path, the real datasets."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pandas as pd

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.datasets import SAMPLES, sample_path  # noqa: E402

SHARED = ROOT.parent / "shared" / "datasets"


def dataset(task: str) -> pd.DataFrame:
    """A built-in task's data: the shared copy when present, else the embedded one."""
    shared = SHARED / SAMPLES[task].filename
    return pd.read_csv(shared if shared.exists() else sample_path(task))
