"""Embedded sample data, supplier-site splits and the fixed held-out split of each site."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import pandas as pd
from sklearn.model_selection import train_test_split

from models.errors import TaskSpecError
from models.tasks import TaskSpec

__all__ = ["SampleDataset", "SAMPLES", "sample_path", "split_by", "holdout_split", "site_slug"]


@dataclass(frozen=True)
class SampleDataset:
    """A dataset shipped with the package and the column that splits it into supplier sites."""

    task: str
    filename: str
    split_by: str


SAMPLES: dict[str, SampleDataset] = {
    "injection-molding-quality": SampleDataset("injection-molding-quality", "kamp_injection_molding.csv", "PART_NAME"),
    "predictive-maintenance": SampleDataset("predictive-maintenance", "ai4i2020.csv", "Type"),
    # The same AI4I sample; its label is derived from the five failure-mode flags (models.tasks).
    "failure-mode": SampleDataset("failure-mode", "ai4i2020.csv", "Type"),
}


def sample_path(task: str) -> Path:
    """Path of the embedded CSV for a built-in task."""
    if task not in SAMPLES:
        raise TaskSpecError(f"no sample data for task '{task}' (have: {sorted(SAMPLES)})")
    return Path(str(resources.files("models") / "sample_data" / SAMPLES[task].filename))


def site_slug(value: object) -> str:
    """A file- and URL-safe site name: "CN7 W/S SIDE MLD'G LH" -> "cn7-w-s-side-mld-g-lh"."""
    slug = re.sub(r"[^0-9a-zA-Z]+", "-", str(value)).strip("-").lower()
    return slug or "site"


def split_by(frame: pd.DataFrame, column: str, *, min_rows: int = 20) -> tuple[dict[str, pd.DataFrame], dict[str, int]]:
    """Split a table into supplier sites by a column's value.

    Groups under `min_rows` rows (KAMP has two parts with a single row) are dropped and
    returned separately so the caller can report them.
    """
    if column not in frame.columns:
        raise TaskSpecError(f"split column '{column}' is not in the data")
    sites: dict[str, pd.DataFrame] = {}
    dropped: dict[str, int] = {}
    for value, group in frame.groupby(column, sort=True, dropna=False):
        name = site_slug(value)
        if len(group) < min_rows:
            dropped[name] = len(group)
            continue
        if name in sites:
            raise TaskSpecError(f"split column '{column}': two values give the site name '{name}'")
        sites[name] = group.reset_index(drop=True)
    return sites, dropped


def holdout_split(
    frame: pd.DataFrame, spec: TaskSpec, *, test_fraction: float = 0.3, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The fixed (train, held-out) split of one site, stratified by label for binary and multiclass tasks.

    Deterministic in (rows, seed): the site and the benchmark harness compute the same split.
    """
    stratify = None
    if spec.kind == "binary":
        counts = frame[spec.label].value_counts()
        if len(counts) == 2 and counts.min() >= 2:
            stratify = frame[spec.label]
    elif spec.kind == "multiclass":
        # Stratified where every class has 2 rows at least (a rare mode may have fewer).
        counts = frame[spec.label].value_counts()
        if len(counts) >= 2 and counts.min() >= 2:
            stratify = frame[spec.label]
    train, test = train_test_split(frame, test_size=test_fraction, random_state=seed, stratify=stratify)
    return train.reset_index(drop=True), test.reset_index(drop=True)
