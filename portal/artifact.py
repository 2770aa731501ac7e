"""The model artifact: one deterministic zip a supplier can score its own data with.

Layout::

    artifact.json        {"format": "sangsaeng-model/1", "task": {...TaskSpec...},
                          "scaler": "<FederatedScaler JSON>", "model": "mlp"|"ple", "hidden": [64, 32],
                          "weights": ["w000", ...], "source": {"run_ref": ..., "round": ...}}
    weights/w000.npy     the global model's arrays, in `models.nets.get_weights` order

Entries carry a fixed timestamp, so the same weights always give the same bytes (and hash).
Arrays are read with ``allow_pickle=False``. Nothing here imports torch, FastAPI or the portal
server: a supplier's PC reads artifacts with it too. A bad artifact raises the shared
`sangsaeng.errors.ModelArtifactError`; the portal answers it with HTTP 422 at its boundary.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sangsaeng.errors import FileIntegrityError, ModelArtifactError, SangsaengError
from sangsaeng.files import check_sha256, read_checked_json

__all__ = ["FORMAT", "ModelArtifactContent", "build_artifact", "read_artifact", "artifact_from_run", "describe_inputs"]

FORMAT = "sangsaeng-model/1"
_MANIFEST = "artifact.json"
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)
_MAX_ENTRIES = 256


@dataclass(frozen=True)
class ModelArtifactContent:
    """A parsed artifact: its manifest and weight arrays."""

    manifest: dict[str, Any]
    weights: list[np.ndarray]

    @property
    def task(self) -> dict[str, Any]:
        """The manifest's task specification (a `models.tasks.TaskSpec` as a dict)."""
        return self.manifest["task"]

    @property
    def scaler_json(self) -> str:
        """The fitted `models.scaler.FederatedScaler`, as its JSON text."""
        return self.manifest["scaler"]

    @property
    def model(self) -> str:
        """The architecture's name; ``mlp`` when the manifest names none."""
        return str(self.manifest.get("model", "mlp"))

    @property
    def hidden(self) -> list[int]:
        """The hidden layers' widths, as integers."""
        return [int(h) for h in self.manifest["hidden"]]

    @property
    def operating_point(self) -> dict[str, Any] | None:
        """The decision threshold the federation chose (`models.histogram.operating_point`), or None."""
        point = self.manifest.get("operating_point")
        return dict(point) if isinstance(point, dict) else None


