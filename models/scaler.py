"""Federated feature normalisation.

Each site summarises its own training rows (count, mean and sum of squared deviations per
numeric column, counts per category level, label counts); the coordinator combines the
summaries with the pairwise update of Chan, Golub & LeVeque (1979), which gives exactly the
pooled mean and variance without any row leaving a site.

Under DP (`privacy.profile`) a site's profile also carries its noisy histograms: per numeric
column (and a regression label), counts in equal bins over the spec's declared range, each with
Gaussian noise of std ``noise_std``. The coordinator sums them over the sites before it reads any
moment (`histogram_moments`): bins are kept where the *sum* stands out of the summed noise, which a
small site's own bins rarely do.

For an image task (`models.images`) a site adds, per channel, the moments of its training
images' pixel values (on a 0-1 scale), computed from its pixel histograms; merged the same
way they give the federation's per-channel mean and standard deviation, which normalise
every image.

>>> import pandas as pd
>>> from models.tasks import TaskSpec
>>> spec = TaskSpec(name="t", kind="regression", label="y", features=("x",))
>>> a = profile_site(pd.DataFrame({"x": [1.0, 2.0], "y": [0.0, 1.0]}), spec)
>>> b = profile_site(pd.DataFrame({"x": [3.0, 4.0, 5.0], "y": [1.0, 1.0, 1.0]}), spec)
>>> FederatedScaler.combine([a, b], spec).mean["x"]
3.0
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from models.errors import TaskSpecError
from models.tasks import TaskSpec

__all__ = ["NOISE_THRESHOLD", "ColumnMoments", "SiteProfile", "FederatedScaler", "histogram_moments", "profile_site"]

# Noisy histogram bins below this many noise stds are taken as empty (`histogram_moments`), unless
# fewer than MIN_KEPT_BINS stand out and they miss more than MISSING_MASS of the records: then the
# bins are pooled into FALLBACK_BINS and read as they are.
NOISE_THRESHOLD = 4.0
MIN_KEPT_BINS = 3
MISSING_MASS = 0.1
FALLBACK_BINS = 16


@dataclass(frozen=True)
class ColumnMoments:
    """Count, mean and M2 (sum of squared deviations from the mean) of one column."""

    count: int
    mean: float
    m2: float

    @classmethod
    def of(cls, values: np.ndarray) -> ColumnMoments:
        """Count, mean and sum of squared deviations of one site's column."""
        values = np.asarray(values, dtype=np.float64)
        if values.size == 0:
            return cls(0, 0.0, 0.0)
        mean = float(values.mean())
        return cls(int(values.size), mean, float(((values - mean) ** 2).sum()))

    def merge(self, other: ColumnMoments) -> ColumnMoments:
        """The moments of both parts together (Chan et al.'s parallel update)."""
        if other.count == 0:
            return self
        if self.count == 0:
            return other
        n = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * other.count / n
        m2 = self.m2 + other.m2 + delta * delta * self.count * other.count / n
        return ColumnMoments(n, mean, m2)

    @classmethod
    def of_histogram(cls, counts: np.ndarray, values: np.ndarray) -> ColumnMoments:
        """The moments of `counts[i]` occurrences of `values[i]` (exact: no pixel is visited twice)."""
        counts = np.asarray(counts, dtype=np.float64)
        n = int(counts.sum())
        if n == 0:
            return cls(0, 0.0, 0.0)
        mean = float(counts @ values / n)
        return cls(n, mean, float(counts @ (values - mean) ** 2))

    @property
    def variance(self) -> float:
        """Population variance (ddof=0), the convention of standard scaling."""
        return self.m2 / self.count if self.count else 0.0


