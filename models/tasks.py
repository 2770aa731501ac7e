"""Tasks: what a value-chain model learns, from which columns, judged by which metric.

A task is a data schema (features with plausible ranges, categorical levels, label, columns
that are never features) plus the choices that follow from it (loss, metrics). Built-in
tasks are registered by name; any other task comes from a TOML file::

    [task]
    name = "spindle-temperature"
    kind = "regression"            # or "binary", "multiclass"
    label = "Process temperature [K]"
    features = ["Air temperature [K]", "Rotational speed [rpm]", "Type"]
    categorical = ["Type"]         # optional; categorical features
    id_columns = ["UDI"]           # optional; never features
    leak_columns = ["TWF"]         # optional; must never be features

    [task.ranges]                  # optional plausible [min, max] per numeric feature
    "Air temperature [K]" = [250, 350]   # (and a regression task's label: DP needs it, privacy.profile)

    [task.levels]                  # optional allowed levels per categorical feature
    Type = ["L", "M", "H"]

    [task.derived]                 # optional features computed at each site from its own rows
    "Power [W]" = "`Torque [Nm]` * `Rotational speed [rpm]` * 2 * pi / 60"

A derived feature (see `models.derived`) is computed from measured numeric features after
validation and before scaling, identically at every site; exports need not contain it.

A multiclass task's label holds one of K classes (strings or integers). ``classes = [...]``
fixes them and their order (the model's outputs); without it the classes are the sorted
labels the sites report. Its label may instead be derived from 0/1 flag columns::

    [task]
    kind = "multiclass"
    label = "Failure mode"
    label_from = ["TWF", "HDF", "PWF", "OSF", "RNF"]   # the first flag set names the class
    classes = ["none", "TWF", "HDF", "PWF", "OSF", "RNF"]

A row with no flag set is class ``none``; a row with several flags set takes the first of
them in ``label_from`` order. Flag columns may (and usually should) be leak columns too.

A task whose rows belong to machines, engines or tools declares the group, so the held-out
split keeps every group wholly on one side: ``group_column = "unit"`` in ``[task]``, or a
``[task.sequence]`` table (`models.sequence`), where the model also sees windows of rows.

An image task (binary or multiclass) reads a manifest of image files instead of features:
a ``[task.image]`` table (`models.images`) names the path column, the size and the channels;
``features`` is then left out.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from models.derived import DerivedExpression
from models.errors import TaskSpecError
from models.images import ImageAugment, ImageSpec
from models.rul import RUL_METRICS
from models.sequence import SequenceSpec

__all__ = [
    "KINDS",
    "LOWER_IS_BETTER",
    "NO_FLAG_CLASS",
    "TaskSpec",
    "builtin_tasks",
    "get_task",
    "higher_is_better",
    "load_task_spec",
    "register_task",
]

Kind = Literal["binary", "regression", "multiclass"]
KINDS: tuple[str, ...] = ("binary", "regression", "multiclass")
_METRICS: dict[str, tuple[str, ...]] = {
    "binary": ("roc_auc", "pr_auc", "f1"),
    "regression": ("rmse", "mae"),
    # Plus `recall_<class>` per class (see models.metrics).
    "multiclass": ("macro_f1", "accuracy", "balanced_accuracy", "macro_roc_auc"),
}
_PRIMARY = {"binary": "roc_auc", "regression": "rmse", "multiclass": "macro_f1"}
LOWER_IS_BETTER: frozenset[str] = frozenset({"rmse", "mae", "phm08_score", "rmse_last", "loss"})
"""The metrics that are errors or costs (regression, remaining useful life, a loss); every other one is a score."""


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of `metric` is better: False for an error or a cost (`LOWER_IS_BETTER`)."""
    return metric not in LOWER_IS_BETTER


NO_FLAG_CLASS = "none"
"""The class of a row none of whose `label_from` flags is set."""


