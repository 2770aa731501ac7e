"""The DP data profile: a site's normalisation statistics released through the Gaussian mechanism.

Under DP a site does not send its exact `models.scaler.SiteProfile`. It releases, in one
Gaussian mechanism, a vector of *blocks*, each of which one record changes by at most 1 in L2
norm (add/remove neighbours):

- ``count``: the number of training rows;
- per numeric feature, a histogram of ``NUMERIC_BINS`` equal bins over the spec's range
  ``[task.ranges]`` (values clipped into it; a row lands in one bin);
- per categorical feature, the count of each *declared* level (``[task.levels]``);
- the label: a binary task's positives, a multiclass task's count per declared class;
- an image task's pixel histogram per channel (the 256 values pooled into ``PIXEL_BINS``
  bins), each image's histogram divided by its pixel count, so that one image adds at most 1
  per channel. These bins are used unthresholded (see `_noisy_pixels`).

With ``B`` blocks the L2 sensitivity is ``sqrt(B)``; every coordinate gets Gaussian noise of
std ``noise_multiplier * sqrt(B)``. The accountant sees one step ``(noise_multiplier, 1.0, 1)``
(no subsampling), composed with the site's DP-SGD steps in its ledger. The bins are fixed by
the spec, so no bin edge depends on the data.

Post-processing (no further privacy cost) keeps the scaler usable: counts are rounded and
floored at 0 (the row count at 1); histogram bins below ``THRESHOLD`` noise stds are set to 0,
so the empty bins' noise does not pull the mean toward the middle of the range; means and
variances come from the bin centres with Sheppard's correction (``- w**2 / 12``), and each
variance is floored at ``w**2 / 12`` (the variance within one bin), so that no column is
scaled by a near-zero standard deviation. A column none of whose bins stands out of the noise
(a small site, a spread-out column) is sent with count 0 and leaves the merge to the others.

A spec that lacks what bounds the sensitivity is refused under DP (`PolicyError` naming the
column): a numeric feature without a range, a categorical feature without declared levels, a
multiclass task without declared classes, a regression task (its label has no range).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from models.scaler import ColumnMoments, SiteProfile
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
    "dp_profile_applies",
    "profile_blocks",
    "profile_noise_multiplier",
    "release_profile",
]

NUMERIC_BINS = 64
# An image's 256 pixel values are pooled into this many bins under DP (16 values each).
PIXEL_BINS = 16
# The profile's own epsilon is this share of the site's target; DP-SGD gets what is left.
PROFILE_SHARE = 0.1
# Histogram bins below this many noise stds are taken as empty.
THRESHOLD = 4.0


@dataclass(frozen=True, kw_only=True)
class ProfileMechanism:
    """What the profile release ran: the accountant's step and the parameters behind it."""

    noise_multiplier: float
    sensitivity: float  # L2, = sqrt(blocks)
    noise_std: float  # = noise_multiplier * sensitivity, per released coordinate
    blocks: list[str]  # what the release covered, one name per block
    bins: int

    @property
    def step(self) -> tuple[float, float, int]:
        """The accountant's view: one Gaussian mechanism without subsampling."""
        return (self.noise_multiplier, 1.0, 1)

    def to_dict(self) -> dict[str, Any]:
        """The mechanism as the ledger and the signed report record it."""
        return {
            "mechanism": "profile", "noise_multiplier": self.noise_multiplier, "sample_rate": 1.0, "steps": 1,
            "sensitivity": self.sensitivity, "noise_std": self.noise_std, "covers": list(self.blocks),
            "bins": self.bins, "share_of_target": PROFILE_SHARE,
        }  # fmt: skip


def dp_profile_applies(spec: TaskSpec) -> bool:
    """Whether a site releases its profile through the mechanism under DP (else exact, and not covered).

    Regression tasks (a label without a range) and sequence tasks (DP-SGD counts windows, the
    profile rows: one epsilon would mix two units) keep the exact profile; the report names it
    under ``not_covered``.
    """
    return spec.kind != "regression" and spec.sequence is None


def check_profile_spec(spec: TaskSpec) -> None:
    """Refuse (PolicyError naming the column) a spec whose profile cannot be bounded under DP."""
    if spec.kind == "regression":
        raise PolicyError(
            f"task '{spec.name}': a DP data profile needs a bounded label, and a regression label has no "
            "range; run it without per-site DP"
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
    blocks.append("label:positives" if spec.kind == "binary" else "label:class counts")
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
    """The noisy profile of a validated training frame, and the mechanism that released it."""
    blocks = profile_blocks(spec)
    sensitivity = math.sqrt(len(blocks))
    std = noise_multiplier * sensitivity
    rng = rng or np.random.default_rng()

    def noisy(values: np.ndarray) -> np.ndarray:
        return np.asarray(values, dtype=np.float64) + rng.normal(0.0, std, size=np.shape(values))

    count = max(1, int(round(float(noisy(np.array([len(frame)]))[0]))))
    numeric = {}
    for c in spec.numeric_features:
        lo, hi = spec.ranges[c]
        edges = np.linspace(lo, hi, NUMERIC_BINS + 1)
        values = np.clip(frame[c].to_numpy(dtype=np.float64), lo, hi)
        hist, _ = np.histogram(values, bins=edges)
        numeric[c] = _moments(noisy(hist), (edges[:-1] + edges[1:]) / 2, count, std, hi - lo)
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
    else:
        observed = frame[spec.label].astype(str).value_counts()
        classes = [str(v) for v in spec.classes]
        released = noisy(np.array([observed.get(k, 0) for k in classes]))
        label_counts = {k: max(0, int(round(n))) for k, n in zip(classes, released, strict=True)}
        label = ColumnMoments(count, 0.0, 0.0)
    pixels = _noisy_pixels(frame, spec, noisy, std) if spec.image is not None else {}
    mechanism = ProfileMechanism(
        noise_multiplier=noise_multiplier, sensitivity=sensitivity, noise_std=std, blocks=blocks, bins=NUMERIC_BINS
    )
    profile = SiteProfile(count, numeric, categories, label, label_counts, pixels)
    return profile, mechanism


def _moments(hist: np.ndarray, centres: np.ndarray, count: int, std: float, span: float) -> ColumnMoments:
    """Count, mean and M2 of a noisy histogram (thresholded, Sheppard-corrected, variance floored)."""
    width = span / len(centres)
    kept = np.where(hist >= THRESHOLD * std, hist, 0.0)
    if kept.sum() <= 0:  # nothing stands out of the noise: this site says nothing about the column
        return ColumnMoments(0, 0.0, 0.0)
    mean = float(kept @ centres / kept.sum())
    variance = float(kept @ (centres - mean) ** 2 / kept.sum()) - width**2 / 12
    return ColumnMoments(count, mean, count * max(variance, width**2 / 12))


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