@dataclass(frozen=True)
class SiteProfile:
    """What a site shares about its data: aggregates only, never rows."""

    count: int
    numeric: dict[str, ColumnMoments]
    categories: dict[str, dict[str, int]]
    label: ColumnMoments
    # Multiclass tasks: rows per class (the label moments then hold the count only).
    label_counts: dict[str, int] = field(default_factory=dict)
    # Image tasks: per channel ("0", "1", "2"), the moments of the pixel values on a 0-1 scale.
    pixels: dict[str, ColumnMoments] = field(default_factory=dict)
    # DP profiles (privacy.profile): noisy bin counts over each declared range, by column, and the
    # std of the noise on each bin. The coordinator sums them over sites (`FederatedScaler.combine`).
    histograms: dict[str, list[float]] = field(default_factory=dict)
    noise_std: float = 0.0

    def to_json(self) -> str:
        """The profile as JSON, as a site sends it to the coordinator."""
        data: dict[str, Any] = {
            "count": self.count,
            "numeric": {k: [v.count, v.mean, v.m2] for k, v in self.numeric.items()},
            "categories": self.categories,
            "label": [self.label.count, self.label.mean, self.label.m2],
        }
        if self.label_counts:  # absent for binary and regression tasks, whose profiles stay as they were
            data["label_counts"] = self.label_counts
        if self.pixels:  # likewise absent unless an image task
            data["pixels"] = {k: [v.count, v.mean, v.m2] for k, v in self.pixels.items()}
        if self.histograms:  # and unless a DP profile
            data["histograms"] = self.histograms
            data["noise_std"] = self.noise_std
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> SiteProfile:
        """A profile from `to_json`'s text."""
        raw = json.loads(text)
        return cls(
            count=int(raw["count"]),
            numeric={k: ColumnMoments(int(c), float(m), float(s)) for k, (c, m, s) in raw["numeric"].items()},
            categories={k: {str(lv): int(n) for lv, n in v.items()} for k, v in raw["categories"].items()},
            label=ColumnMoments(*raw["label"]),
            label_counts={str(k): int(n) for k, n in raw.get("label_counts", {}).items()},
            pixels={k: ColumnMoments(int(c), float(m), float(s)) for k, (c, m, s) in raw.get("pixels", {}).items()},
            histograms={str(k): [float(n) for n in v] for k, v in raw.get("histograms", {}).items()},
            noise_std=float(raw.get("noise_std", 0.0)),
        )


def profile_site(frame: pd.DataFrame, spec: TaskSpec) -> SiteProfile:
    """Summarise a validated frame (see `models.schema.validate_frame`)."""
    numeric = {c: ColumnMoments.of(frame[c].to_numpy()) for c in spec.numeric_features}
    categories = {
        c: {str(k): int(v) for k, v in frame[c].value_counts().sort_index().items()} for c in spec.categorical_features
    }
    pixels = _pixel_moments(frame) if spec.image is not None else {}
    if spec.kind == "multiclass":
        counts = {str(k): int(v) for k, v in frame[spec.label].value_counts().sort_index().items()}
        return SiteProfile(len(frame), numeric, categories, ColumnMoments(len(frame), 0.0, 0.0), counts, pixels)
    label = ColumnMoments.of(frame[spec.label].to_numpy())
    return SiteProfile(len(frame), numeric, categories, label, pixels=pixels)


_PIXEL_VALUES = np.arange(256, dtype=np.float64) / 255.0