@dataclass(frozen=True)
class TaskSpec:
    """The schema and learning problem of one value-chain model."""

    name: str
    kind: Kind
    label: str
    features: tuple[str, ...]
    categorical: tuple[str, ...] = ()
    id_columns: tuple[str, ...] = ()
    leak_columns: tuple[str, ...] = ()
    ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    levels: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    description: str = ""
    # (name, expression) in input order; a tuple, not a mapping: the order fixes the model's inputs.
    derived: tuple[tuple[str, str], ...] = ()
    # Multiclass only: the classes in output order (empty: the sorted labels the sites report).
    classes: tuple[str, ...] = ()
    # Multiclass only: 0/1 flag columns the label is derived from (see the module docstring).
    label_from: tuple[str, ...] = ()
    group_column: str | None = None  # rows of one group stay on one side of the held-out split
    sequence: SequenceSpec | None = None  # windows of rows per group (models.sequence)
    image: ImageSpec | None = None  # one image file per row of a manifest (models.images)

    def __post_init__(self) -> None:
        self.validate()

    # -- derived views -------------------------------------------------------------
    @property
    def measured_features(self) -> tuple[str, ...]:
        """Numeric features read from the export."""
        return tuple(f for f in self.features if f not in self.categorical)

    @property
    def derived_features(self) -> tuple[str, ...]:
        """Names of the derived (computed) features, in order."""
        return tuple(name for name, _ in self.derived)

    @property
    def numeric_features(self) -> tuple[str, ...]:
        """The model's numeric inputs: measured, then derived."""
        return (*self.measured_features, *self.derived_features)

    def derived_expressions(self) -> dict[str, DerivedExpression]:
        """Each derived feature's parsed expression, by name."""
        return {name: DerivedExpression.parse(text) for name, text in self.derived}

    @property
    def categorical_features(self) -> tuple[str, ...]:
        """The categorical features, in feature order."""
        return tuple(f for f in self.features if f in self.categorical)

    @property
    def metrics(self) -> tuple[str, ...]:
        """The metrics reported for this kind of task (regression on sequences: `models.rul`)."""
        if self.sequence is not None and self.kind == "regression":
            return RUL_METRICS
        return _METRICS[self.kind]

    @property
    def group_by(self) -> str | None:
        """The column whose groups the held-out split keeps whole (the sequence's group), or None."""
        return self.sequence.group if self.sequence is not None else self.group_column

    @property
    def primary_metric(self) -> str:
        """The metric that ranks models and gates releases."""
        return _PRIMARY[self.kind]

    @property
    def higher_is_better(self) -> bool:
        """Whether a larger primary metric is better (binary and multiclass tasks: yes; regression: no)."""
        return higher_is_better(self.primary_metric)

    @property
    def label_columns(self) -> tuple[str, ...]:
        """The export's columns the label is read from: the label itself, or its `label_from` flags."""
        return self.label_from or (self.label,)

    @property
    def required_columns(self) -> tuple[str, ...]:
        """The columns a site's export must have: features, then the label (or its flags), then the image paths."""
        return (*self.features, *self.label_columns, *((self.image.column,) if self.image is not None else ()))

    def schema_hash(self) -> str:
        """SHA-256 of the canonical JSON form: two runs with equal hashes share a schema."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    # -- (de)serialisation ---------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The spec as plain JSON-ready data (lists, sorted ranges and levels)."""
        data = asdict(self)
        data["ranges"] = {k: list(v) for k, v in sorted(self.ranges.items())}
        data["levels"] = {k: list(v) for k, v in sorted(self.levels.items())}
        for key in ("features", "categorical", "id_columns", "leak_columns"):
            data[key] = list(data[key])
        # Pairs keep their order through sorted-key JSON; absent when empty, so specs without
        # derived features keep the schema hash they had before derived features existed.
        data["derived"] = [list(pair) for pair in self.derived]
        if not self.derived:
            del data["derived"]
        for key in ("classes", "label_from"):  # likewise absent unless used
            data[key] = list(data[key])
            if not data[key]:
                del data[key]
        for key in ("group_column", "sequence", "image"):  # likewise absent when not declared
            if data[key] is None:
                del data[key]
        return data

    def to_json(self) -> str:
        """Canonical JSON (sorted keys): what travels to sites and what `schema_hash` hashes."""
        return json.dumps(self.to_dict(), sort_keys=True, ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "task spec") -> TaskSpec:
        """A spec from `to_dict`'s data; unknown keys or bad values raise `TaskSpecError` naming `source`."""
        known = {
            "name", "kind", "label", "features", "categorical", "id_columns",
            "leak_columns", "ranges", "levels", "description", "derived", "classes", "label_from",
            "group_column", "sequence", "image",
        }  # fmt: skip
        unknown = sorted(set(data) - known)
        if unknown:
            raise TaskSpecError(f"{source}: unknown key(s) {unknown} in [task]")
        # An image task reads no tabular features: `features` may be left out.
        for key in ("name", "kind", "label", *(() if "image" in data else ("features",))):
            if key not in data:
                raise TaskSpecError(f"{source}: [task] needs '{key}'")
        try:
            ranges = {str(k): _as_range(v) for k, v in dict(data.get("ranges", {})).items()}
        except (TypeError, ValueError) as exc:
            raise TaskSpecError(f"{source}: [task.ranges] must map columns to [min, max]") from exc
        categorical = tuple(str(c) for c in data.get("categorical", ()))
        raw_derived = data.get("derived", ())
        try:
            pairs = raw_derived.items() if isinstance(raw_derived, Mapping) else raw_derived
            derived = tuple((str(name), str(text)) for name, text in pairs)
        except (TypeError, ValueError) as exc:
            raise TaskSpecError(f"{source}: [task.derived] must map feature names to expressions") from exc
        try:
            sequence = SequenceSpec.from_dict(data["sequence"]) if "sequence" in data else None
        except TaskSpecError as exc:
            raise TaskSpecError(f"{source}: {exc}") from None
        try:
            image = ImageSpec.from_dict(data["image"]) if "image" in data else None
        except TaskSpecError as exc:
            raise TaskSpecError(f"{source}: {exc}") from None
        features = tuple(str(f) for f in data.get("features", ()))
        # A categorical column named only under `categorical` is still a feature.
        features += tuple(c for c in categorical if c not in features)
        try:
            return cls(
                name=str(data["name"]),
                kind=data["kind"],
                label=str(data["label"]),
                features=features,
                categorical=categorical,
                id_columns=tuple(str(c) for c in data.get("id_columns", ())),
                leak_columns=tuple(str(c) for c in data.get("leak_columns", ())),
                ranges=ranges,
                levels={str(k): tuple(str(x) for x in v) for k, v in dict(data.get("levels", {})).items()},
                description=str(data.get("description", "")),
                derived=derived,
                # Integer classes (TOML `classes = [0, 1, 2]`) compare as the text of the labels.
                classes=tuple(_class_name(c) for c in data.get("classes", ())),
                label_from=tuple(str(c) for c in data.get("label_from", ())),
                group_column=str(data["group_column"]) if data.get("group_column") is not None else None,
                sequence=sequence,
                image=image,
            )
        except TaskSpecError as exc:
            raise TaskSpecError(f"{source}: {exc}") from None

    @classmethod
    def from_json(cls, text: str) -> TaskSpec:
        """A spec from `to_json`'s text."""
        return cls.from_dict(json.loads(text))

    # -- checks --------------------------------------------------------------------
    def validate(self) -> None:
        """Refuse a spec that cannot train safely. Raises `TaskSpecError`."""
        if self.kind not in KINDS:
            raise TaskSpecError(f"unknown kind '{self.kind}' (expected one of {list(KINDS)})")
        if not self.name.strip():
            raise TaskSpecError("task name is empty")
        if not self.features and self.image is None:
            raise TaskSpecError("task has no features")
        dupes = sorted({f for f in self.features if self.features.count(f) > 1})
        if dupes:
            raise TaskSpecError(f"feature(s) listed twice: {dupes}")
        if self.label in self.features:
            raise TaskSpecError(f"label '{self.label}' is also listed as a feature")
        for kind, columns in (("leak", self.leak_columns), ("id", self.id_columns)):
            bad = [c for c in columns if c in self.features]
            if bad:
                raise TaskSpecError(f"{kind} column(s) {bad} must never be features: remove them from 'features'")
        if self.label in self.leak_columns or self.label in self.id_columns:
            raise TaskSpecError(f"label '{self.label}' is listed as a leak or id column")
        self._validate_derived()
        self._validate_classes()
        self._validate_groups()
        self._validate_image()
        for col, (lo, hi) in self.ranges.items():
            # A regression label may have a range too: it bounds the DP data profile's target histogram.
            if col not in self.numeric_features and not (self.kind == "regression" and col == self.label):
                raise TaskSpecError(f"range given for '{col}', which is not a numeric feature or a regression label")
            if not lo < hi:
                raise TaskSpecError(f"range for '{col}' is empty: [{lo}, {hi}]")
        for col, levels in self.levels.items():
            if col not in self.categorical_features:
                raise TaskSpecError(f"levels given for '{col}', which is not a categorical feature")
            if not levels:
                raise TaskSpecError(f"no levels given for '{col}'")

    def _validate_derived(self) -> None:
        taken = {*self.features, self.label, *self.id_columns, *self.leak_columns}
        names = self.derived_features
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise TaskSpecError(f"derived feature(s) defined twice: {dupes}")
        for name, text in self.derived:
            if not name.strip():
                raise TaskSpecError("a derived feature has an empty name")
            if name in taken:
                raise TaskSpecError(f"derived feature '{name}' has the name of a column of the data; rename it")
            try:
                expression = DerivedExpression.parse(text)
            except TaskSpecError as exc:
                raise TaskSpecError(f"derived feature '{name}': {exc}") from None
            unusable = [c for c in expression.columns if c not in self.measured_features]
            if unusable:
                raise TaskSpecError(
                    f"derived feature '{name}' uses {unusable}, which must be numeric features of the task "
                    f"(numeric features: {list(self.measured_features)})"
                )

    def _validate_classes(self) -> None:
        if self.kind != "multiclass":
            if self.classes or self.label_from:
                raise TaskSpecError(f"'classes' and 'label_from' are for multiclass tasks, not {self.kind}")
            return
        dupes = sorted({c for c in self.classes if self.classes.count(c) > 1})
        if dupes:
            raise TaskSpecError(f"class(es) listed twice: {dupes}")
        if self.classes and len(self.classes) < 2:
            raise TaskSpecError(f"a multiclass task needs at least 2 classes, got {list(self.classes)}")
        if not self.label_from:
            return
        if self.label in self.label_from:
            raise TaskSpecError(f"label '{self.label}' cannot be one of its own 'label_from' columns")
        bad = [c for c in self.label_from if c in self.features]
        if bad:
            raise TaskSpecError(f"label_from column(s) {bad} must never be features: remove them from 'features'")
        if self.classes:
            missing = [c for c in (NO_FLAG_CLASS, *self.label_from) if c not in self.classes]
            if missing:
                raise TaskSpecError(f"label_from gives class(es) {missing}, which 'classes' does not list")

    def _validate_groups(self) -> None:
        if self.sequence is not None and self.group_column is not None and self.group_column != self.sequence.group:
            raise TaskSpecError(
                f"group_column '{self.group_column}' differs from [task.sequence] group '{self.sequence.group}'"
            )
        roles = [("group_column", self.group_column)]
        if self.sequence is not None:
            roles += [("[task.sequence] group", self.sequence.group), ("[task.sequence] order", self.sequence.order)]
        for role, column in roles:
            if column is None:
                continue
            if column in self.features or column in self.derived_features:
                raise TaskSpecError(f"{role} '{column}' is also a feature: remove it from 'features'")
            if column == self.label:
                raise TaskSpecError(f"{role} '{column}' is the label")

    def _validate_image(self) -> None:
        image = self.image
        if image is None:
            return
        column = image.column
        if column in self.features:
            raise TaskSpecError(
                f"[task.image] column '{column}' is also listed as a feature: remove it from 'features'"
            )
        if self.features:
            raise TaskSpecError(
                f"an image task reads only its images; tabular features {list(self.features)} are not supported "
                "with [task.image]: leave 'features' out"
            )
        if self.kind not in ("binary", "multiclass"):
            raise TaskSpecError(f"an image task is binary or multiclass, not {self.kind}")
        if self.sequence is not None:
            raise TaskSpecError("a task has either [task.sequence] or [task.image], not both")
        roles = [("label", (self.label,)), ("label_from", self.label_from), ("id", self.id_columns),
                 ("leak", self.leak_columns), ("group_column", (self.group_column,))]  # fmt: skip
        for role, columns in roles:
            if column in columns:
                raise TaskSpecError(f"[task.image] column '{column}' is also the task's {role} column")

    def check_columns(self, columns: list[str] | tuple[str, ...], *, source: str) -> None:
        """Refuse a spec whose label (or its flags) or features are not in a data file's header."""
        present = set(columns)
        absent = [c for c in self.label_columns if c not in present]
        if self.label_from and absent:
            raise TaskSpecError(f"{source}: label_from column(s) {absent} are not in the data")
        if absent:
            raise TaskSpecError(f"{source}: label column '{self.label}' is not in the data")
        missing = [f for f in self.features if f not in present]
        if missing:
            raise TaskSpecError(f"{source}: feature column(s) {missing} are not in the data")
        if self.image is not None and self.image.column not in present:
            raise TaskSpecError(f"{source}: [task.image] column '{self.image.column}' is not in the data")


