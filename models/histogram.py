"""Evaluation as histograms: what a site reveals about its held-out rows, and the metrics read from it.

A site does not send its metrics. It sends an `EvalHistogram` of its held-out predictions, which
the coordinator sums over sites (`merge`) and reads the task's metrics from
(`histogram_metrics`): the union's metrics come from the union's histogram, never from an
average of the sites' figures. Under DP the site adds Gaussian noise to every coordinate first
(`privacy.evaluation`); the metrics then make the counts above each threshold non-negative and
monotone (post-processing, `_clean`), and clamp noisy confusion counts at 0.

What a histogram holds, per task kind:

- **binary**: ``negatives`` and ``positives``, counts of the held-out scores (predicted defect
  probabilities) in ``bins`` bins with fixed edges (`score_edges`): equal in log-odds over
  [-``LOGIT_RANGE``, ``LOGIT_RANGE``] (the ``logit`` scale), so scores near 0 or 1 get bins as
  fine as they need: a line's 95 %-recall threshold often sits among defects scored below 0.01.
  A score ``s`` lands in the bin ``j`` with ``edges[j] <= s < edges[j + 1]`` (the top edge in the
  last bin), so flagging the bins ``j..`` flags exactly the rows scored at least ``edges[j]``.
  ROC-AUC treats the rows of one bin as tied (error at most the share of positive-negative pairs
  within one bin), PR-AUC is the average precision over the bins' lower edges as thresholds, and
  F1 is exact at the 0.5 threshold (``bins`` is even, so 0.5 is an edge). One row adds 1 to one
  bin of one block: L2 sensitivity 1. Histograms written before the logit scale (no ``scale`` in
  their JSON) had equal bins over [0, 1]: they are read as the ``linear`` scale, and merge only
  with histograms of the same scale.
- **multiclass**: ``confusion`` (true class x predicted class, argmax), and per class ``k`` the
  one-vs-rest histograms ``ovr:k:in`` / ``ovr:k:out`` of the predicted probability of ``k`` for
  the rows of class ``k`` and of the other classes. Accuracy, macro-F1, balanced accuracy and the
  per-class recalls are exact from the confusion counts; macro ROC-AUC comes from the one-vs-rest
  histograms. One row adds 1 to the confusion counts and 1 to each class's pair: sensitivity
  ``sqrt(1 + classes)``.
- **regression**: sums over the held-out rows of the residual ``d = predicted - true``:
  ``count``, ``abs`` (sum of ``|d|``) and ``sq`` (sum of ``d**2``), giving RMSE and MAE; a sequence
  task adds ``last:count``, ``last:sq`` and ``last:phm`` over each group's last window
  (``rmse_last`` and the PHM 2008 score). With a ``clip`` bound ``C`` (under DP) each residual is
  clipped into ``[-C, C]`` first, so a row adds at most 1, ``C``, ``C**2`` and ``expm1(C / 10)``
  to the blocks (`block_scales`); without DP the sums are exact.

The bins and the clip bound are fixed before any row is read: ``SCORE_BINS`` without DP,
``DP_SCORE_BINS`` under DP (fewer bins, less noise in total), and histograms of different bin
counts merge at the coarser one (`rebin`: the coarse edges are a subset of the fine ones).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "SCORE_BINS",
    "DP_SCORE_BINS",
    "DEFAULT_RULE",
    "EvalHistogram",
    "build_histogram",
    "merge",
    "rebin",
    "histogram_metrics",
    "histogram_loss",
    "binary_metrics",
    "roc_auc",
    "average_precision",
    "operating_point",
    "run_operating_point",
    "parse_rule",
    "block_scales",
    "bin_index",
    "score_edges",
    "LOGIT_RANGE",
    "SCORE_SCALES",
]

# Score bins are equal in log-odds over [-LOGIT_RANGE, LOGIT_RANGE]: the first edge above 0 is
# sigmoid(-10 + 20 / bins) (5e-5 at 1280 bins); scores beyond share the end bins.
LOGIT_RANGE = 10.0
# Without DP: 1280 bins, 0.0156 wide in log-odds (0.0039 at a score of 0.5, finer than the 0.005 of the
# old equal bins, so a barely trained model's scores around 0.5 still spread over bins; 0.00015 at 0.01).
SCORE_BINS = 1280
# Under DP: every bin carries noise, so fewer bins (20, 1.0 wide in log-odds: edges 0.0067, 0.018,
# 0.047, 0.12, 0.27, 0.5, ...) keep the total noise down; 20 divides 1280, so the two merge.
DP_SCORE_BINS = 20
# "logit": the bins above (every histogram the product builds now); "linear": equal bins over
# [0, 1], as histograms were built before the logit scale (still read; built only on request).
SCORE_SCALES = ("logit", "linear")
# The operating rule when the anchor chooses none: catch at least 95 % of the defects.
DEFAULT_RULE = "recall>=0.95"
# A DP operating point is flagged unreliable when the noisy count of defects is under this many
# standard deviations of the noise in that count (the recall read from it is then mostly noise).
RELIABLE_NOISE_STDS = 3.0
_EPS = 1e-12


@dataclass(frozen=True)
class EvalHistogram:
    """A site's (or the union's) held-out predictions as counts and sums; see the module docstring.

    ``blocks`` maps each block's name to its values (float: noisy counts are not integers).
    ``bins``: score bins of a binary or multiclass histogram (0 for regression); ``clip``: a
    regression histogram's residual clip bound (None: exact sums); ``classes``: a multiclass
    task's class names, in index order. ``scale`` and ``logit_range``: how the score bins'
    edges are placed (`score_edges`). ``noise_std``: the standard deviation of the Gaussian
    noise in each count of a DP-released score histogram (0 when exact); merging and rebinning
    carry it (variances add), so the operating point can say when the noise swamps the defects.
    """

    kind: str
    blocks: dict[str, np.ndarray]
    bins: int = 0
    clip: float | None = None
    classes: tuple[str, ...] = ()
    noisy: bool = field(default=False)
    scale: str = "logit"
    logit_range: float = LOGIT_RANGE
    noise_std: float = 0.0

    @property
    def edges(self) -> np.ndarray:
        """The score bins' ``bins + 1`` edges in [0, 1] (empty for regression): bin j is ``[edges[j], edges[j+1])``."""
        if self.kind == "regression":
            return np.empty(0)
        return score_edges(self.bins, self.scale, self.logit_range)

    def to_json(self) -> str:
        """The histogram as the site sends it (JSON)."""
        return json.dumps(
            {
                "kind": self.kind,
                "bins": self.bins,
                "clip": self.clip,
                "classes": list(self.classes),
                "noisy": self.noisy,
                "scale": self.scale,
                "logit_range": self.logit_range,
                "noise_std": self.noise_std,
                "blocks": {k: [float(v) for v in a.ravel()] for k, a in self.blocks.items()},
                "shapes": {k: list(a.shape) for k, a in self.blocks.items()},
            }  # fmt: skip
        )

    @classmethod
    def from_json(cls, text: str) -> EvalHistogram:
        """Read back `to_json`'s output; raises ValueError on a histogram that does not fit its kind.

        A histogram without ``scale`` was written before the logit scale: its bins are equal over [0, 1]
        (``linear``).
        """
        raw = json.loads(text)
        shapes = raw.get("shapes", {})
        blocks = {k: np.asarray(v, dtype=np.float64).reshape(shapes.get(k, [len(v)])) for k, v in raw["blocks"].items()}
        hist = cls(
            kind=str(raw["kind"]), blocks=blocks, bins=int(raw.get("bins", 0)),
            clip=None if raw.get("clip") is None else float(raw["clip"]), classes=tuple(raw.get("classes", ())),
            noisy=bool(raw.get("noisy", False)), scale=str(raw.get("scale", "linear")),
            logit_range=float(raw.get("logit_range", LOGIT_RANGE)), noise_std=float(raw.get("noise_std", 0.0)),
        )  # fmt: skip
        hist.check()
        return hist

    def check(self) -> None:
        """Raise ValueError when the blocks do not fit the kind (names, shapes, an odd bin count)."""
        if self.kind in ("binary", "multiclass"):
            if self.bins < 2 or self.bins % 2:
                raise ValueError(f"a score histogram needs an even number of bins (0.5 is an edge), got {self.bins}")
            _check_scale(self.scale, self.logit_range)
            names = (["negatives", "positives"] if self.kind == "binary"
                     else [f"ovr:{k}:{side}" for k in range(len(self.classes)) for side in ("in", "out")])  # fmt: skip
            for name in names:
                if name not in self.blocks or self.blocks[name].shape != (self.bins,):
                    raise ValueError(f"{self.kind} histogram: block '{name}' missing or not of {self.bins} bins")
            if self.kind == "multiclass":
                k = len(self.classes)
                if self.blocks.get("confusion", np.empty(0)).shape != (k, k):
                    raise ValueError(f"multiclass histogram: the confusion counts are not {k} x {k}")
        elif self.kind == "regression":
            missing = {"count", "abs", "sq"} - set(self.blocks)
            if missing:
                raise ValueError(f"regression histogram: blocks {sorted(missing)} missing")
        else:
            raise ValueError(f"unknown task kind '{self.kind}'")

    @property
    def rows(self) -> float:
        """How many rows the histogram counts (noisy under DP)."""
        if self.kind == "binary":
            return float(self.blocks["negatives"].sum() + self.blocks["positives"].sum())
        if self.kind == "multiclass":
            return float(self.blocks["confusion"].sum())
        return float(self.blocks["count"].sum())


