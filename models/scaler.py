"""Federated feature normalisation.

Each site summarises its own training rows (count, mean and sum of squared deviations per
numeric column, counts per category level, label counts); the coordinator combines the
summaries with the pairwise update of Chan, Golub & LeVeque (1979), which gives exactly the
pooled mean and variance without any row leaving a site.

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

__all__ = ["ColumnMoments", "SiteProfile", "FederatedScaler", "profile_site"]


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