def histogram_moments(
    hist: np.ndarray, value_range: tuple[float, float], *, count: int, noise_std: float
) -> ColumnMoments:
    """Count, mean and M2 of a noisy histogram of equal bins over `value_range` (post-processing only).

    Bins below ``NOISE_THRESHOLD`` noise stds are taken as empty, so that the noise of the many
    empty bins of a wide range does not pull the mean toward its middle; the mean and variance
    come from the bin centres with Sheppard's correction (``- w**2 / 12``), the variance floored
    at ``w**2 / 12`` (the variance within one bin), so no column is scaled by a near-zero
    standard deviation. When fewer than ``MIN_KEPT_BINS`` bins stand out and they hold less than
    ``1 - MISSING_MASS`` of the (noisy) record count (a spike, such as a capped label, over a thin
    spread that no bin resolves), those bins say nothing about the spread: the histogram is pooled
    into ``FALLBACK_BINS`` bins and read unthresholded, negative counts as 0 (biased toward the
    middle of the range, which a tight range keeps small). With nothing above 0 at all the moments
    are count 0: the histogram says nothing.
    """
    hist = np.asarray(hist, dtype=np.float64)
    lo, hi = value_range
    kept = np.where(hist >= NOISE_THRESHOLD * noise_std, hist, 0.0)
    thin = kept.sum() < (1 - MISSING_MASS) * count  # the kept bins miss much of the records
    if np.count_nonzero(kept) < MIN_KEPT_BINS and thin and len(hist) % FALLBACK_BINS == 0:
        kept = np.maximum(hist.reshape(FALLBACK_BINS, -1).sum(axis=1), 0.0)
    if kept.sum() <= 0:
        return ColumnMoments(0, 0.0, 0.0)
    width = (hi - lo) / len(kept)
    centres = lo + width * (np.arange(len(kept)) + 0.5)
    mean = float(kept @ centres / kept.sum())
    variance = float(kept @ (centres - mean) ** 2 / kept.sum()) - width**2 / 12
    return ColumnMoments(count, mean, count * max(variance, width**2 / 12))


def _merged_histograms(profiles: list[SiteProfile], spec: TaskSpec) -> dict[str, ColumnMoments]:
    """Per column, the moments of the sites' noisy histograms summed (the sites that sent one)."""
    # Only the spec's numeric features and a regression label: any other name (a tampered profile) is ignored.
    known = {*spec.numeric_features, *((spec.label,) if spec.kind == "regression" else ())}
    columns = {c for p in profiles for c in p.histograms} & known
    out = {}
    for column in sorted(columns):
        senders = [p for p in profiles if column in p.histograms]
        if column not in spec.ranges or len({len(p.histograms[column]) for p in senders}) != 1:
            raise TaskSpecError(f"the sites' DP histograms of '{column}' do not fit its declared range and bins")
        total = np.sum([p.histograms[column] for p in senders], axis=0)
        noise = float(np.sqrt(sum(p.noise_std**2 for p in senders)))
        moments = histogram_moments(total, spec.ranges[column], count=sum(p.count for p in senders), noise_std=noise)
        for p in profiles:  # a site without a histogram of the column (an exact profile) merges as before
            if column not in p.histograms:
                moments = moments.merge(p.label if column == spec.label else p.numeric[column])
        out[column] = moments
    return out


def _range_moments(value_range: tuple[float, float], count: int) -> ColumnMoments:
    """A uniform spread over the declared range: the data-independent moments of a column no site could bound."""
    lo, hi = value_range
    return ColumnMoments(max(count, 1), (lo + hi) / 2, max(count, 1) * (hi - lo) ** 2 / 12)


def _pixel_moments(frame: pd.DataFrame) -> dict[str, ColumnMoments]:
    """Per channel, the moments of a loaded image frame's pixel values on a 0-1 scale."""
    from models.images import pixel_array, pixel_histograms

    histograms = pixel_histograms(pixel_array(frame))
    return {str(c): ColumnMoments.of_histogram(h, _PIXEL_VALUES) for c, h in enumerate(histograms)}


