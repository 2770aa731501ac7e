"""The ELPV solar-cell images (the optional ``elpv-dataset`` package) as an image-task manifest.

ELPV: 2,624 electroluminescence images of solar cells, 300x300 8-bit grayscale, from 44
modules, each labelled by experts with a defect probability of 0, 1/3, 2/3 or 1 and the cell
type (mono- or polycrystalline). Buerhop-Lutz et al., "A Benchmark for Visual Identification
of Defective Solar Cells in Electroluminescence Imagery", EU PVSEC 2018; Deitsch et al.,
"Automatic classification of defective photovoltaic module cells in electroluminescence
images", Solar Energy 185, 2019. Licence: CC BY-NC-SA 4.0 -- so the images are never copied
into this repository: the manifest points at the package's own files.

The manifest's supplier sites (column ``supplier``), documented and deterministic: the
monocrystalline cells are one site (``mono``, 1,074 cells); the polycrystalline cells, in the
package's file order (which follows the modules they were cut from), are split into a first
and a second half (``poly-a``, ``poly-b``, 775 cells each). Labels: ``defective`` is 1 when
the probability is at least 0.5; ``defect_level`` is the probability in thirds (0-3).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from models.errors import MissingExtraError

__all__ = ["INSTALL_HINT", "elpv_labels", "write_elpv_manifest"]

INSTALL_HINT = 'pip install "sangsaeng[vision]"'


def _package_data() -> Path:
    try:
        import elpv_dataset
    except ImportError:
        raise MissingExtraError(
            "the solar-cell tasks read the ELPV images from the optional package elpv-dataset, which is not "
            f"installed: {INSTALL_HINT}"
        ) from None
    return Path(elpv_dataset.__file__).parent / "data"


def elpv_labels() -> pd.DataFrame:
    """The package's labels with absolute image paths, the two labels and the supplier sites (file order)."""
    data = _package_data()
    raw = pd.read_csv(data / "labels.csv", sep=r"\s+", header=None, names=["path", "probability", "cell_type"])
    frame = pd.DataFrame(
        {
            "image": [str(data / p) for p in raw["path"]],
            "defective": (raw["probability"] >= 0.5).astype(int),
            "defect_level": np.rint(raw["probability"] * 3).astype(int),
            "probability": raw["probability"],
            "cell_type": raw["cell_type"],
        }
    )
    supplier = frame["cell_type"].astype(str).to_numpy(dtype=object)
    poly = np.flatnonzero(supplier == "poly")
    half = len(poly) // 2
    supplier[poly[:half]] = "poly-a"
    supplier[poly[half:]] = "poly-b"
    frame["supplier"] = supplier
    return frame


def write_elpv_manifest(out_dir: str | Path, *, per_site: int | None = None, seed: int = 0) -> Path:
    """Write ``elpv-manifest.csv`` under `out_dir` (paths into the installed package) and return its path.

    `per_site` keeps a seeded random subset of that many images per supplier site (for quick runs).
    """
    frame = elpv_labels()
    if per_site is not None:
        n = min(per_site, int(frame["supplier"].value_counts().min()))
        frame = frame.groupby("supplier").sample(n=n, random_state=seed).sort_index()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "elpv-manifest.csv"
    frame.to_csv(path, index=False)
    return path