def _class_name(value: Any) -> str:
    """A class as text: integers (also 2.0 read from a float column) print without a decimal point."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _as_range(value: Any) -> tuple[float, float]:
    lo, hi = value
    return float(lo), float(hi)


# -- registry ------------------------------------------------------------------------
_REGISTRY: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec) -> TaskSpec:
    """Add a task to the built-in registry (name must be new)."""
    if spec.name in _REGISTRY:
        raise TaskSpecError(f"task '{spec.name}' is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def builtin_tasks() -> dict[str, TaskSpec]:
    """The built-in tasks by name (a copy of the registry)."""
    return dict(_REGISTRY)


def load_task_spec(path: str | Path) -> TaskSpec:
    """Read a task-spec TOML file. Raises `TaskSpecError` naming the file and problem."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TaskSpecError(f"{path}: task spec file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise TaskSpecError(f"{path}: not valid TOML: {exc}") from None
    if not isinstance(raw.get("task"), dict):
        raise TaskSpecError(f"{path}: needs a [task] table")
    return TaskSpec.from_dict(raw["task"], source=str(path))


def get_task(name_or_path: str | Path) -> TaskSpec:
    """A built-in task by name, or a task loaded from a TOML file path."""
    key = str(name_or_path)
    if key in _REGISTRY:
        return _REGISTRY[key]
    if key.endswith(".toml") or Path(key).is_file():
        return load_task_spec(key)
    raise TaskSpecError(f"unknown task '{key}' (built-in tasks: {sorted(_REGISTRY)})")


