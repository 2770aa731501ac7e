"""What every benchmark needs: an air-gapped Flower, the project on the path, the real datasets."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sangsaeng import airgap  # noqa: E402

airgap.apply()

from models.datasets import SAMPLES, sample_path  # noqa: E402

SHARED = ROOT.parent / "shared" / "datasets"


def dataset(task: str) -> pd.DataFrame:
    """A built-in task's data: the shared copy when present, else the embedded one."""
    shared = SHARED / SAMPLES[task].filename
    return pd.read_csv(shared if shared.exists() else sample_path(task))
