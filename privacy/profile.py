"""The DP data profile: a site's normalisation statistics released through the Gaussian mechanism.

Under DP a site does not send its exact `models.scaler.SiteProfile`. It releases, in one
Gaussian mechanism, a vector of *blocks*, each of which one record changes by at most 1 in L2
norm (add/remove neighbours):

- ``count``: the number of training records;
- per numeric feature, a histogram of ``NUMERIC_BINS`` equal bins over the spec's range
  ``[task.ranges]`` (values clipped into it; a record lands in one bin);
- per categorical feature, the count of each *declared* level (``[task.levels]``);
- the label: a binary task's positives, a multiclass task's count per declared class, a
  regression task's histogram over the label's declared range (clipped, like a feature);
- an image task's pixel histogram per channel (the 256 values pooled into ``PIXEL_BINS``
  bins), each image's histogram divided by its pixel count, so that one image adds at most 1
  per channel. These bins are used unthresholded (see `_noisy_pixels`).

**The record is DP-SGD's record** (`profile_records`): a row, or for a sequence task one
*window*, represented in the profile by the row it ends at (its label's row). DP-SGD samples,
clips and noises windows, so one epsilon covers both only if the profile counts windows too:
every block then changes by at most 1 when one window is added or removed. What that means
for one row, or one engine, is in `record_unit` and docs/privacy.md ("Sequence tasks").

With ``B`` blocks the L2 sensitivity is ``sqrt(B)``; every coordinate gets Gaussian noise of
std ``noise_multiplier * sqrt(B)``. The accountant sees one step ``(noise_multiplier, 1.0, 1)``
(no subsampling), composed with the site's DP-SGD steps in its ledger. The bins are fixed by
the spec, so no bin edge depends on the data.

The released profile holds the noisy histograms themselves (``SiteProfile.histograms``): the
coordinator sums them over the sites and reads the moments from the sum
(`models.scaler.histogram_moments`: bins below ``THRESHOLD`` stds of the summed noise are
empty, Sheppard's correction, a floor at one bin's variance). The site's own moments are sent
too, post-processed the same way on its histogram alone. All of it is post-processing: no
further privacy cost. Counts are rounded and floored at 0 (the row count at 1).

A spec that lacks what bounds the sensitivity is refused under DP (`PolicyError` naming the
column): a numeric feature without a range, a categorical feature without declared levels, a
multiclass task without declared classes, a regression task whose label has no range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from models.scaler import NOISE_THRESHOLD, ColumnMoments, SiteProfile, histogram_moments
from models.sequence import plan_windows
from models.tasks import TaskSpec
from privacy.accounting import calibrate_noise
from privacy.errors import PolicyError

__all__ = [
    "NUMERIC_BINS",
    "PIXEL_BINS",
    "PROFILE_SHARE",
    "THRESHOLD",
    "ProfileMechanism",
    "check_profile_spec",
    "profile_blocks",
    "profile_noise_multiplier",
    "profile_records",
    "record_unit",
    "release_profile",
]

NUMERIC_BINS = 64
# An image's 256 pixel values are pooled into this many bins under DP (16 values each).
PIXEL_BINS = 16
# The profile's own epsilon is this share of the site's target; DP-SGD gets what is left.
PROFILE_SHARE = 0.1
# Histogram bins below this many noise stds are taken as empty (models.scaler.histogram_moments).
THRESHOLD = NOISE_THRESHOLD


@dataclass(frozen=True, kw_only=True)
class ProfileMechanism:
    """What the profile release ran: the accountant's step and the parameters behind it."""

    noise_multiplier: float
    sensitivity: float  # L2, = sqrt(blocks)
    noise_std: float  # = noise_multiplier * sensitivity, per released coordinate
    blocks: list[str]  # what the release covered, one name per block
    bins: int
    unit: dict[str, Any]  # the record one block changes by at most 1 (`record_unit`)

    @property
    def step(self) -> tuple[float, float, int]:
        """The accountant's view: one Gaussian mechanism without subsampling."""
        return (self.noise_multiplier, 1.0, 1)

    def to_dict(self) -> dict[str, Any]:
        """The mechanism as the ledger and the signed report record it."""
        return {
            "mechanism": "profile", "noise_multiplier": self.noise_multiplier, "sample_rate": 1.0, "steps": 1,
            "sensitivity": self.sensitivity, "noise_std": self.noise_std, "covers": list(self.blocks),
            "bins": self.bins, "share_of_target": PROFILE_SHARE, "unit": dict(self.unit),
        }  # fmt: skip