@dataclass(frozen=True)
class FederatedScaler:
    """Standard scaling and one-hot encoding fitted from combined site profiles."""

    spec_name: str
    numeric: tuple[str, ...]
    mean: dict[str, float]
    std: dict[str, float]
    levels: dict[str, tuple[str, ...]]
    label_mean: float
    label_std: float
    count: int
    positives: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    # Multiclass tasks: the classes in output order, and the federation's rows per class.
    classes: tuple[str, ...] = ()
    class_counts: dict[str, int] = field(default_factory=dict)
    # Image tasks: the federation's per-channel pixel mean and standard deviation (0-1 scale).
    pixel_mean: tuple[float, ...] = ()
    pixel_std: tuple[float, ...] = ()

    @classmethod
    def combine(cls, profiles: list[SiteProfile], spec: TaskSpec) -> FederatedScaler:
        """The scaler of the pooled data, from the sites' profiles alone."""
        if not profiles:
            raise TaskSpecError("cannot fit a scaler: no site supplied a data profile")
        moments = {c: ColumnMoments(0, 0.0, 0.0) for c in spec.numeric_features}
        label = ColumnMoments(0, 0.0, 0.0)
        counts: dict[str, dict[str, int]] = {c: {} for c in spec.categorical_features}
        class_counts: dict[str, int] = {c: 0 for c in spec.classes}
        for profile in profiles:
            for cls_name, n in profile.label_counts.items():
                class_counts[cls_name] = class_counts.get(cls_name, 0) + n
            for c in spec.numeric_features:
                moments[c] = moments[c].merge(profile.numeric[c])
            label = label.merge(profile.label)
            for c in spec.categorical_features:
                for level, n in profile.categories.get(c, {}).items():
                    counts[c][level] = counts[c].get(level, 0) + n
        # DP profiles: moments from the sites' summed noisy histograms instead of each site's own.
        summed = _merged_histograms(profiles, spec)
        for c, m in summed.items():
            if c == spec.label:
                label = m
            else:
                moments[c] = m
        total = sum(p.count for p in profiles)
        for c in [*moments, spec.label] if summed else []:  # nothing stood out anywhere: the declared range
            if c in spec.ranges and (label if c == spec.label else moments[c]).count == 0:
                fallback = _range_moments(spec.ranges[c], total)
                if c == spec.label:
                    label = fallback
                else:
                    moments[c] = fallback
        levels = {
            c: tuple(spec.levels[c]) if c in spec.levels else tuple(sorted(counts[c]))
            for c in spec.categorical_features
        }
        std = {c: float(np.sqrt(m.variance)) for c, m in moments.items()}
        return cls(
            spec_name=spec.name,
            numeric=spec.numeric_features,
            mean={c: m.mean for c, m in moments.items()},
            # A constant column scales by 1 rather than dividing by zero.
            std={c: (s if s > 1e-12 else 1.0) for c, s in std.items()},
            levels=levels,
            label_mean=label.mean,
            label_std=float(np.sqrt(label.variance)) or 1.0,
            count=label.count,
            positives=int(round(label.mean * label.count)) if spec.kind == "binary" else 0,
            **(_classes(spec, class_counts) if spec.kind == "multiclass" else {}),
            **(_pixel_normalisation(profiles, spec.image.channels) if spec.image is not None else {}),
        )

    @classmethod
    def fit_pooled(cls, frame: pd.DataFrame, spec: TaskSpec) -> FederatedScaler:
        """The same scaler fitted on one table (centralised reference and local-only sites)."""
        return cls.combine([profile_site(frame, spec)], spec)

    @property
    def n_inputs(self) -> int:
        """Width of the model input: numeric columns plus one-hot levels (image tasks: the channels)."""
        if self.pixel_mean:
            return len(self.pixel_mean)
        return len(self.numeric) + sum(len(v) for v in self.levels.values())

    @property
    def n_outputs(self) -> int:
        """Width of the model output: one per class for multiclass tasks, else one."""
        return len(self.classes) if self.classes else 1

    def class_weights(self) -> np.ndarray:
        """Balanced weight of each class, ``count / (K * count_k)``, from the federation's label counts.

        A class no site has weighs 1 (it appears in no loss). When every class is present the
        weights average 1 over the federation's rows, so the loss keeps the unweighted scale.
        """
        k = len(self.classes)
        total = sum(self.class_counts.get(c, 0) for c in self.classes)
        return np.array(
            [total / (k * n) if (n := self.class_counts.get(c, 0)) else 1.0 for c in self.classes], dtype=np.float64
        )

    def class_index(self, labels: np.ndarray) -> np.ndarray:
        """Each class label's output index (int64); raises `TaskSpecError` for a class the federation lacks."""
        index = {c: i for i, c in enumerate(self.classes)}
        try:
            return np.array([index[str(v)] for v in labels], dtype=np.int64)
        except KeyError as exc:
            raise TaskSpecError(
                f"label {exc.args[0]!r} is not one of the model's classes {list(self.classes)}"
            ) from None

    @property
    def pos_weight(self) -> float:
        """Negatives per positive, to weight the rare defect class in the loss."""
        negatives = self.count - self.positives
        return float(negatives / self.positives) if self.positives else 1.0

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """Standardised numeric columns and one-hot levels, as float32 (image tasks: normalised images, NCHW)."""
        if self.pixel_mean:
            from models.images import pixel_array

            mean = np.asarray(self.pixel_mean, dtype=np.float32)[None, :, None, None]
            std = np.asarray(self.pixel_std, dtype=np.float32)[None, :, None, None]
            return (pixel_array(frame).astype(np.float32) * np.float32(1 / 255) - mean) / std
        parts = [((frame[c].to_numpy(dtype=np.float64) - self.mean[c]) / self.std[c])[:, None] for c in self.numeric]
        for c, levels in self.levels.items():
            values = frame[c].astype(str).to_numpy()
            parts.append(np.stack([values == lv for lv in levels], axis=1).astype(np.float64))
        return np.concatenate(parts, axis=1).astype(np.float32)

    def to_json(self) -> str:
        """The scaler as JSON (it travels with the task and is stored in model artifacts)."""
        return json.dumps(
            {
                "spec_name": self.spec_name,
                "numeric": list(self.numeric),
                "mean": self.mean,
                "std": self.std,
                "levels": {k: list(v) for k, v in self.levels.items()},
                "label_mean": self.label_mean,
                "label_std": self.label_std,
                "count": self.count,
                "positives": self.positives,
                # Multiclass only, so binary and regression scalers keep their JSON.
                **({"classes": list(self.classes), "class_counts": self.class_counts} if self.classes else {}),
                # Image tasks only, likewise.
                **({"pixel_mean": list(self.pixel_mean), "pixel_std": list(self.pixel_std)} if self.pixel_mean else {}),
            }  # fmt: skip
        )

    @classmethod
    def from_json(cls, text: str) -> FederatedScaler:
        """A scaler from `to_json`'s text."""
        raw = json.loads(text)
        raw["numeric"] = tuple(raw["numeric"])
        raw["levels"] = {k: tuple(v) for k, v in raw["levels"].items()}
        raw["classes"] = tuple(raw.get("classes", ()))
        raw["pixel_mean"] = tuple(float(v) for v in raw.get("pixel_mean", ()))
        raw["pixel_std"] = tuple(float(v) for v in raw.get("pixel_std", ()))
        return cls(**raw)