def _entry(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_FIXED_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    return info


def build_artifact(
    weights: list[np.ndarray],
    *,
    task: dict[str, Any],
    scaler_json: str,
    hidden: list[int],
    source: dict[str, Any],
    model: str = "mlp",
    operating_point: dict[str, Any] | None = None,
) -> bytes:
    """The artifact's bytes (deterministic for equal inputs); `operating_point`: the run's decision threshold."""
    names = [f"w{i:03d}" for i in range(len(weights))]
    manifest = {
        "format": FORMAT,
        "task": task,
        "scaler": scaler_json,
        "model": model,
        "hidden": [int(h) for h in hidden],
        "weights": names,
        "source": source,
    }
    if operating_point is not None:  # only then: an artifact without one keeps its bytes (and hash)
        manifest["operating_point"] = operating_point
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(_entry(_MANIFEST), json.dumps(manifest, sort_keys=True, indent=1))
        for name, array in zip(names, weights, strict=True):
            npy = io.BytesIO()
            np.lib.format.write_array(npy, np.ascontiguousarray(array), allow_pickle=False)
            archive.writestr(_entry(f"weights/{name}.npy"), npy.getvalue())
    return buffer.getvalue()


def read_artifact(data: bytes, *, max_unpacked: int = 256 * 1024 * 1024) -> ModelArtifactContent:
    """Parse and check an artifact; raises `ModelArtifactError` naming the problem."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise ModelArtifactError("artifact is not a zip archive") from None
    with archive:
        infos = archive.infolist()
        if len(infos) > _MAX_ENTRIES:
            raise ModelArtifactError(f"artifact has {len(infos)} entries (at most {_MAX_ENTRIES})")
        if sum(i.file_size for i in infos) > max_unpacked:
            raise ModelArtifactError(f"artifact unpacks to more than {max_unpacked} bytes")
        try:
            manifest = json.loads(archive.read(_MANIFEST))
        except KeyError:
            raise ModelArtifactError(f"artifact has no {_MANIFEST}") from None
        except (ValueError, zipfile.BadZipFile, OSError) as exc:
            raise ModelArtifactError(f"artifact's {_MANIFEST} cannot be read: {exc}") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise ModelArtifactError(f"artifact format must be '{FORMAT}'")
        for key, kind in (("task", dict), ("scaler", str), ("hidden", list), ("weights", list)):
            if not isinstance(manifest.get(key), kind):
                raise ModelArtifactError(f"artifact's {_MANIFEST} needs '{key}' ({kind.__name__})")
        weights = []
        for name in manifest["weights"]:
            if not isinstance(name, str) or not name.isidentifier():
                raise ModelArtifactError(f"bad weight name {name!r}")
            array = _read_npy(archive, f"weights/{name}.npy")
            if array.dtype.kind != "f" or not np.all(np.isfinite(array)):
                raise ModelArtifactError(f"weights/{name}.npy must hold finite floating-point numbers")
            weights.append(array)
    content = ModelArtifactContent(manifest, weights)
    _check_consistency(content)
    point = manifest.get("operating_point")
    if point is not None:
        threshold = point.get("threshold") if isinstance(point, dict) else None
        if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 <= threshold <= 1:
            raise ModelArtifactError(f"artifact's operating_point needs a threshold in [0, 1], got {threshold!r}")
    return content


def _read_npy(archive: zipfile.ZipFile, entry: str) -> np.ndarray:
    """One ``.npy`` entry, its header checked against the bytes present before any array is allocated.

    The header names a shape and dtype; numpy would allocate ``prod(shape) * itemsize`` bytes
    before reading, so a 100-byte entry claiming shape (10**6, 10**6) would ask for 8 TB.
    """
    try:
        data = archive.read(entry)  # at most its declared size, which read_artifact has bounded
    except KeyError:
        raise ModelArtifactError(f"artifact is missing {entry}") from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise ModelArtifactError(f"{entry} cannot be read: {exc}") from None
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise ValueError(f"npy format version {version[0]}.{version[1]} is not supported (1.0 or 2.0)")
    except (ValueError, EOFError) as exc:
        raise ModelArtifactError(f"{entry} cannot be read: {exc}") from None
    if dtype.hasobject or dtype.kind != "f":
        raise ModelArtifactError(f"{entry} must hold floating-point numbers, not {dtype}")
    if any(n < 0 for n in shape):
        raise ModelArtifactError(f"{entry}: its header claims an impossible shape {shape}")
    claimed = math.prod(shape) * dtype.itemsize  # Python integers: no overflow
    present = len(data) - stream.tell()
    if claimed != present:
        raise ModelArtifactError(
            f"{entry}: its header claims shape {shape} of {dtype} ({claimed} bytes) but {present} bytes follow"
        )
    try:
        return np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)
    except (ValueError, EOFError) as exc:
        raise ModelArtifactError(f"{entry} cannot be read: {exc}") from None


def _check_consistency(content: ModelArtifactContent) -> None:
    """The task parses, the scaler fits it, the first layer takes the scaler's inputs and the last gives its outputs."""
    from models.architectures import weight_shapes
    from models.scaler import FederatedScaler
    from models.tasks import TaskSpec

    try:
        spec = TaskSpec.from_dict(content.task, source="artifact task")
        scaler = FederatedScaler.from_json(content.scaler_json)
    except (SangsaengError, ValueError, TypeError, KeyError) as exc:
        raise ModelArtifactError(f"artifact's task or scaler is invalid: {exc}") from None
    if scaler.spec_name != spec.name:
        raise ModelArtifactError(f"artifact's scaler is for task '{scaler.spec_name}', not '{spec.name}'")
    hidden = content.hidden
    try:
        shapes = weight_shapes(content.model, scaler.n_inputs, hidden, scaler.n_outputs)
    except ValueError as exc:
        raise ModelArtifactError(f"artifact's model: {exc}") from None
    if len(content.weights) != len(shapes):
        raise ModelArtifactError(
            f"artifact has {len(content.weights)} weight arrays; a '{content.model}' model {hidden} needs {len(shapes)}"
        )
    first = content.weights[0]
    if first.shape[1:] != shapes[0][1:]:
        width = shapes[0][1]
        raise ModelArtifactError(
            f"first layer has shape {first.shape}; a '{content.model}' model on the scaler's "
            f"{scaler.n_inputs} inputs takes {width}"
        )
    head = content.weights[-2]  # the output layer's weight (the last array is its bias)
    if head.ndim != 2 or head.shape[0] != scaler.n_outputs:
        raise ModelArtifactError(
            f"output layer has shape {head.shape}; the scaler's task needs {scaler.n_outputs} output(s)"
        )
    for i, (array, shape) in enumerate(zip(content.weights, shapes, strict=True)):
        if array.shape != shape:
            raise ModelArtifactError(
                f"weight array {i} has shape {array.shape}; a '{content.model}' model {hidden} on "
                f"{scaler.n_inputs} inputs with {scaler.n_outputs} output(s) needs {shape}"
            )


def describe_inputs(content: ModelArtifactContent) -> dict[str, Any]:
    """What the model reads and what it gives, from the artifact's own task and scaler (for its card).

    ``kind`` and ``label``; ``classes`` in output order (multiclass only); ``window``: the
    ``[task.sequence]`` table (group, order, window, stride, short), or None for a row task;
    ``image``: the ``[task.image]`` table (column, size, channels, augment), image tasks only;
    ``normalisation``: image tasks only, the federation's pixel mean and std per channel (0-1
    scale) the model's inputs are normalised by, and what they are;
    ``input_columns``: the export's columns the model reads (numeric, then categorical);
    ``derived_features``: the features each site computes from them (name: expression);
    ``input_width``: the standardised inputs per row (one-hot levels counted).
    """
    from models.scaler import FederatedScaler
    from models.tasks import TaskSpec

    spec = TaskSpec.from_dict(content.task, source="artifact task")
    scaler = FederatedScaler.from_json(content.scaler_json)
    return {
        "kind": spec.kind,
        "label": spec.label,
        **({"classes": list(scaler.classes)} if scaler.classes else {}),
        "window": spec.sequence.to_dict() if spec.sequence is not None else None,
        **({"image": spec.to_dict()["image"]} if spec.image is not None else {}),
        **({"normalisation": _pixel_normalisation(scaler)} if spec.image is not None else {}),
        "input_columns": [*spec.measured_features, *spec.categorical_features],
        "derived_features": dict(spec.derived),
        "input_width": scaler.n_inputs,
    }


def _pixel_normalisation(scaler: Any) -> dict[str, Any]:
    """An image model's input normalisation, as its card states it."""
    return {
        "pixel_mean": [float(v) for v in scaler.pixel_mean],
        "pixel_std": [float(v) for v in scaler.pixel_std],
        "scale": "pixel values / 255, then (value - mean) / std per channel",
    }


def artifact_from_run(run_dir: Path) -> tuple[bytes, dict[str, Any]]:
    """The candidate artifact of a finished coordinator run (its last checkpoint) and its source."""
    run_dir = Path(run_dir)
    manifest_path = run_dir / "manifest.json"
    if not manifest_path.exists():
        raise ModelArtifactError(f"{run_dir}: no manifest.json (is this a coordinator run directory?)")
    try:
        run = read_checked_json(manifest_path, what="run manifest")
    except FileIntegrityError as exc:
        raise ModelArtifactError(str(exc)) from None
    done = [r for r in run.get("rounds", []) if r.get("checkpoint") and (run_dir / r["checkpoint"]).exists()]
    if not done:
        raise ModelArtifactError(f"{run_dir}: no checkpoint found; the run has no model to upload")
    last = max(done, key=lambda r: r["round"])
    checkpoint = run_dir / last["checkpoint"]
    try:
        if last.get("checkpoint_sha256"):
            check_sha256(checkpoint, last["checkpoint_sha256"], what="checkpoint")
        with np.load(checkpoint, allow_pickle=False) as npz:
            weights = [npz[k] for k in sorted(k for k in npz.files if k.startswith("w"))]
    except FileIntegrityError as exc:
        raise ModelArtifactError(str(exc)) from None
    config = run.get("config", {})
    source = {"run_ref": str(run.get("run_id", run_dir.name)), "round": int(last["round"])}
    from models.histogram import run_operating_point  # numpy only

    point = run_operating_point(run.get("rounds", []), config.get("operating_rule"))
    data = build_artifact(
        weights,
        task=config["task"],
        scaler_json=run["scaler"],
        hidden=list(config.get("hidden", [64, 32])),
        source=source,
        model=str(config.get("model", "mlp")),
        operating_point=point,
    )
    return data, source