def record_unit(spec: TaskSpec) -> dict[str, Any]:
    """The record every epsilon of a run of `spec` is for: ``{"record": "row"}`` or, for a sequence task, a window.

    For a window: its length, stride and ``windows_per_row`` = ``ceil(window / stride)``, the
    most windows one row is in (docs/privacy.md, "Sequence tasks"). The signed report states it;
    `privacy.report.verify_report` recomputes it from the task.
    """
    if spec.sequence is None:
        return {"record": "row"}
    sequence = spec.sequence
    return {
        "record": "window", "window": sequence.window, "stride": sequence.stride,
        "windows_per_row": math.ceil(sequence.window / sequence.stride),
    }  # fmt: skip


def profile_records(frame: pd.DataFrame, spec: TaskSpec) -> pd.DataFrame:
    """The rows the DP profile counts, one per DP-SGD record: the frame, or each window's last row.

    A sequence task's DP-SGD record is a window (`models.training.prepare`); the profile
    represents each window by the row it ends at, which carries its label. Under ``short =
    "pad"`` with stride 1 that is every row; a stride above 1 or ``"drop"`` leaves out the rows
    that end no window.
    """
    if spec.sequence is None:
        return frame
    sequence = spec.sequence
    plan = plan_windows(frame[sequence.group].to_numpy(), frame[sequence.order].to_numpy(), sequence)
    return frame.iloc[np.sort(plan.ends)].reset_index(drop=True)


def check_profile_spec(spec: TaskSpec) -> None:
    """Refuse (PolicyError naming the column) a spec whose profile cannot be bounded under DP."""
    if spec.kind == "regression" and spec.label not in spec.ranges:
        raise PolicyError(
            f"task '{spec.name}': under DP a regression label needs a range in [task.ranges] to bound its "
            f"statistics; missing for label '{spec.label}'"
        )
    missing = [c for c in spec.numeric_features if c not in spec.ranges]
    if missing:
        raise PolicyError(
            f"task '{spec.name}': under DP every numeric feature needs a range in [task.ranges] to bound its "
            f"statistics; missing for {missing}"
        )
    undeclared = [c for c in spec.categorical_features if c not in spec.levels]
    if undeclared:
        raise PolicyError(
            f"task '{spec.name}': under DP every categorical feature needs its levels in [task.levels] (their "
            f"names would otherwise reveal the data); missing for {undeclared}"
        )
    if spec.kind == "multiclass" and not spec.classes:
        raise PolicyError(f"task '{spec.name}': under DP a multiclass task must declare its classes")


def profile_blocks(spec: TaskSpec) -> list[str]:
    """The blocks a DP profile of `spec` releases, in order (each of L2 sensitivity 1)."""
    check_profile_spec(spec)
    blocks = ["count"]
    blocks += [f"histogram:{c}" for c in spec.numeric_features]
    blocks += [f"levels:{c}" for c in spec.categorical_features]
    blocks.append({"binary": "label:positives", "multiclass": "label:class counts"}.get(spec.kind, "label:histogram"))
    if spec.image is not None:
        blocks += [f"pixels:{c}" for c in range(spec.image.channels)]
    return blocks


def profile_noise_multiplier(*, target_epsilon: float, delta: float, accountant: str = "rdp") -> float:
    """The noise multiplier whose one release costs ``PROFILE_SHARE * target_epsilon`` on its own."""
    return calibrate_noise(
        target_epsilon=PROFILE_SHARE * target_epsilon, delta=delta, sample_rate=1.0, steps=1, accountant=accountant
    )