def _check_scale(scale: str, logit_range: float) -> None:
    if scale not in SCORE_SCALES:
        raise ValueError(f"unknown score scale '{scale}': this version reads {', '.join(map(repr, SCORE_SCALES))}")
    if scale == "logit" and not (math.isfinite(logit_range) and logit_range > 0):
        raise ValueError(f"a logit score scale needs a positive, finite logit_range, got {logit_range}")


@functools.lru_cache(maxsize=32)
def _edges(bins: int, scale: str, logit_range: float) -> np.ndarray:
    _check_scale(scale, logit_range)
    # (2 j) / bins is correctly rounded from exact integers, so a coarse edge is bit for bit the fine
    # edge it coincides with (rebin and merge stay exact).
    j = np.arange(bins + 1, dtype=np.float64)
    edges = j / bins if scale == "linear" else 1.0 / (1.0 + np.exp(-logit_range * ((2 * j) / bins - 1.0)))
    edges[0], edges[bins // 2], edges[-1] = 0.0, 0.5, 1.0
    edges.flags.writeable = False
    return edges


def score_edges(bins: int, scale: str = "logit", logit_range: float = LOGIT_RANGE) -> np.ndarray:
    """The ``bins + 1`` edges of the score bins, fixed before any row is read (read-only).

    ``logit``: ``sigmoid(x)`` for ``x`` equal steps over [-`logit_range`, `logit_range`], the end
    edges 0 and 1 (scores beyond the range share the end bins); ``linear``: ``j / bins``. ``bins``
    is even, so 0.5 is the middle edge on both scales.
    """
    if bins < 2 or bins % 2:
        raise ValueError(f"a score histogram needs an even number of bins (0.5 is an edge), got {bins}")
    return _edges(int(bins), scale, float(logit_range))


def bin_index(scores: np.ndarray, bins: int, scale: str = "logit", logit_range: float = LOGIT_RANGE) -> np.ndarray:
    """The bin ``j`` of each score in [0, 1] with ``edges[j] <= s < edges[j + 1]`` (`score_edges`; 1 in the last)."""
    inner = score_edges(bins, scale, logit_range)[1:-1]
    return np.searchsorted(inner, np.asarray(scores, dtype=np.float64), side="right").astype(np.int64)


def _counts(scores: np.ndarray, bins: int, scale: str) -> np.ndarray:
    return np.bincount(bin_index(scores, bins, scale), minlength=bins).astype(np.float64)


def block_scales(hist: EvalHistogram) -> dict[str, float]:
    """How much one row can add to each coordinate of each block (1 for counts; C, C^2, ... for clipped sums)."""
    scales = {name: 1.0 for name in hist.blocks}
    if hist.kind == "regression" and hist.clip is not None:
        c = hist.clip
        scales |= {"abs": c, "sq": c * c, "last:sq": c * c, "last:phm": math.expm1(c / 10.0)}
    return {name: scales[name] for name in hist.blocks}


def build_histogram(
    kind: str,
    y_true: np.ndarray,
    predictions: np.ndarray,
    *,
    bins: int = SCORE_BINS,
    classes: Sequence[str] = (),
    clip: float | None = None,
    last: np.ndarray | None = None,
    scale: str = "logit",
) -> EvalHistogram:
    """The exact histogram of held-out predictions (`models.training.predict`'s output) against the truth.

    Binary: defect probabilities; multiclass: (rows, classes) probabilities and class indices;
    regression: values in label units, clipped to ``clip`` when given, with `last` (a sequence
    task's last-window flags) adding the last-window blocks. `scale`: the score bins' (`score_edges`).
    """
    if kind == "binary":
        y = np.asarray(y_true, dtype=np.float64) > 0.5
        p = np.asarray(predictions, dtype=np.float64).ravel()
        blocks = {"negatives": _counts(p[~y], bins, scale), "positives": _counts(p[y], bins, scale)}
        hist = EvalHistogram(kind, blocks, bins=bins, scale=scale)
    elif kind == "multiclass":
        y = np.asarray(y_true, dtype=np.int64)
        proba = np.asarray(predictions, dtype=np.float64)
        k = proba.shape[1]
        names = tuple(classes) or tuple(str(i) for i in range(k))
        confusion = np.zeros((k, k))
        np.add.at(confusion, (y, proba.argmax(axis=1)), 1.0)
        blocks = {"confusion": confusion}
        for c in range(k):
            blocks[f"ovr:{c}:in"] = _counts(proba[y == c, c], bins, scale)
            blocks[f"ovr:{c}:out"] = _counts(proba[y != c, c], bins, scale)
        hist = EvalHistogram(kind, blocks, bins=bins, classes=names, scale=scale)
    elif kind == "regression":
        d = np.asarray(predictions, dtype=np.float64).ravel() - np.asarray(y_true, dtype=np.float64).ravel()
        if clip is not None:
            d = np.clip(d, -clip, clip)
        blocks = {"count": np.array([float(len(d))]), "abs": np.array([np.abs(d).sum()]),
                  "sq": np.array([(d**2).sum()])}  # fmt: skip
        if last is not None:
            tail = d[np.asarray(last, dtype=bool)]
            phm = np.where(tail < 0, np.expm1(-tail / 13.0), np.expm1(tail / 10.0))
            blocks |= {"last:count": np.array([float(len(tail))]), "last:sq": np.array([(tail**2).sum()]),
                       "last:phm": np.array([phm.sum()])}  # fmt: skip
        hist = EvalHistogram(kind, blocks, clip=clip)
    else:
        raise ValueError(f"unknown task kind '{kind}'")
    hist.check()
    return hist


def rebin(hist: EvalHistogram, bins: int) -> EvalHistogram:
    """The same histogram in `bins` bins (a divisor of its own): neighbouring bins summed."""
    if hist.kind == "regression" or hist.bins == bins:
        return hist
    if bins <= 0 or hist.bins % bins:
        raise ValueError(f"cannot rebin {hist.bins} bins into {bins}: not a divisor")
    factor = hist.bins // bins
    if bins % 2:
        raise ValueError(f"cannot rebin {hist.bins} bins into {bins}: an odd count loses the 0.5 edge")
    blocks = {k: (a if k == "confusion" else a.reshape(bins, factor).sum(axis=1)) for k, a in hist.blocks.items()}
    return dataclasses.replace(hist, blocks=blocks, bins=bins, noise_std=hist.noise_std * math.sqrt(factor))


def merge(histograms: Sequence[EvalHistogram]) -> EvalHistogram:
    """The union's histogram: the sites' histograms summed (at the coarsest bin count among them)."""
    if not histograms:
        raise ValueError("no histogram to merge")
    first = histograms[0]
    for h in histograms[1:]:
        if h.kind != first.kind or h.classes != first.classes or set(h.blocks) != set(first.blocks):
            raise ValueError(f"cannot merge a {h.kind} histogram of blocks {sorted(h.blocks)} with a {first.kind} "
                             f"one of blocks {sorted(first.blocks)}")  # fmt: skip
    if first.kind != "regression":
        scales = {(h.scale, h.logit_range) for h in histograms}
        if len(scales) > 1:
            raise ValueError(f"cannot merge histograms whose score bins differ: {sorted(scales)} (scale, logit_range); "
                             "a site running a version before the logit scale sends 'linear' bins")  # fmt: skip
    bins = min(h.bins for h in histograms)
    if bins and any(h.bins % bins for h in histograms):
        raise ValueError(f"cannot merge histograms of {sorted({h.bins for h in histograms})} bins")
    same = [rebin(h, bins) for h in histograms]
    blocks = {k: np.sum([h.blocks[k] for h in same], axis=0) for k in first.blocks}
    clips = {h.clip for h in histograms}
    noise = math.sqrt(sum(h.noise_std**2 for h in same))  # independent noise: variances add
    return EvalHistogram(
        first.kind, blocks, bins=bins, clip=clips.pop() if len(clips) == 1 else None, classes=first.classes,
        noisy=any(h.noisy for h in histograms), scale=first.scale, logit_range=first.logit_range, noise_std=noise,
    )  # fmt: skip


def _clean(values: np.ndarray) -> np.ndarray:
    """Per-bin counts made non-negative through their cumulative sums from the top bin (post-processing).

    The counts above each threshold are clamped at 0 and made to grow as the threshold falls
    (a running maximum); the bins are their differences. An exact histogram is left as it is.
    Clamping each noisy bin at 0 instead would add about 0.4 noise stds to every empty bin and
    pull every metric toward chance.
    """
    above = np.cumsum(np.asarray(values, dtype=np.float64)[::-1])
    above = np.maximum.accumulate(np.maximum(above, 0.0))
    return np.diff(above, prepend=0.0)[::-1]


def roc_auc(negatives: np.ndarray, positives: np.ndarray) -> float:
    """ROC-AUC of two score histograms (same bins), rows of one bin tied; NaN without both classes."""
    neg, pos = _clean(negatives), _clean(positives)
    n, p = neg.sum(), pos.sum()
    if n <= 0 or p <= 0:
        return math.nan
    below = np.concatenate([[0.0], np.cumsum(neg)[:-1]])
    return float((pos * (below + 0.5 * neg)).sum() / (n * p))


def _flagged(negatives: np.ndarray, positives: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """True and false positives when flagging bins j.. (threshold at bin j's lower edge), for every j."""
    tp = np.cumsum(_clean(positives)[::-1])[::-1]
    fp = np.cumsum(_clean(negatives)[::-1])[::-1]
    return tp, fp


def average_precision(negatives: np.ndarray, positives: np.ndarray) -> float:
    """Average precision (scikit-learn's PR-AUC) with the bins' lower edges as thresholds."""
    tp, fp = _flagged(negatives, positives)
    p = tp[0] if len(tp) else 0.0
    if p <= 0 or fp[0] <= 0:
        return math.nan
    gained = _clean(positives)  # recall gained at each bin's threshold, times p
    precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=tp + fp > _EPS)
    return float((gained * precision).sum() / p)


def _f1(tp: float, fp: float, p: float) -> float:
    return float(2 * tp / (tp + fp + p)) if tp + fp + p > _EPS else 0.0


def binary_metrics(hist: EvalHistogram) -> dict[str, float]:
    """ROC-AUC, PR-AUC and F1 at 0.5 of a binary histogram (the keys `models.metrics` gives)."""
    neg, pos = hist.blocks["negatives"], hist.blocks["positives"]
    tp, fp = _flagged(neg, pos)
    half = hist.bins // 2
    both = _clean(neg).sum() > 0 and _clean(pos).sum() > 0
    return {
        "roc_auc": roc_auc(neg, pos) if both else math.nan,
        "pr_auc": average_precision(neg, pos) if both else math.nan,
        "f1": _f1(float(tp[half]), float(fp[half]), float(tp[0])),
    }


def _multiclass_metrics(hist: EvalHistogram) -> dict[str, float]:
    confusion = np.maximum(hist.blocks["confusion"], 0.0)
    k = confusion.shape[0]
    truth, predicted, hits = confusion.sum(axis=1), confusion.sum(axis=0), np.diag(confusion)
    total = confusion.sum()
    # scikit-learn's macro averages: over the classes in the rows or predicted for them.
    labels = [c for c in range(k) if truth[c] > 0 or predicted[c] > 0]
    f1s = [2 * hits[c] / (truth[c] + predicted[c]) if truth[c] + predicted[c] > 0 else 0.0 for c in labels]
    present = [c for c in range(k) if truth[c] > 0]
    recalls = {c: hits[c] / truth[c] for c in present}
    out = {
        "macro_f1": float(np.mean(f1s)) if f1s else 0.0,
        "accuracy": float(hits.sum() / total) if total > 0 else math.nan,
        "balanced_accuracy": float(np.mean(list(recalls.values()))) if recalls else math.nan,
    }
    pairs = [(hist.blocks[f"ovr:{c}:out"], hist.blocks[f"ovr:{c}:in"]) for c in present] if len(present) > 1 else []
    aucs = [a for a in (roc_auc(out_, in_) for out_, in_ in pairs) if not math.isnan(a)]
    out["macro_roc_auc"] = float(np.mean(aucs)) if aucs else math.nan
    for c, name in enumerate(hist.classes):
        out[f"recall_{name}"] = float(recalls[c]) if c in recalls else math.nan
    return out


def _regression_metrics(hist: EvalHistogram) -> dict[str, float]:
    b = {k: float(v.sum()) for k, v in hist.blocks.items()}
    n = max(b["count"], 0.0)
    out = {
        "rmse": math.sqrt(max(b["sq"], 0.0) / n) if n >= 1 else math.nan,
        "mae": max(b["abs"], 0.0) / n if n >= 1 else math.nan,
    }
    if "last:count" in b:
        m = b["last:count"]
        out["phm08_score"] = max(b["last:phm"], 0.0) if m >= 1 else math.nan
        out["rmse_last"] = math.sqrt(max(b["last:sq"], 0.0) / m) if m >= 1 else math.nan
    return out


def histogram_metrics(hist: EvalHistogram) -> dict[str, float]:
    """The task's metrics (the keys `models.training.task_metrics` gives) read from a histogram."""
    if hist.kind == "binary":
        return binary_metrics(hist)
    if hist.kind == "multiclass":
        return _multiclass_metrics(hist)
    return _regression_metrics(hist)


def _centres(hist: EvalHistogram) -> np.ndarray:
    """Each score bin's centre: on its scale (the log-odds midpoint on the logit scale)."""
    if hist.scale == "linear":
        return (np.arange(hist.bins) + 0.5) / hist.bins
    u = (2 * np.arange(hist.bins, dtype=np.float64) + 1.0) / hist.bins - 1.0
    return 1.0 / (1.0 + np.exp(-hist.logit_range * u))


def histogram_loss(hist: EvalHistogram) -> float:
    """An unweighted loss read from the histogram: log loss at the bin centres, or the mean squared residual.

    Not the class-weighted training loss: a site under DP reveals no per-row loss.
    """
    if hist.kind == "regression":
        n = float(hist.blocks["count"].sum())
        return max(float(hist.blocks["sq"].sum()), 0.0) / n if n >= 1 else math.nan
    c = np.clip(_centres(hist), 1e-6, 1 - 1e-6)
    if hist.kind == "binary":
        neg, pos = _clean(hist.blocks["negatives"]), _clean(hist.blocks["positives"])
        total = neg.sum() + pos.sum()
        return float(-(pos @ np.log(c) + neg @ np.log(1 - c)) / total) if total > 0 else math.nan
    own = [_clean(hist.blocks[f"ovr:{k}:in"]) for k in range(len(hist.classes))]
    total = float(sum(h.sum() for h in own))
    return float(-sum(h @ np.log(c) for h in own) / total) if total > 0 else math.nan


def parse_rule(rule: str) -> tuple[str, float | None]:
    """``"recall>=R"`` (R in (0, 1]) or ``"f1"`` (best F1) as (name, R); ValueError naming the rule otherwise."""
    text = rule.strip().lower().replace(" ", "")
    if text in ("f1", "best-f1", "bestf1"):
        return "f1", None
    if text.startswith("recall>="):
        try:
            target = float(text.removeprefix("recall>="))
        except ValueError:
            target = math.nan
        if 0 < target <= 1:
            return "recall", target
    raise ValueError(f"unknown operating rule '{rule}': use 'recall>=R' with R in (0, 1] (e.g. recall>=0.95) or 'f1'")


def normal_class(classes: Sequence[str]) -> int:
    """The index of a multiclass task's "no defect" class: the one named ``none`` (`models.tasks.NO_FLAG_CLASS`),
    else the first class. Every other class is a defect the line must catch."""
    from models.tasks import NO_FLAG_CLASS

    return list(classes).index(NO_FLAG_CLASS) if NO_FLAG_CLASS in classes else 0


def defect_histogram(hist: EvalHistogram) -> EvalHistogram | None:
    """A multiclass histogram as the binary one of "any defect": score 1 - P(normal class), by bin.

    Built from the normal class's one-vs-rest histograms (their bins reversed: both scales' edges
    are symmetric about 0.5, so a row's bin is that of its defect score, but closed at its top
    edge rather than its bottom one). None if `hist` is not multiclass.
    """
    if hist.kind != "multiclass":
        return None
    c = normal_class(hist.classes)
    normal, defects = hist.blocks[f"ovr:{c}:in"][::-1].copy(), hist.blocks[f"ovr:{c}:out"][::-1].copy()
    return EvalHistogram("binary", {"negatives": normal, "positives": defects}, bins=hist.bins, noisy=hist.noisy,
                         scale=hist.scale, logit_range=hist.logit_range, noise_std=hist.noise_std)  # fmt: skip


def operating_point(hist: EvalHistogram, rule: str = DEFAULT_RULE) -> dict[str, Any] | None:
    """The decision threshold a binary histogram supports under `rule`, with what it catches and costs.

    Thresholds are the bins' lower edges (`score_edges`; flag a part when its score is at least
    the threshold), and ``bin_width`` is the width of the threshold's bin: the pooled scores'
    threshold lies in ``[threshold, threshold + bin_width)``.
    ``recall>=R``: the highest threshold that still catches R of the defects (the least hand
    inspection); ``f1``: the threshold of the best F1 (the highest among ties). Returns the
    threshold, its recall, precision, F1 and ``workload``: the share of parts flagged, to be
    inspected by hand. None for a histogram without both classes (or a regression one).

    A noisy (DP) histogram adds ``defects_noise_std``: the noise's standard deviation in the
    count of defects (``noise_std * sqrt(bins)``). ``reliable`` is false when the noisy defect
    count is under `RELIABLE_NOISE_STDS` of it: the recall and workload read there are then
    mostly noise, and ``warning`` says so in words for the card, the table and `client predict`.

    A multiclass histogram is read as "any defect" (`defect_histogram`): the score is
    1 - P(normal class), and the point adds ``score`` (what the threshold applies to) and the
    ``normal_class``'s name.
    """
    if hist.kind == "multiclass":
        binary = defect_histogram(hist)
        defect = operating_point(binary, rule) if binary is not None else None
        if defect is None:
            return None
        normal = hist.classes[normal_class(hist.classes)]
        return {**defect, "score": f"1 - P({normal})", "normal_class": normal}
    if hist.kind != "binary":
        return None
    name, target = parse_rule(rule)
    tp, fp = _flagged(hist.blocks["negatives"], hist.blocks["positives"])
    p, total = float(tp[0]), float(tp[0] + fp[0])
    if p <= 0 or fp[0] <= 0:
        return None
    recall = tp / p
    f1 = 2 * tp / (tp + fp + p)
    if name == "recall":
        assert target is not None
        meets = np.flatnonzero(recall >= target - 1e-12)
        j = int(meets[-1]) if len(meets) else 0
    else:
        j = int(np.flatnonzero(f1 >= f1.max() - 1e-12)[-1])
    flagged = float(tp[j] + fp[j])
    edges = hist.edges
    point: dict[str, Any] = {
        "rule": rule, "threshold": float(edges[j]), "bin_width": float(edges[j + 1] - edges[j]),
        "recall": float(recall[j]),
        "precision": float(tp[j] / flagged) if flagged > 0 else math.nan, "f1": float(f1[j]),
        "workload": flagged / total, "noisy": hist.noisy, "reliable": True,
    }  # fmt: skip
    if hist.noise_std > 0:
        spread = hist.noise_std * math.sqrt(hist.bins)
        point["defects_noise_std"] = spread
        if p < RELIABLE_NOISE_STDS * spread:
            point["reliable"] = False
            point["warning"] = (
                f"the noisy (DP) held-out histograms count {p:.0f} +- {spread:.0f} defects: too few against the "
                "noise for this threshold's recall and workload to be trusted; check it on rows the line may "
                "inspect, or evaluate less often so each evaluation gets more of the budget"
            )
    return point


def run_operating_point(rounds: Sequence[Mapping[str, Any]], rule: str | None = None) -> dict[str, Any] | None:
    """The operating point of a run's last evaluated round, from the merged histogram its record keeps.

    `rounds`: the run manifest's round records (``eval_histogram``: the sites' merged held-out
    histogram). Adds the ``round``, the histogram's ``held_out_rows`` and ``bins`` and its
    ``source`` to `operating_point`'s figures. None for a regression task, or a run whose sites
    sent no histogram. (A multiclass task's point is that of "any defect", `defect_histogram`.)
    """
    last = next((r for r in sorted(rounds, key=lambda r: -int(r["round"])) if r.get("eval_histogram")), None)
    if last is None:
        return None
    hist = EvalHistogram.from_json(json.dumps(last["eval_histogram"]))
    point = operating_point(hist, rule or DEFAULT_RULE)
    if point is None:
        return None
    return {**point, "round": int(last["round"]), "held_out_rows": round(hist.rows), "bins": hist.bins,
            "scale": hist.scale, "source": "the sites' merged held-out histograms"}  # fmt: skip
