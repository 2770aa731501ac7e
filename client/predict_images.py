"""Inference at the line: score a manifest or a folder of images with a pulled image model.

`client predict MODEL manifest.csv` (or ``MODEL images/``) lands here for an image task
(``[task.image]``). Images are decoded and scored in batches, so memory holds one batch of
images whatever the size of the lot; nothing is cached on disk (each image is scored once).

A bad image (missing, empty, unreadable, truncated, or leaving the folder under
``within_folder``) does not stop the lot: a line operator needs the other parts scored. Its
row is still written, with an empty score and the reason in the ``problem`` column, and the
report counts and names (the first ten) what was skipped. The site's 5 % limit of training
(`models.images.MAX_BAD_FRACTION`) does not apply: no statistic is computed from the batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from client.errors import PortalClientError
from models.images import IMAGE_SUFFIXES, PIXELS, image_rows
from models.scaler import FederatedScaler
from models.tasks import TaskSpec

__all__ = ["ImageScores", "PROBLEM_COLUMN", "score_images", "image_folder_manifest"]

PROBLEM_COLUMN = "problem"
"""The scores file's column saying why an image has no score (empty when it has one)."""

_SHOWN = 10  # bad images named in a report

Progress = Callable[[int, int], None]  # (images done, images in all)


@dataclass(frozen=True)
class ImageScores:
    """What `score_images` wrote: rows, images scored, the bad ones and the conversions."""

    path: Path
    metrics: dict[str, float]
    rows: int
    scored: int
    skipped: int
    first_skipped: tuple[str, ...] = ()
    converted: dict[str, int] = field(default_factory=dict)


def image_folder_manifest(folder: Path, column: str) -> pd.DataFrame:
    """A manifest of every JPEG, PNG, BMP or TIFF file directly in `folder` (sorted by name; not recursive)."""
    files = sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise PortalClientError(
            f"{folder}: no image file in this folder (looked for {', '.join(IMAGE_SUFFIXES)}, not in subfolders)"
        )
    return pd.DataFrame({column: files})


def score_images(
    net: torch.nn.Module,
    data: Path,
    out: Path | None,
    *,
    spec: TaskSpec,
    scaler: FederatedScaler,
    batch_size: int = 64,
    on_progress: Progress | None = None,
) -> ImageScores:
    """Score every image of a manifest (CSV or Parquet) or of a folder; write one row per image.

    The scores file keeps the path column as written (a folder's file names), the task's id
    columns present, then for a binary task ``p_<label>`` (the probability of the positive
    class) and ``predicted_<label>`` (1 at 0.5 or above, else 0); for a multiclass task the
    most probable class ``predicted_<label>`` and its probability ``p_<label>``; then
    ``problem``. With labels present the task's metrics are measured over the scored images.
    `on_progress` is called with (images done, images in all) after each batch.
    """
    from models.schema import read_table, validate_frame
    from models.training import predict_frame, task_metrics

    image = spec.image
    assert image is not None
    if batch_size < 1:
        raise PortalClientError(f"--batch-size must be at least 1, got {batch_size}")
    if data.is_dir():
        raw, folder = image_folder_manifest(data, image.column), data
        default_out = data.with_name(f"{data.name}.scores.csv")
    else:
        raw, folder = read_table(data), data.parent
        default_out = data.with_name(f"{data.stem}.scores.csv")
    has_label = spec.label in raw.columns
    placeholder = {} if has_label else {spec.label: scaler.classes[0] if spec.kind == "multiclass" else 0}
    frame = validate_frame(raw.assign(**placeholder), spec, source=data)  # same rows, same order as `raw`
    total = len(frame)
    multiclass = spec.kind == "multiclass"
    scores = np.full((total, scaler.n_outputs) if multiclass else (total,), np.nan)
    problems = [""] * total
    converted: dict[str, int] = {}
    batch_rows: list[int] = []
    batch_pixels: list[np.ndarray] = []

    def flush() -> None:
        if batch_rows:
            part = frame.iloc[batch_rows].reset_index(drop=True)
            column = np.empty(len(batch_pixels), dtype=object)
            column[:] = batch_pixels
            part[PIXELS] = column
            scores[batch_rows] = predict_frame(net, part, spec=spec, scaler=scaler).predictions
            batch_rows.clear()
            batch_pixels.clear()

    done = 0
    for row in image_rows(frame[image.column].tolist(), image, folder=folder, source=str(data)):
        done += 1
        if row.problem is not None:
            problems[row.index] = row.problem
        else:
            assert row.pixels is not None
            batch_rows.append(row.index)
            batch_pixels.append(row.pixels)
            if row.converted_from is not None:
                converted[row.converted_from] = converted.get(row.converted_from, 0) + 1
        if len(batch_rows) >= batch_size:
            flush()
            if on_progress is not None:
                on_progress(done, total)
    flush()
    if on_progress is not None:
        on_progress(done, total)

    ok = np.array([not p for p in problems], dtype=bool)
    keep = [image.column, *(c for c in spec.id_columns if c in raw.columns and c != image.column)]
    result = raw[keep].reset_index(drop=True)
    result = _score_columns(result, scores, ok, spec=spec, scaler=scaler)
    result[PROBLEM_COLUMN] = problems
    path = Path(out) if out else default_out
    result.to_csv(path, index=False)
    metrics: dict[str, float] = {}
    if has_label and ok.any():
        labels = frame[spec.label].to_numpy()[ok]
        truth = scaler.class_index(labels) if multiclass else labels.astype(np.float64)
        metrics = task_metrics(spec, truth, scores[ok], classes=scaler.classes)
    bad = [p for p in problems if p]
    return ImageScores(
        path, metrics, rows=total, scored=int(ok.sum()), skipped=len(bad),
        first_skipped=tuple(bad[:_SHOWN]), converted=converted,
    )  # fmt: skip


def _score_columns(
    result: pd.DataFrame, scores: np.ndarray, ok: np.ndarray, *, spec: TaskSpec, scaler: FederatedScaler
) -> pd.DataFrame:
    """The score and class columns; rows without a score get empty cells."""
    label = spec.label
    if spec.kind == "multiclass":
        best = np.where(ok, np.nan_to_num(scores, nan=-1.0).argmax(axis=1), 0)
        classes: list[Any] = [scaler.classes[k] if good else None for k, good in zip(best, ok, strict=True)]
        result[f"predicted_{label}"] = classes
        result[f"p_{label}"] = np.where(ok, scores[np.arange(len(best)), best], np.nan)
    else:
        result[f"p_{label}"] = scores
        result[f"predicted_{label}"] = pd.array(np.where(ok, scores >= 0.5, 0), dtype="Int64")
        result.loc[~ok, f"predicted_{label}"] = pd.NA
    return result