_KAMP_FEATURES: dict[str, tuple[float, float]] = {
    # Plausible physical ranges for a moulding machine; far wider than the data so only
    # broken exports (wrong unit, wrong column, sensor garbage) are refused.
    "Injection_Time": (0, 120), "Filling_Time": (0, 120), "Plasticizing_Time": (0, 120),
    "Cycle_Time": (0, 600), "Clamp_Close_Time": (0, 120),
    "Cushion_Position": (0, 2000), "Switch_Over_Position": (0, 2000),
    "Plasticizing_Position": (0, 2000), "Clamp_Open_Position": (0, 2000),
    "Max_Injection_Speed": (0, 1000), "Max_Screw_RPM": (0, 2000), "Average_Screw_RPM": (0, 2000),
    "Max_Injection_Pressure": (0, 1000), "Max_Switch_Over_Pressure": (0, 1000),
    "Max_Back_Pressure": (0, 1000), "Average_Back_Pressure": (0, 1000),
    **{f"Barrel_Temperature_{i}": (0, 500) for i in range(1, 8)},
    "Hopper_Temperature": (0, 500), "Mold_Temperature_3": (0, 500), "Mold_Temperature_4": (0, 500),
}  # fmt: skip

INJECTION_MOLDING_QUALITY = register_task(
    TaskSpec(
        name="injection-molding-quality",
        kind="binary",
        label="PassOrFail",
        features=tuple(_KAMP_FEATURES),
        id_columns=(
            "_id",
            "TimeStamp",
            "PART_FACT_PLAN_DATE",
            "PART_FACT_SERIAL",
            "PART_NAME",
            "EQUIP_CD",
            "EQUIP_NAME",
        ),  # fmt: skip
        leak_columns=("Reason",),
        ranges=_KAMP_FEATURES,
        description="Defective injection-moulded part (KAMP), from 26 process readings.",
    )
)

