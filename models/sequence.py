"""Sequence tasks: the rows of one machine, engine or tool form a time series, and the model
sees a window of its last rows.

A task spec declares one with::

    [task.sequence]
    group = "unit"      # the machine / engine / tool whose rows form one time series
    order = "cycle"     # sorts the rows of a group (numeric, unique within the group)
    window = 30         # the model sees the last `window` rows up to and including each row
    stride = 1          # optional: a window ends at every `stride`-th row of a group, counted back from its last
    short = "pad"       # optional: a group shorter than the window is padded ("pad", the default) or dropped ("drop")

Windows are built at each site, from its own groups only, after the federated scaler has
standardised the rows (`windows`): no window ever crosses two groups or two sites. The label of
a window is the label of its last row. Under ``short = "pad"`` the first windows of a group, and
every window of a group shorter than the window, repeat the group's first row in front (so a
prediction exists for every row); under ``"drop"`` only full windows are built, and the rows
(and groups) left without one are counted (`WindowPlan`). The last row of every group always
ends a window, whatever the stride: it is what the usual remaining-useful-life protocol scores.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np
import pandas as pd

from models.errors import SiteDataError, TaskSpecError

if TYPE_CHECKING:  # models.tasks imports this module
    from models.scaler import FederatedScaler
    from models.tasks import TaskSpec

__all__ = ["SHORT_POLICIES", "SequenceSpec", "WindowPlan", "check_sequence_frame", "plan_windows", "windows"]

ShortPolicy = Literal["pad", "drop"]
SHORT_POLICIES: tuple[str, ...] = get_args(ShortPolicy)


@dataclass(frozen=True)
class SequenceSpec:
    """How the rows of a sequence task form windows (``[task.sequence]``)."""

    group: str
    order: str
    window: int
    stride: int = 1
    short: ShortPolicy = "pad"

    def __post_init__(self) -> None:
        if not self.group.strip() or not self.order.strip():
            raise TaskSpecError("[task.sequence] needs non-empty 'group' and 'order' columns")
        if self.group == self.order:
            raise TaskSpecError(f"[task.sequence] 'group' and 'order' are the same column '{self.group}'")
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1:
            raise TaskSpecError(f"[task.sequence] 'window' must be a positive whole number, got {self.window!r}")
        if isinstance(self.stride, bool) or not isinstance(self.stride, int) or self.stride < 1:
            raise TaskSpecError(f"[task.sequence] 'stride' must be a positive whole number, got {self.stride!r}")
        if self.short not in SHORT_POLICIES:
            raise TaskSpecError(f"[task.sequence] 'short' must be one of {list(SHORT_POLICIES)}, got {self.short!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SequenceSpec:
        """From the ``[task.sequence]`` table; unknown or missing keys raise `TaskSpecError`."""
        if not isinstance(data, Mapping):
            raise TaskSpecError("[task.sequence] must be a table")
        unknown = sorted(set(data) - {"group", "order", "window", "stride", "short"})
        if unknown:
            raise TaskSpecError(f"unknown key(s) {unknown} in [task.sequence]")
        missing = [k for k in ("group", "order", "window") if k not in data]
        if missing:
            raise TaskSpecError(f"[task.sequence] needs {missing}")
        return cls(
            group=str(data["group"]),
            order=str(data["order"]),
            window=data["window"],
            stride=data.get("stride", 1),
            short=data.get("short", "pad"),
        )

    def to_dict(self) -> dict[str, Any]:
        """The table as plain data."""
        return {"group": self.group, "order": self.order, "window": self.window, "stride": self.stride,
                "short": self.short}  # fmt: skip


def _shown(value: object) -> str:
    return repr(value.item() if isinstance(value, np.generic) else value)


def check_sequence_frame(frame: pd.DataFrame, spec: TaskSpec, *, source: str) -> pd.DataFrame:
    """The group and (numeric) order columns of a raw export, checked; raises `SiteDataError`.

    Refuses a missing group or order column, missing groups, a non-numeric or missing order,
    the same order value twice in one group, and (with the task's numeric features) a missing
    value that would fall inside a window, naming the group and its order value.
    """
    sequence = spec.sequence
    assert sequence is not None
    for role, column in (("group", sequence.group), ("order", sequence.order)):
        if column not in frame.columns:
            raise SiteDataError(
                source, f"{role} column '{column}' of [task.sequence] not found (columns present: "
                f"{list(frame.columns)[:12]}...)",
            )  # fmt: skip
    groups = frame[sequence.group]
    if groups.isna().any():
        row = int(np.flatnonzero(groups.isna().to_numpy())[0]) + 1
        raise SiteDataError(source, f"missing group in {int(groups.isna().sum())} row(s), first at data row {row}",
                            column=sequence.group)  # fmt: skip
    raw = frame[sequence.order]
    order = pd.to_numeric(raw, errors="coerce") if not pd.api.types.is_numeric_dtype(raw) else raw.astype(float)
    bad = order.isna().to_numpy() | ~np.isfinite(order.to_numpy(dtype=np.float64, na_value=np.nan))
    if bad.any():
        idx = int(np.flatnonzero(bad)[0])
        raise SiteDataError(
            source, f"order must be numbers, found {_shown(raw.iloc[idx])} in {int(bad.sum())} row(s), first at "
            f"data row {idx + 1} (group {_shown(groups.iloc[idx])})", column=sequence.order,
        )  # fmt: skip
    dup = pd.DataFrame({"g": groups.to_numpy(), "o": order.to_numpy()}).duplicated()
    if dup.any():
        idx = int(np.flatnonzero(dup.to_numpy())[0])
        raise SiteDataError(
            source, f"order value {_shown(order.iloc[idx])} appears twice in group {_shown(groups.iloc[idx])} "
            f"({int(dup.sum())} duplicate row(s), first at data row {idx + 1})", column=sequence.order,
        )  # fmt: skip
    for column in spec.measured_features:
        values = pd.to_numeric(frame[column], errors="coerce") if column in frame.columns else None
        if values is None:
            continue
        missing = values.isna().to_numpy() & frame[column].isna().to_numpy()
        if missing.any():
            idx = int(np.flatnonzero(missing)[0])
            raise SiteDataError(
                source, f"missing value inside a window: group {_shown(groups.iloc[idx])} at {sequence.order} "
                f"{_shown(order.iloc[idx])} (data row {idx + 1}; {int(missing.sum())} row(s) in all); windows "
                "need every row of a group", column=column,
            )  # fmt: skip
    plan = plan_windows(groups.to_numpy(), order.to_numpy(), sequence)
    longest = int(plan.lengths.max())
    if longest < sequence.window:
        raise SiteDataError(
            source, f"the window of {sequence.window} rows is longer than every group here (the longest, "
            f"{sequence.group} {_shown(plan.longest_group)}, has {longest} rows): shorten [task.sequence] 'window'",
            column=sequence.group,
        )  # fmt: skip
    return pd.DataFrame({sequence.group: groups.to_numpy(), sequence.order: order.to_numpy(dtype=np.float64)})


@dataclass(frozen=True)
class WindowPlan:
    """Where each window ends (row positions into the frame) and what was left without one."""

    rank: np.ndarray  # the frame's row positions sorted by (group, order)
    ends: np.ndarray  # row position of each window's last row, grouped, in order
    positions: np.ndarray  # each window's last row's position within its group (0 = the group's first row)
    last: np.ndarray  # True for the window that ends at its group's last row
    lengths: np.ndarray  # rows per group
    longest_group: object
    dropped_groups: int  # groups with no window (shorter than the window under "drop")
    dropped_rows: int  # rows that can end no window (under "drop": the first window - 1 of each group)

    @property
    def n_windows(self) -> int:
        """How many windows there are."""
        return len(self.ends)


def plan_windows(groups: np.ndarray, order: np.ndarray, sequence: SequenceSpec) -> WindowPlan:
    """Which rows end a window, per group sorted by `order` (rows of other groups never join one)."""
    n = len(groups)
    # Sort by (group, order); factorised codes keep groups apart whatever the type of their values.
    codes, uniques = pd.factorize(pd.Series(groups), sort=True)
    rank = np.lexsort((np.asarray(order, dtype=np.float64), codes))
    bounds = np.flatnonzero(np.diff(codes[rank])) + 1
    lo_all = np.concatenate([[0], bounds]).astype(np.int64) if n else np.zeros(0, dtype=np.int64)
    hi_all = np.concatenate([bounds, [n]]).astype(np.int64) if n else np.zeros(0, dtype=np.int64)
    lengths = hi_all - lo_all
    first = sequence.window - 1 if sequence.short == "drop" else 0
    ends, positions, last = [], [], []
    for lo, length in zip(lo_all, lengths, strict=True):
        if length <= first:
            continue
        # Counted back from the group's last row, so that row always ends a window.
        pos = np.arange(length - 1, first - 1, -sequence.stride)[::-1]
        ends.append(rank[lo + pos])
        positions.append(pos)
        flags = np.zeros(len(pos), dtype=bool)
        flags[-1] = True
        last.append(flags)

    def cat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
        return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)

    return WindowPlan(
        rank=rank,
        ends=cat(ends, np.int64),
        positions=cat(positions, np.int64),
        last=cat(last, bool),
        lengths=lengths,
        longest_group=uniques[int(np.argmax(lengths))] if n else None,
        dropped_groups=int((lengths <= first).sum()),
        dropped_rows=int(np.minimum(lengths, first).sum()),
    )


def windows(frame: pd.DataFrame, spec: TaskSpec, scaler: FederatedScaler) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Windows of standardised rows, shape (windows, window, inputs), their labels and last-row flags.

    `frame` is one site's validated rows (with the group and order columns): the scaler
    standardises them first, then windows are cut per group, in order.
    """
    sequence = spec.sequence
    assert sequence is not None
    rows = scaler.transform(frame)
    # Multiclass labels stay as they are; `training.prepare` turns them into class indices.
    labels = frame[spec.label].to_numpy() if spec.kind == "multiclass" else frame[spec.label].to_numpy(dtype=np.float32)
    plan = plan_windows(frame[sequence.group].to_numpy(), frame[sequence.order].to_numpy(), sequence)
    rank = plan.rank
    # The sorted position of each window's end, then the w positions before it, clamped at the
    # group's first row: that clamp is the padding by repetition of the first row.
    inverse = np.empty_like(rank)
    inverse[rank] = np.arange(len(rank))
    end_sorted = inverse[plan.ends]
    offsets = np.arange(-(sequence.window - 1), 1)
    taken = end_sorted[:, None] + offsets[None, :]
    first_sorted = (end_sorted - plan.positions)[:, None]
    taken = np.maximum(taken, first_sorted)
    x = rows[rank[taken]] if plan.n_windows else np.zeros((0, sequence.window, rows.shape[1]), dtype=np.float32)
    return x.astype(np.float32, copy=False), labels[plan.ends], plan.last
