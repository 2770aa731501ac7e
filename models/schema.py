"""Reading a site's export and checking it against its task's schema.

Every problem becomes one `SiteDataError` naming the file, the column and what is wrong, so
a supplier can fix its export without reading a traceback.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from models.errors import SiteDataError
from models.tasks import NO_FLAG_CLASS, TaskSpec
from sangsaeng.extras import require

__all__ = ["read_table", "validate_frame", "load_site_data"]

_PARQUET_SUFFIXES = {".parquet", ".pq"}
_CSV_SUFFIXES = {".csv", ".txt"}


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV or Parquet export. Raises `SiteDataError` for missing/empty/unreadable files.

    Parquet needs the ``parquet`` extra (pyarrow): without it, `MissingExtraError` names the install command.
    """
    path = Path(path)
    if not path.exists():
        raise SiteDataError(path, "file not found")
    if not path.is_file():
        raise SiteDataError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise SiteDataError(path, "file is empty")
    suffix = path.suffix.lower()
    if suffix in _PARQUET_SUFFIXES:  # a CSV site's light install has no pyarrow
        require("parquet", f"{path}: reading Parquet", modules=["pyarrow"])
    try:
        if suffix in _PARQUET_SUFFIXES:
            frame = pd.read_parquet(path)
        elif suffix in _CSV_SUFFIXES:
            frame = pd.read_csv(path, low_memory=False)
        else:
            raise SiteDataError(path, f"unsupported file type '{suffix}' (use .csv or .parquet)")
    except SiteDataError:
        raise
    except pd.errors.EmptyDataError:
        raise SiteDataError(path, "file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError, OSError) as exc:
        kind = "Parquet" if suffix in _PARQUET_SUFFIXES else "CSV"
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SiteDataError(path, f"cannot be read as {kind}: {first_line}") from None
    except Exception as exc:  # pyarrow raises its own tree; translate at this boundary
        raise SiteDataError(path, f"cannot be read: {type(exc).__name__}: {exc}") from None
    if frame.empty:
        raise SiteDataError(path, "file has a header but no data rows")
    return frame


def _first_bad(mask: np.ndarray, values: pd.Series) -> str:
    idx = int(np.flatnonzero(mask)[0])
    value = values.iloc[idx]
    shown = repr(value) if isinstance(value, str) else str(value.item() if isinstance(value, np.generic) else value)
    return f"{int(mask.sum())} row(s), first at data row {idx + 1}: {shown}"


def _numeric(frame: pd.DataFrame, column: str, source: str) -> pd.Series:
    raw = frame[column]
    if pd.api.types.is_bool_dtype(raw):
        return raw.astype(float)
    if pd.api.types.is_numeric_dtype(raw):
        return raw.astype(float)
    converted = pd.to_numeric(raw, errors="coerce")
    bad = (converted.isna() & raw.notna()).to_numpy()
    if bad.any():
        raise SiteDataError(source, f"expected numbers, found text in {_first_bad(bad, raw)}", column=column)
    return converted.astype(float)


def _check_range(spec: TaskSpec, column: str, values: pd.Series, source: str) -> None:
    if column not in spec.ranges:
        return
    lo, hi = spec.ranges[column]
    arr = values.to_numpy()
    outside = (arr < lo) | (arr > hi)
    if outside.any():
        raise SiteDataError(
            source,
            f"values outside the plausible range [{lo:g}, {hi:g}] in {_first_bad(outside, values)}",
            column=column,
        )


def validate_frame(frame: pd.DataFrame, spec: TaskSpec, *, source: str | Path) -> pd.DataFrame:
    """Return the task's columns, typed and checked; raise `SiteDataError` on the first problem."""
    source = str(source)
    missing = [c for c in spec.required_columns if c not in frame.columns]
    if missing:
        role = "label column" if missing == [spec.label] else "missing column(s)"
        raise SiteDataError(source, f"{role} {missing} not found (columns present: {list(frame.columns)[:12]}...)")
    if len(frame) == 0:
        raise SiteDataError(source, "no data rows")
    groups = _group_columns(frame, spec, source)

    out = pd.DataFrame(index=frame.index)
    if spec.image is not None:  # the paths, as given; `load_site_data` resolves and decodes them
        out[spec.image.column] = frame[spec.image.column].to_numpy(dtype=object)
    for column in spec.measured_features:
        values = _numeric(frame, column, source)
        arr = values.to_numpy()
        nonfinite = ~np.isfinite(arr)
        if nonfinite.any():
            raise SiteDataError(
                source, f"missing or non-finite values in {_first_bad(nonfinite, frame[column])}", column=column
            )
        _check_range(spec, column, values, source)
        out[column] = arr
    # Derived features: computed here, from the validated columns, before any scaling; a column
    # of the same name in the export is not read.
    for column, expression in spec.derived_expressions().items():
        arr = expression.evaluate(out)
        nonfinite = ~np.isfinite(arr)
        if nonfinite.any():
            raise SiteDataError(
                source,
                f"derived feature '{expression.text}' is not finite (division by zero?) in "
                f"{_first_bad(nonfinite, pd.Series(arr))}",
                column=column,
            )
        _check_range(spec, column, pd.Series(arr), source)
        out[column] = arr
    for column in spec.categorical_features:
        raw = frame[column]
        if raw.isna().any():
            raise SiteDataError(source, f"missing values in {_first_bad(raw.isna().to_numpy(), raw)}", column=column)
        values = raw.astype(str)
        if column in spec.levels:
            unknown = ~values.isin(spec.levels[column]).to_numpy()
            if unknown.any():
                raise SiteDataError(
                    source,
                    f"unknown level (allowed: {list(spec.levels[column])}) in {_first_bad(unknown, values)}",
                    column=column,
                )
        out[column] = values

    if spec.kind == "multiclass":
        out[spec.label] = _class_labels(frame, spec, source)
        return _with_groups(out, groups)
    label = _numeric(frame, spec.label, source)
    arr = label.to_numpy()
    if spec.kind == "binary":
        bad = ~np.isin(arr, (0.0, 1.0))
        if bad.any():
            raise SiteDataError(
                source,
                f"binary label must be 0 or 1, found other values in {_first_bad(bad, frame[spec.label])}",
                column=spec.label,
            )
    else:
        bad = ~np.isfinite(arr)
        if bad.any():
            raise SiteDataError(
                source, f"missing or non-finite label in {_first_bad(bad, frame[spec.label])}", column=spec.label
            )
        _check_range(spec, spec.label, label, source)  # a regression label's declared range, if any
    out[spec.label] = arr
    return _with_groups(out, groups)


def _with_groups(out: pd.DataFrame, groups: pd.DataFrame) -> pd.DataFrame:
    """The validated columns and the group (and order) columns: split and windows need them."""
    for column in groups.columns:
        out[column] = groups[column].to_numpy()
    return out.reset_index(drop=True)


def _class_labels(frame: pd.DataFrame, spec: TaskSpec, source: str) -> np.ndarray:
    """A multiclass label as text, read from the label column or derived from its `label_from` flags."""
    if spec.label_from:
        # The first flag set names the class (documented in models.tasks); no flag set: "none".
        labels = np.full(len(frame), NO_FLAG_CLASS, dtype=object)
        for column in reversed(spec.label_from):
            flags = _numeric(frame, column, source).to_numpy()
            bad = ~np.isin(flags, (0.0, 1.0))
            if bad.any():
                raise SiteDataError(
                    source, f"label flag must be 0 or 1, found other values in {_first_bad(bad, frame[column])}",
                    column=column,
                )  # fmt: skip
            labels[flags == 1.0] = column
        return labels
    raw = frame[spec.label]
    if raw.isna().any():
        raise SiteDataError(source, f"missing label in {_first_bad(raw.isna().to_numpy(), raw)}", column=spec.label)
    if pd.api.types.is_float_dtype(raw) and np.all(np.mod(raw.to_numpy(), 1) == 0):
        raw = raw.astype(np.int64)  # integer classes in a float column: 2.0 is class "2"
    labels = raw.astype(str).to_numpy(dtype=object)
    if spec.classes:
        unknown = ~np.isin(labels, spec.classes)
        if unknown.any():
            raise SiteDataError(
                source,
                f"label value not among the task's classes (known classes: {list(spec.classes)}) in "
                f"{_first_bad(unknown, pd.Series(labels))}",
                column=spec.label,
            )
    return labels


def _group_columns(frame: pd.DataFrame, spec: TaskSpec, source: str) -> pd.DataFrame:
    """The task's group (and sequence order) columns, checked; empty for a task without groups."""
    if spec.sequence is not None:
        from models.sequence import check_sequence_frame  # only sequence tasks pay for it

        return check_sequence_frame(frame, spec, source=source).set_axis(frame.index)
    if spec.group_column is None:
        return pd.DataFrame(index=frame.index)
    column = spec.group_column
    if column not in frame.columns:
        present = list(frame.columns)[:12]
        raise SiteDataError(source, f"group column '{column}' not found (columns present: {present}...)")
    if frame[column].isna().any():
        raise SiteDataError(source, f"missing group in {_first_bad(frame[column].isna().to_numpy(), frame[column])}",
                            column=column)  # fmt: skip
    return frame[[column]]


def load_site_data(path: str | Path, spec: TaskSpec, *, image_cache: Path | None = None) -> pd.DataFrame:
    """Read and validate one site's export.

    For an image task the export is a manifest: each row's image is decoded (through the
    cache under `image_cache`, by default next to the manifest; see `models.images`).
    """
    frame = validate_frame(read_table(path), spec, source=path)
    if spec.image is None:
        return frame
    from models.images import ImageCache, attach_images  # Pillow only for image tasks

    return attach_images(
        frame, spec.image, manifest=path, cache=ImageCache(image_cache) if image_cache is not None else None
    )