PREDICTIVE_MAINTENANCE = register_task(
    TaskSpec(
        name="predictive-maintenance",
        kind="binary",
        label="Machine failure",
        features=(
            "Type",
            "Air temperature [K]",
            "Process temperature [K]",
            "Rotational speed [rpm]",
            "Torque [Nm]",
            "Tool wear [min]",
        ),  # fmt: skip
        categorical=("Type",),
        id_columns=("UDI", "Product ID"),
        leak_columns=("TWF", "HDF", "PWF", "OSF", "RNF"),
        ranges={
            "Air temperature [K]": (250, 350),
            "Process temperature [K]": (250, 360),
            "Rotational speed [rpm]": (0, 5000),
            "Torque [Nm]": (0, 150),
            "Tool wear [min]": (0, 500),
            # The derived features' ranges follow from the measured ones: they bound the DP
            # data profile (privacy.profile) as well as checking each row.
            "Power [W]": (0, 80000),
            "Temperature difference [K]": (-100, 110),
            "Strain [min Nm]": (0, 75000),
        },
        levels={"Type": ("L", "M", "H")},
        description="Milling machine failure within the next operation (AI4I 2020).",
        # The physics behind the failure modes (Matzka 2020): power failure outside a band of
        # spindle power, heat dissipation failure at a small process-air temperature difference,
        # overstrain failure above a product of tool wear and torque.
        derived=(
            ("Power [W]", "`Torque [Nm]` * `Rotational speed [rpm]` * 2 * pi / 60"),
            ("Temperature difference [K]", "`Process temperature [K]` - `Air temperature [K]`"),
            ("Strain [min Nm]", "`Tool wear [min]` * `Torque [Nm]`"),
        ),
    )
)

