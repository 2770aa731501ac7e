"""Image tasks: a manifest of image files per site, decoded, resized and cached at the site.

A task spec declares one with::

    [task]
    name = "cell-cracks"
    kind = "binary"                 # or "multiclass"
    label = "defective"

    [task.image]
    column = "image"                # the manifest column holding each image's path
    size = [128, 128]               # height, width every image is resized to
    channels = 1                    # 1 = grayscale, 3 = RGB
    augment = { flip = true, shift = 2 }   # optional, on-site training only
    within_folder = false           # optional: true refuses paths that leave the manifest's folder

The site's export is a manifest (CSV or Parquet), one row per image: the path column
(relative to the manifest's own folder, or absolute), the label, and any other columns (line,
lot, camera), which can split sites or be id and group columns. Image tasks take no tabular
features.

Each image is read with Pillow (JPEG, PNG, BMP, TIFF, ...), converted to grayscale or RGB,
resized (bilinear) and kept as uint8 (channels, height, width). Decoded images are cached
under the site's cache folder (`ImageCache`, by default ``.sangsaeng-cache/images`` next to
the manifest), one ``.npy`` per image keyed by the file's path, modification time and size and
by the target size and channels: a later round, or a later run on the same export, reads the
cache and decodes nothing; a changed file is decoded again.

A few bad images (missing, empty, unreadable or truncated files, paths leaving the folder
under ``within_folder``) are skipped: their rows are dropped, counted and named (the first
ten) in the frame's `IMAGE_REPORT` attribute and a warning of the site's log. A site where
more than 5 % of the images are bad is refused with one error naming them. Images whose
channels had to be converted (an RGB photo in a grayscale task, say) are counted by their own
mode in the same report ("converted 3 RGB images to grayscale"), also when read from the cache.

Pixels are normalised by the federation's per-channel mean and standard deviation
(`models.scaler`), which the sites' pixel histograms give exactly; nothing else of an image
leaves the site.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from models.errors import MissingExtraError, SiteDataError, TaskSpecError

__all__ = [
    "CACHE_FOLDER",
    "IMAGE_REPORT",
    "IMAGE_SUFFIXES",
    "MAX_BAD_FRACTION",
    "PIXELS",
    "ImageAugment",
    "ImageCache",
    "ImageSpec",
    "attach_images",
    "ImageRow",
    "decode_image",
    "describe_conversions",
    "image_rows",
    "pixel_array",
    "pixel_histograms",
]

PIXELS = "__pixels__"
"""The column of a loaded image frame that holds each row's decoded image (uint8, (C, H, W))."""

CACHE_FOLDER = Path(".sangsaeng-cache") / "images"
"""Where a site caches decoded images, relative to its manifest's folder."""

IMAGE_REPORT = "sangsaeng_images"
"""The `DataFrame.attrs` key of a loaded frame's image report: images, skipped (count), first_skipped,
converted (images whose channels were converted, by their own Pillow mode, e.g. ``{"RGB": 3}``)."""

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
"""The file endings `client predict` takes from a folder of images (any case)."""

MAX_BAD_FRACTION = 0.05
"""A site whose bad images exceed this share of its manifest is refused rather than trained."""

_SHOWN_BAD = 10  # bad images named in a report or an error
logger = logging.getLogger("sangsaeng.site")

_MAX_SIDE = 1024  # a CPU model has no use for more; a typo such as 12800 is refused early
_MAX_SHIFT = 32


@dataclass(frozen=True)
class ImageAugment:
    """On-site training augmentation: random horizontal flips and small shifts (never at evaluation)."""

    flip: bool = False  # mirror left-right with probability 1/2
    shift: int = 0  # translate by up to `shift` pixels each way, filling with the mean pixel

    def __post_init__(self) -> None:
        if not isinstance(self.flip, bool):
            raise TaskSpecError(f"[task.image] augment 'flip' must be true or false, got {self.flip!r}")
        if isinstance(self.shift, bool) or not isinstance(self.shift, int) or not 0 <= self.shift <= _MAX_SHIFT:
            raise TaskSpecError(
                f"[task.image] augment 'shift' must be a whole number of pixels from 0 to {_MAX_SHIFT}, "
                f"got {self.shift!r}"
            )

    @property
    def active(self) -> bool:
        """Whether any augmentation is asked for."""
        return self.flip or self.shift > 0