def release_profile(
    frame: pd.DataFrame, spec: TaskSpec, *, noise_multiplier: float, rng: np.random.Generator | None = None
) -> tuple[SiteProfile, ProfileMechanism]:
    """The noisy profile of a validated training frame, and the mechanism that released it.

    A sequence task's frame is its rows: the profile counts its windows (`profile_records`).
    """
    blocks = profile_blocks(spec)
    sensitivity = math.sqrt(len(blocks))
    std = noise_multiplier * sensitivity
    rng = rng or np.random.default_rng()
    frame = profile_records(frame, spec)

    def noisy(values: np.ndarray) -> np.ndarray:
        return np.asarray(values, dtype=np.float64) + rng.normal(0.0, std, size=np.shape(values))

    count = max(1, int(round(float(noisy(np.array([len(frame)]))[0]))))
    histograms: dict[str, list[float]] = {}

    def histogram(column: str) -> ColumnMoments:
        lo, hi = spec.ranges[column]
        values = np.clip(frame[column].to_numpy(dtype=np.float64), lo, hi)
        released = noisy(np.histogram(values, bins=np.linspace(lo, hi, NUMERIC_BINS + 1))[0])
        histograms[column] = [float(n) for n in released]
        return histogram_moments(released, (lo, hi), count=count, noise_std=std)

    numeric = {c: histogram(c) for c in spec.numeric_features}
    categories = {}
    for c in spec.categorical_features:
        observed = frame[c].astype(str).value_counts()
        levels = [str(v) for v in spec.levels[c]]
        released = noisy(np.array([observed.get(lv, 0) for lv in levels]))
        categories[c] = {lv: max(0, int(round(n))) for lv, n in zip(levels, released, strict=True)}
    label_counts: dict[str, int] = {}
    if spec.kind == "binary":
        positives = float(np.clip(noisy(np.array([frame[spec.label].to_numpy(dtype=np.float64).sum()]))[0], 0, count))
        label = ColumnMoments(count, positives / count, positives * (1 - positives / count))
    elif spec.kind == "regression":
        label = histogram(spec.label)
    else:
        observed = frame[spec.label].astype(str).value_counts()
        classes = [str(v) for v in spec.classes]
        released = noisy(np.array([observed.get(k, 0) for k in classes]))
        label_counts = {k: max(0, int(round(n))) for k, n in zip(classes, released, strict=True)}
        label = ColumnMoments(count, 0.0, 0.0)
    pixels = _noisy_pixels(frame, spec, noisy, std) if spec.image is not None else {}
    mechanism = ProfileMechanism(
        noise_multiplier=noise_multiplier, sensitivity=sensitivity, noise_std=std, blocks=blocks, bins=NUMERIC_BINS,
        unit=record_unit(spec),
    )  # fmt: skip
    profile = SiteProfile(count, numeric, categories, label, label_counts, pixels, histograms, std)
    return profile, mechanism


def _noisy_pixels(frame: pd.DataFrame, spec: TaskSpec, noisy: Any, std: float) -> dict[str, ColumnMoments]:
    """Per channel, moments of the noisy per-image-normalised pixel histograms (0-1 scale).

    The 256 values are pooled into ``PIXEL_BINS`` bins before the noise, and the noisy bins are
    used as they are, negative ones included: on the narrow 0-1 scale unclamped noise leaves the
    mean unbiased, where thresholding would empty every bin of a site of a few hundred images.
    """
    from models.images import pixel_array

    images = pixel_array(frame)  # (n, channels, h, w), uint8
    per_image = images.shape[2] * images.shape[3]
    pool = 256 // PIXEL_BINS
    centres = (np.arange(PIXEL_BINS, dtype=np.float64) * pool + (pool - 1) / 2) / 255.0
    width = pool / 255.0
    out = {}
    for c in range(images.shape[1]):
        values = images[:, c].reshape(-1) // pool
        released = noisy(np.bincount(values, minlength=PIXEL_BINS).astype(np.float64) / per_image)
        total = float(released.sum())
        if total <= 0:  # nothing stands out of the noise: leave the merge to the other sites
            out[str(c)] = ColumnMoments(0, 0.0, 0.0)
            continue
        mean = float(np.clip(released @ centres / total, 0.0, 1.0))
        variance = max(float(released @ (centres - mean) ** 2 / total) - width**2 / 12, width**2 / 12)
        pixels = max(1, int(round(total * per_image)))
        out[str(c)] = ColumnMoments(pixels, mean, pixels * variance)
    return out