FAILURE_MODE = register_task(
    TaskSpec(
        name="failure-mode",
        kind="multiclass",
        label="Failure mode",
        features=PREDICTIVE_MAINTENANCE.features,
        categorical=PREDICTIVE_MAINTENANCE.categorical,
        id_columns=PREDICTIVE_MAINTENANCE.id_columns,
        # The flags the label comes from, and the failure they add up to, must never be inputs.
        leak_columns=("Machine failure", "TWF", "HDF", "PWF", "OSF", "RNF"),
        ranges=PREDICTIVE_MAINTENANCE.ranges,
        levels=PREDICTIVE_MAINTENANCE.levels,
        description=(
            "Which failure mode a milling operation ends in (AI4I 2020): none, tool wear (TWF), heat "
            "dissipation (HDF), power (PWF), overstrain (OSF) or random (RNF). A row with several modes "
            "takes the first in that order."
        ),
        derived=PREDICTIVE_MAINTENANCE.derived,
        classes=(NO_FLAG_CLASS, "TWF", "HDF", "PWF", "OSF", "RNF"),
        label_from=("TWF", "HDF", "PWF", "OSF", "RNF"),
    )
)

# The informative C-MAPSS FD003 sensors: the constant (sensor_1, 5, 16, 18, 19, op_setting_3)
# and near-constant (sensor_6, 10) columns carry nothing; FD003 has one operating condition, so
# op_setting_1-2 are noise (../shared/datasets/README.md).
_CMAPSS_SENSORS: tuple[str, ...] = tuple(f"sensor_{i}" for i in (2, 3, 4, 7, 8, 9, 11, 12, 13, 14, 15, 17, 20, 21))