@dataclass(frozen=True)
class ImageSpec:
    """Where a task's images are and what shape the model sees (``[task.image]``)."""

    column: str
    size: tuple[int, int]  # (height, width)
    channels: int = 1
    augment: ImageAugment = field(default_factory=ImageAugment)
    within_folder: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.column, str) or not self.column.strip():
            raise TaskSpecError("[task.image] needs a non-empty 'column' (the manifest column of image paths)")
        size = self.size
        if (
            not isinstance(size, tuple)
            or len(size) != 2
            or any(isinstance(s, bool) or not isinstance(s, int) or not 1 <= s <= _MAX_SIDE for s in size)
        ):
            raise TaskSpecError(
                f"[task.image] 'size' must be [height, width], whole numbers from 1 to {_MAX_SIDE}, got {size!r}"
            )
        if self.channels not in (1, 3) or isinstance(self.channels, bool):
            raise TaskSpecError(f"[task.image] 'channels' must be 1 (grayscale) or 3 (RGB), got {self.channels!r}")
        if not isinstance(self.within_folder, bool):
            raise TaskSpecError(f"[task.image] 'within_folder' must be true or false, got {self.within_folder!r}")
        if self.augment.shift >= min(size):
            raise TaskSpecError(f"[task.image] augment 'shift' {self.augment.shift} is not smaller than the image")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ImageSpec:
        """From the ``[task.image]`` table (or `to_dict`'s data); unknown or missing keys raise `TaskSpecError`."""
        if not isinstance(data, Mapping):
            raise TaskSpecError("[task.image] must be a table")
        unknown = sorted(set(data) - {"column", "size", "channels", "augment", "within_folder"})
        if unknown:
            raise TaskSpecError(f"unknown key(s) {unknown} in [task.image]")
        missing = [k for k in ("column", "size") if k not in data]
        if missing:
            raise TaskSpecError(f"[task.image] needs {missing}")
        raw_size = data["size"]
        size = tuple(raw_size) if isinstance(raw_size, list | tuple) else raw_size
        augment = data.get("augment", {})
        if not isinstance(augment, Mapping):
            raise TaskSpecError("[task.image] 'augment' must be a table such as { flip = true, shift = 2 }")
        unknown = sorted(set(augment) - {"flip", "shift"})
        if unknown:
            raise TaskSpecError(f"unknown key(s) {unknown} in [task.image] augment (known: flip, shift)")
        return cls(
            column=data["column"],
            size=size,
            channels=data.get("channels", 1),
            augment=ImageAugment(flip=augment.get("flip", False), shift=augment.get("shift", 0)),
            within_folder=data.get("within_folder", False),
        )

    @property
    def mode(self) -> str:
        """The Pillow mode images are converted to ("L" or "RGB")."""
        return "L" if self.channels == 1 else "RGB"

    @property
    def shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one decoded image."""
        return (self.channels, *self.size)


def _pillow() -> Any:
    try:
        from PIL import Image
    except ImportError:
        raise MissingExtraError(
            'image tasks read their images with Pillow, which is not installed: pip install "sangsaeng[vision]"'
        ) from None
    return Image


def decode_image(path: str | Path, spec: ImageSpec) -> np.ndarray:
    """One image file as uint8 (channels, height, width), converted and resized; `SiteDataError` if unreadable.

    16-bit grayscale (TIFF, PNG) is scaled to 8 bits rather than clipped.
    """
    return _decode(path, spec)[0]


# Pillow modes that hold one grey channel (bilevel, 8/16/32-bit): no channel conversion for grayscale.
_GREY_MODES = frozenset({"1", "L", "I", "F", "I;16", "I;16B", "I;16L", "I;16N"})


def _converted_from(mode: str, spec: ImageSpec) -> str | None:
    """The source mode when reaching the task's channels changes the image's channels (None when it does not)."""
    if spec.channels == 1:
        return None if mode in _GREY_MODES else mode
    return None if mode == "RGB" else mode


def describe_conversions(converted: Mapping[str, int], channels: int) -> str:
    """``"converted 3 RGB images to grayscale"`` (several modes joined by ``, ``); empty when none were."""
    target = "grayscale" if channels == 1 else "RGB"
    return ", ".join(
        f"converted {n} {mode} image{'s' if n != 1 else ''} to {target}" for mode, n in sorted(converted.items())
    )


def _decode(path: str | Path, spec: ImageSpec) -> tuple[np.ndarray, str | None]:
    """`decode_image`, and the image's own mode when its channels were converted (else None)."""
    image_module = _pillow()
    height, width = spec.size
    try:
        with image_module.open(path) as image:
            image.load()  # decode now: a truncated file fails here, not later
            source_mode = _converted_from(image.mode, spec)
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):
                wide = np.asarray(image, dtype=np.float64)
                top = 65535.0 if image.mode.startswith("I;16") or wide.max() > 255 else 255.0
                image = image_module.fromarray(np.clip(wide / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
            converted = image if image.mode == spec.mode else image.convert(spec.mode)
            resized = converted.resize((width, height), image_module.Resampling.BILINEAR)
            pixels = np.asarray(resized, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, image_module.DecompressionBombError) as exc:
        # Pillow's UnidentifiedImageError is an OSError; a truncated file raises OSError on load.
        problem = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SiteDataError(path, f"cannot be read as an image: {problem}") from None
    pixels = pixels[None, :, :] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    return np.ascontiguousarray(pixels), source_mode


class ImageCache:
    """Decoded images on disk, one ``.npy`` per (path, modification time, file size, target size, channels).

    `decoded` counts the files actually decoded and `hits` those read back from the cache, so
    callers (and tests) can see that later rounds decode nothing. A cache folder that cannot be
    written is not an error: the images are then decoded every time.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.decoded = 0
        self.hits = 0

    def key(self, path: Path, spec: ImageSpec) -> str:
        """The cache key of one image file as it is now (its stat is part of it)."""
        stat = path.stat()
        text = f"{path}\0{stat.st_mtime_ns}\0{stat.st_size}\0{spec.size[0]}x{spec.size[1]}\0{spec.channels}"
        return hashlib.sha256(text.encode()).hexdigest()

    def load(self, path: str | Path, spec: ImageSpec) -> np.ndarray:
        """The decoded image of `path`, from the cache when its file is unchanged."""
        return self.load_with_source(path, spec)[0]

    def load_with_source(self, path: str | Path, spec: ImageSpec) -> tuple[np.ndarray, str | None]:
        """`load`, and the file's own Pillow mode when its channels were converted (None when not).

        A converted image's entry has a small ``.from`` file beside it naming that mode, written
        before the ``.npy``, so a cache hit still says the image was converted.
        """
        path = Path(path)
        entry = self.root / f"{self.key(path, spec)}.npy"
        marker = entry.with_suffix(".from")
        try:
            pixels = np.load(entry, allow_pickle=False)
            if pixels.shape == spec.shape and pixels.dtype == np.uint8:
                source = marker.read_text(encoding="ascii").strip() if marker.exists() else None
                self.hits += 1
                return pixels, source or None
        except (OSError, ValueError):
            pass  # absent or damaged: decode again
        pixels, source = _decode(path, spec)
        self.decoded += 1
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            if source is not None:
                marker.write_text(source, encoding="ascii")
            partial = entry.with_name(f"{entry.stem}.{os.getpid()}.partial")
            with open(partial, "wb") as handle:
                np.save(handle, pixels, allow_pickle=False)
            os.replace(partial, entry)  # whole or absent: another process may read it concurrently
        except OSError:
            pass
        return pixels, source


def _shown(value: object) -> str:
    return repr(value.item() if isinstance(value, np.generic) else value)


def _resolve(raw: object, folder: Path, spec: ImageSpec, manifest: str, row: int) -> Path:
    where = f"data row {row}"
    if raw is None or (isinstance(raw, float) and np.isnan(raw)) or not str(raw).strip():
        raise SiteDataError(manifest, f"{where}: no image path", column=spec.column)
    path = Path(str(raw).strip())
    if not path.is_absolute():
        path = folder / path
    if spec.within_folder:
        # Resolved, so neither `..` nor a symbolic link leads out of the folder unseen.
        real, home = path.resolve(), folder.resolve()
        if not real.is_relative_to(home):
            raise SiteDataError(
                manifest, f"{where}: image path {_shown(raw)} leads outside the manifest's folder {home} "
                "([task.image] within_folder = true)", column=spec.column,
            )  # fmt: skip
    if not path.exists():
        raise SiteDataError(manifest, f"{where}: image file not found: {path}", column=spec.column)
    if not path.is_file():
        raise SiteDataError(manifest, f"{where}: not a regular file: {path}", column=spec.column)
    if path.stat().st_size == 0:
        raise SiteDataError(manifest, f"{where}: image file is empty (0 bytes): {path}", column=spec.column)
    return path


def attach_images(
    frame: pd.DataFrame, spec: ImageSpec, *, manifest: str | Path, cache: ImageCache | None = None
) -> pd.DataFrame:
    """The validated manifest rows with absolute image paths and each decoded image in column `PIXELS`.

    Relative paths are resolved against the manifest's folder. Rows whose image is missing,
    empty or unreadable are dropped and reported (``out.attrs[IMAGE_REPORT]``), as are the
    images whose channels were converted; more than `MAX_BAD_FRACTION` bad images raises
    `SiteDataError` naming the manifest, data rows and files.
    """
    manifest_path = Path(manifest)
    folder = manifest_path.parent
    cache = cache if cache is not None else ImageCache(folder / CACHE_FOLDER)
    source = str(manifest_path)
    keep, paths, images, bad = [], [], [], []
    converted: dict[str, int] = {}
    for row in image_rows(frame[spec.column].tolist(), spec, folder=folder, source=source, cache=cache):
        if row.problem is not None:
            bad.append(row.problem)
            continue
        assert row.pixels is not None and row.path is not None
        keep.append(row.index)
        paths.append(str(row.path))
        images.append(row.pixels)
        if row.converted_from is not None:
            converted[row.converted_from] = converted.get(row.converted_from, 0) + 1
    total = len(frame)
    if bad and (len(bad) > MAX_BAD_FRACTION * total or not keep):
        shown = "; ".join(bad[:_SHOWN_BAD]) + ("; ..." if len(bad) > _SHOWN_BAD else "")
        raise SiteDataError(
            source, f"{len(bad)} of {total} images cannot be used (a site may have at most "
            f"{MAX_BAD_FRACTION:.0%} bad images): {shown}", column=spec.column,
        )  # fmt: skip
    if bad:
        logger.warning("%s: skipped %d bad image(s) of %d: %s", source, len(bad), total, "; ".join(bad[:_SHOWN_BAD]))
    if converted:
        logger.info("%s: %s", source, describe_conversions(converted, spec.channels))
    out = frame.iloc[keep].reset_index(drop=True)
    out[spec.column] = paths
    column = np.empty(len(images), dtype=object)
    column[:] = images
    out[PIXELS] = column
    out.attrs[IMAGE_REPORT] = {
        "images": total, "skipped": len(bad), "first_skipped": bad[:_SHOWN_BAD], "converted": converted,
    }  # fmt: skip
    return out


@dataclass(frozen=True)
class ImageRow:
    """One manifest row's image: its decoded pixels, or the problem that left it without them."""

    index: int  # 0-based position in the manifest's rows
    path: Path | None  # resolved (None when the row names no usable path)
    pixels: np.ndarray | None  # uint8 (C, H, W); None when `problem` says why not
    problem: str | None = None  # "data row N: ..." naming the file
    converted_from: str | None = None  # the file's own Pillow mode when its channels were converted


def image_rows(
    paths: list[object], spec: ImageSpec, *, folder: Path, source: str, cache: ImageCache | None = None
) -> Iterator[ImageRow]:
    """Each path resolved (against `folder`) and decoded in turn, one `ImageRow` at a time.

    Nothing is held beyond the row yielded, so a caller that scores images in batches keeps
    only its batch in memory. Without `cache` images are decoded and nothing is written.
    """
    for row, raw in enumerate(paths, start=1):
        path: Path | None = None
        try:
            path = _resolve(raw, folder, spec, source, row)
            try:
                pixels, mode = cache.load_with_source(path, spec) if cache is not None else _decode(path, spec)
            except SiteDataError as exc:
                raise SiteDataError(source, f"data row {row}: {exc}", column=spec.column) from None
        except SiteDataError as exc:
            yield ImageRow(row - 1, path, None, problem=exc.problem)
            continue
        yield ImageRow(row - 1, path, pixels, converted_from=mode)


def pixel_array(frame: pd.DataFrame) -> np.ndarray:
    """The decoded images of a loaded frame (`attach_images`), stacked: uint8 (rows, C, H, W)."""
    if PIXELS not in frame.columns:
        raise TaskSpecError("this frame holds no decoded images (load it with models.schema.load_site_data)")
    if len(frame) == 0:
        raise TaskSpecError("no images")
    return np.stack(frame[PIXELS].to_list())


def pixel_histograms(pixels: np.ndarray) -> np.ndarray:
    """Per channel, how many pixels take each of the 256 values: int64 (channels, 256)."""
    return np.stack([np.bincount(pixels[:, c].reshape(-1), minlength=256) for c in range(pixels.shape[1])])
