"""Embedded sample data, supplier-site splits and the fixed held-out split of each site."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from models.errors import SiteDataError, TaskSpecError
from models.tasks import TaskSpec

__all__ = [
    "SampleDataset",
    "SAMPLES",
    "sample_path",
    "demo_data",
    "split_by",
    "holdout_split",
    "group_holdout_split",
    "site_slug",
]


@dataclass(frozen=True)
class SampleDataset:
    """A dataset shipped with the package and the column that splits it into supplier sites."""

    task: str
    filename: str
    split_by: str
    # Not embedded: a manifest written at run time that points at an optional package's files
    # (`demo_data`); `filename` is then empty.
    external: bool = False


SAMPLES: dict[str, SampleDataset] = {
    "injection-molding-quality": SampleDataset("injection-molding-quality", "kamp_injection_molding.csv", "PART_NAME"),
    "predictive-maintenance": SampleDataset("predictive-maintenance", "ai4i2020.csv", "Type"),
    # The same AI4I sample; its label is derived from the five failure-mode flags (models.tasks).
    "failure-mode": SampleDataset("failure-mode", "ai4i2020.csv", "Type"),
    "turbofan-rul": SampleDataset("turbofan-rul", "cmapss_fd003.csv", "operator"),
    # ELPV's images stay in the elpv-dataset package (CC BY-NC-SA 4.0): see models.elpv.
    "solar-cell-inspection": SampleDataset("solar-cell-inspection", "", "supplier", external=True),
    "solar-cell-defect-level": SampleDataset("solar-cell-defect-level", "", "supplier", external=True),
}


def sample_path(task: str) -> Path:
    """Path of the embedded CSV for a built-in task."""
    if task not in SAMPLES:
        raise TaskSpecError(f"no sample data for task '{task}' (have: {sorted(SAMPLES)})")
    if SAMPLES[task].external:
        raise TaskSpecError(f"the sample data of task '{task}' is not embedded: demo_data writes its manifest")
    return Path(str(resources.files("models") / "sample_data" / SAMPLES[task].filename))


def demo_data(task: str, out_dir: str | Path) -> Path:
    """The data file a demo of `task` reads: the embedded CSV, or a manifest written under `out_dir`.

    An external sample whose package is missing raises `MissingExtraError` naming the install command.
    """
    if task in SAMPLES and SAMPLES[task].external:
        from models.elpv import write_elpv_manifest

        return write_elpv_manifest(out_dir)
    return sample_path(task)


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
    frame: pd.DataFrame, spec: TaskSpec, *, test_fraction: float = 0.3, seed: int = 0, source: str = "site data"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The fixed (train, held-out) split of one site, stratified by label for binary and multiclass tasks.

    Deterministic in (rows, seed): the site and the benchmark harness compute the same split.
    A task that declares a group (`TaskSpec.group_by`) is split by whole groups instead: no
    engine, tool or lot is on both sides (`group_holdout_split`; `source` names the file in its errors).
    """
    if spec.group_by is not None:
        return group_holdout_split(frame, spec.group_by, test_fraction=test_fraction, seed=seed, source=source)
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


def group_holdout_split(
    frame: pd.DataFrame, group: str, *, test_fraction: float = 0.3, seed: int = 0, source: str = "site data"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The fixed (train, held-out) split of one site by whole groups of `group`; `SiteDataError` under 2 groups.

    A seeded shuffle of the site's groups (sorted first, so the row order does not matter);
    about `test_fraction` of them, at least one, are held out, and at least one trains.
    """
    values = pd.Series(frame[group].unique())
    names = values.iloc[np.argsort(values.astype(str).to_numpy(), kind="stable")].to_numpy()
    if len(names) < 2:
        raise SiteDataError(
            source, f"only {len(names)} group(s) of '{group}': a held-out split by group needs at least 2",
            column=group,
        )  # fmt: skip
    n_test = min(len(names) - 1, max(1, round(test_fraction * len(names))))
    held = set(np.random.default_rng(seed).permutation(len(names))[:n_test].tolist())
    test_mask = frame[group].isin([names[i] for i in sorted(held)]).to_numpy()
    return frame[~test_mask].reset_index(drop=True), frame[test_mask].reset_index(drop=True)