# Plausible ranges: the sample's span widened by half of it on each side (rounded outward), and
# the label's [0, 125] by its definition (cycles left, capped at 125). They refuse broken exports
# and bound the DP data profile (privacy.profile), whose 64 bins span them: ranges much wider
# than the data would leave its values in a few bins.
_CMAPSS_RANGES: dict[str, tuple[float, float]] = {
    "sensor_2": (639, 646), "sensor_3": (1540, 1630), "sensor_4": (1350, 1460), "sensor_7": (540, 577),
    "sensor_8": (2386.2, 2389.3), "sensor_9": (8970, 9170), "sensor_11": (45.8, 49.1), "sensor_12": (508, 545),
    "sensor_13": (2386.1, 2389.4), "sensor_14": (8060, 8240), "sensor_15": (8, 8.7), "sensor_17": (383, 403),
    "sensor_20": (37.7, 40.5), "sensor_21": (22.7, 24.3), "RUL": (0, 125),
}  # fmt: skip

TURBOFAN_RUL = register_task(
    TaskSpec(
        name="turbofan-rul",
        kind="regression",
        label="RUL",
        features=_CMAPSS_SENSORS,
        id_columns=("unit", "cycle", "operator"),
        ranges=_CMAPSS_RANGES,
        description="Remaining useful life of a turbofan engine (NASA C-MAPSS FD003), from windows of 30 cycles.",
        # Each engine's cycles form one time series: split and windows by engine, never by row.
        sequence=SequenceSpec(group="unit", order="cycle", window=30),
    )
)

# ELPV (models.elpv): electroluminescence images of solar cells, read from the optional
# elpv-dataset package (CC BY-NC-SA 4.0; never copied here). 96x96 keeps a round on a
# 1,000-image site within a CPU core's minute; the cells are 300x300.
_ELPV_IMAGE = ImageSpec(column="image", size=(96, 96), channels=1, augment=ImageAugment(flip=True, shift=2))

SOLAR_CELL_INSPECTION = register_task(
    TaskSpec(
        name="solar-cell-inspection",
        kind="binary",
        label="defective",
        features=(),
        id_columns=("cell_type", "supplier"),
        leak_columns=("probability", "defect_level"),
        description=(
            "Defective solar cell (probability of a defect at least 0.5) from its electroluminescence image "
            '(ELPV; pip install "sangsaeng[vision]").'
        ),
        image=_ELPV_IMAGE,
    )
)

SOLAR_CELL_DEFECT_LEVEL = register_task(
    TaskSpec(
        name="solar-cell-defect-level",
        kind="multiclass",
        label="defect_level",
        features=(),
        id_columns=("cell_type", "supplier"),
        leak_columns=("probability", "defective"),
        description=(
            "How sure the experts were that a solar cell is defective, in four levels (0, 1/3, 2/3, 1) "
            '(ELPV; pip install "sangsaeng[vision]").'
        ),
        classes=("0", "1", "2", "3"),
        image=_ELPV_IMAGE,
    )
)