def _classes(spec: TaskSpec, counts: dict[str, int]) -> dict[str, Any]:
    """The classes in output order (declared, else sorted) and their merged counts."""
    classes = spec.classes or tuple(sorted(counts))
    undeclared = sorted(set(counts) - set(classes))
    if undeclared:  # sites validate against declared classes, so only a tampered profile gets here
        raise TaskSpecError(f"sites reported label(s) {undeclared} outside the classes {list(classes)}")
    if len(classes) < 2:
        raise TaskSpecError(f"a multiclass task needs at least 2 classes; the sites' labels hold {list(classes)}")
    return {"classes": tuple(classes), "class_counts": {c: counts.get(c, 0) for c in classes}}


def _pixel_normalisation(profiles: list[SiteProfile], channels: int) -> dict[str, Any]:
    """The merged per-channel pixel mean and standard deviation of the sites' image profiles."""
    moments = [ColumnMoments(0, 0.0, 0.0) for _ in range(channels)]
    for profile in profiles:
        for c in range(channels):
            moments[c] = moments[c].merge(profile.pixels.get(str(c), ColumnMoments(0, 0.0, 0.0)))
    if any(m.count == 0 for m in moments):
        raise TaskSpecError(
            f"cannot normalise images: the sites reported no pixel statistics for {channels} channel(s)"
        )
    std = [float(np.sqrt(m.variance)) for m in moments]
    return {"pixel_mean": tuple(m.mean for m in moments), "pixel_std": tuple(s if s > 1e-12 else 1.0 for s in std)}
