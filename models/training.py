"""Local training and evaluation in plain PyTorch (no Flower), shared by every role."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from scipy.special import expit, softmax
from torch import nn

from models.defaults import TRAINING_DEFAULTS
from models.images import ImageAugment
from models.metrics import compute_metrics
from models.rul import rul_metrics
from models.scaler import FederatedScaler
from models.sequence import WindowPlan, plan_windows, windows
from models.tasks import TaskSpec

__all__ = [
    "TrainConfig",
    "prepare",
    "train_local",
    "predict",
    "evaluate_model",
    "loss_fn",
    "targets_of",
    "task_metrics",
    "last_windows",
    "FramePredictions",
    "predict_frame",
    "CLASS_WEIGHTS",
    "WeightedCrossEntropy",
    "augment_images",
    "augmentation_of",
]


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one stretch of local training."""

    epochs: int = TRAINING_DEFAULTS.local_epochs
    batch_size: int = TRAINING_DEFAULTS.batch_size
    lr: float = TRAINING_DEFAULTS.lr
    weight_decay: float = TRAINING_DEFAULTS.weight_decay
    proximal_mu: float = 0.0  # FedProx: pull towards the round's global weights (0: plain local training)
    seed: int = 0
    class_weight: str = TRAINING_DEFAULTS.class_weight  # see CLASS_WEIGHTS


def prepare(frame: pd.DataFrame, spec: TaskSpec, scaler: FederatedScaler) -> tuple[np.ndarray, np.ndarray]:
    """Model inputs and raw targets of a validated frame (of one site: windows never cross sites).

    Multiclass targets are class indices. A sequence task's inputs are windows, shape
    (windows, window, inputs), labelled by their last row (`models.sequence.windows`).
    """
    if spec.sequence is not None:
        x, y, _ = windows(frame, spec, scaler)
        return x, (scaler.class_index(y) if spec.kind == "multiclass" else y)
    if spec.kind == "multiclass":
        return scaler.transform(frame), scaler.class_index(frame[spec.label].to_numpy())
    return scaler.transform(frame), frame[spec.label].to_numpy(dtype=np.float32)


CLASS_WEIGHTS = {
    # Weight of a positive (defect) relative to a negative, from the federation's label counts;
    # for multiclass tasks applied to each class's balanced weight (`FederatedScaler.class_weights`).
    "balanced": lambda ratio: ratio,  # negatives per positive: both classes weigh the same in total
    "sqrt": math.sqrt,  # milder
    "none": lambda ratio: 1.0,
}


class WeightedCrossEntropy(nn.Module):
    """Cross-entropy with a weight per class, reduced as the plain mean (or sum) of per-row losses.

    PyTorch's weighted `nn.CrossEntropyLoss` divides by the batch's summed weights instead, which
    ties each row's gradient to the other rows of its batch; DP-SGD's per-sample clipping needs
    each row's loss to be its own (as BCE's ``pos_weight`` is). Opacus' ghost clipping sets
    ``reduction = "none"`` to read the per-row losses.
    """

    weight: torch.Tensor

    def __init__(self, weight: torch.Tensor, reduction: str = "mean"):
        super().__init__()
        self.register_buffer("weight", weight)
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The weighted loss of (rows, classes) logits against class indices."""
        per_row = nn.functional.cross_entropy(logits, target, weight=self.weight, reduction="none")
        if self.reduction == "mean":
            return per_row.mean()
        if self.reduction == "sum":
            return per_row.sum()
        return per_row


def loss_fn(spec: TaskSpec, scaler: FederatedScaler, class_weight: str = "balanced") -> nn.Module:
    """Class-weighted BCE for rare defects or cross-entropy for multiclass; MSE on the scaled regression target."""
    if spec.kind in ("binary", "multiclass"):
        if class_weight not in CLASS_WEIGHTS:
            raise ValueError(f"unknown class weighting '{class_weight}' (choose from {sorted(CLASS_WEIGHTS)})")
        if spec.kind == "multiclass":
            weights = [CLASS_WEIGHTS[class_weight](float(w)) for w in scaler.class_weights()]
            return WeightedCrossEntropy(torch.tensor(weights, dtype=torch.float32))
        weight = CLASS_WEIGHTS[class_weight](scaler.pos_weight)
        return nn.BCEWithLogitsLoss(pos_weight=torch.tensor(weight, dtype=torch.float32))
    return nn.MSELoss()


def targets_of(y: np.ndarray, spec: TaskSpec, scaler: FederatedScaler) -> torch.Tensor:
    """The training targets as a tensor; regression labels standardised with the scaler's label moments."""
    if spec.kind == "multiclass":
        return torch.as_tensor(y, dtype=torch.int64)
    if spec.kind == "regression":
        y = (y - scaler.label_mean) / scaler.label_std
    return torch.as_tensor(y, dtype=torch.float32)


def augment_images(batch: torch.Tensor, augment: ImageAugment, generator: torch.Generator) -> torch.Tensor:
    """A randomly flipped and shifted copy of a batch of normalised images (N, C, H, W); shifts pad 0, the mean."""
    out = batch
    if augment.flip:
        flip = torch.rand(len(batch), generator=generator) < 0.5
        out = torch.where(flip[:, None, None, None], out.flip(-1), out)
    if augment.shift > 0:
        s = augment.shift
        height, width = out.shape[-2:]
        padded = nn.functional.pad(out, (s, s, s, s))
        offsets = torch.randint(0, 2 * s + 1, (len(batch), 2), generator=generator).tolist()
        out = torch.stack([padded[i, :, dy : dy + height, dx : dx + width] for i, (dy, dx) in enumerate(offsets)])
    return out


def augmentation_of(spec: TaskSpec) -> ImageAugment | None:
    """The on-site training augmentation an image task declares, or None."""
    if spec.image is None or not spec.image.augment.active:
        return None
    return spec.image.augment


def train_local(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    spec: TaskSpec,
    scaler: FederatedScaler,
    config: TrainConfig,
) -> float:
    """Train in place for `config.epochs` epochs; return the mean training loss of the last epoch."""
    if len(x) == 0:
        raise ValueError("no training rows")
    generator = torch.Generator().manual_seed(config.seed)
    inputs = torch.as_tensor(x, dtype=torch.float32)
    targets = targets_of(y, spec, scaler)
    criterion = loss_fn(spec, scaler, config.class_weight)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    anchor: Sequence[torch.Tensor] = []
    if config.proximal_mu > 0:
        anchor = [p.detach().clone() for p in model.parameters()]
    augment = augmentation_of(spec)
    model.train()
    last = 0.0
    for _ in range(config.epochs):
        order = torch.randperm(len(inputs), generator=generator)
        total, seen = 0.0, 0
        for start in range(0, len(order), config.batch_size):
            idx = order[start : start + config.batch_size]
            optimiser.zero_grad()
            batch = inputs[idx] if augment is None else augment_images(inputs[idx], augment, generator)
            loss = criterion(model(batch), targets[idx])
            if anchor:
                prox = sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor, strict=True))
                loss = loss + 0.5 * config.proximal_mu * prox
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
        last = total / seen
    return last


@torch.no_grad()
def predict(model: nn.Module, x: np.ndarray, *, spec: TaskSpec, scaler: FederatedScaler) -> np.ndarray:
    """Defect/failure probabilities (binary), (rows, classes) probabilities (multiclass), label units (regression)."""
    model.eval()
    out = model(torch.as_tensor(x, dtype=torch.float32)).numpy().astype(np.float64)
    if spec.kind == "multiclass":
        return softmax(out, axis=1)
    if spec.kind == "binary":
        return expit(out)
    return out * scaler.label_std + scaler.label_mean


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    spec: TaskSpec,
    scaler: FederatedScaler,
    last: np.ndarray | None = None,
) -> tuple[float, dict[str, float]]:
    """(loss, metrics) on held-out rows; with `last` (the windows at each group's last row, see
    `last_windows`) a sequence regression task also gets the remaining-useful-life metrics."""
    model.eval()
    logits = model(torch.as_tensor(x, dtype=torch.float32))
    loss = float(loss_fn(spec, scaler)(logits, targets_of(y, spec, scaler)))
    predictions = predict(model, x, spec=spec, scaler=scaler)
    return loss, task_metrics(spec, y, predictions, last, classes=scaler.classes)


def task_metrics(
    spec: TaskSpec,
    y: np.ndarray,
    predictions: np.ndarray,
    last: np.ndarray | None = None,
    *,
    classes: tuple[str, ...] = (),
) -> dict[str, float]:
    """The metrics of `spec` (`TaskSpec.metrics`) of these predictions (`classes`: a multiclass task's)."""
    metrics = compute_metrics(spec.kind, y, predictions, classes=classes)
    if last is not None and spec.sequence is not None and spec.kind == "regression":
        metrics.update(rul_metrics(y, predictions, last))
    return metrics


def last_windows(frame: pd.DataFrame, spec: TaskSpec) -> np.ndarray | None:
    """For a sequence task, which of `prepare`'s windows end at their group's last row; else None."""
    if spec.sequence is None:
        return None
    return plan_windows(frame[spec.sequence.group].to_numpy(), frame[spec.sequence.order].to_numpy(),
                        spec.sequence).last  # fmt: skip


@dataclass(frozen=True)
class FramePredictions:
    """What a model predicts for a validated frame, and for which of its rows.

    A row task predicts every row: `rows` is ``0 .. len(frame) - 1``. A sequence task predicts
    each window: `rows` holds the frame position of each window's last row, grouped by the
    sequence's group (sorted) and in order within it, and `last` flags the window at its
    group's last row; `plan` tells what was left without a window (``short = "drop"``).
    """

    rows: np.ndarray
    predictions: np.ndarray  # `predict`'s output, one entry (multiclass: one row of probabilities) per row of `rows`
    last: np.ndarray | None = None
    plan: WindowPlan | None = None

    def latest(self) -> FramePredictions:
        """Only each group's latest window (a sequence task's one prediction per group); a row task unchanged."""
        if self.last is None:
            return self
        return FramePredictions(self.rows[self.last], self.predictions[self.last], self.last[self.last], self.plan)


def predict_frame(
    model: nn.Module, frame: pd.DataFrame, *, spec: TaskSpec, scaler: FederatedScaler, batch_size: int = 4096
) -> FramePredictions:
    """`predict` on a validated frame: per row, or for a sequence task per window (`models.sequence`).

    The frame needs the label column (any placeholder value will do: it is not read here); the
    predictions do not depend on the order of the frame's rows.
    """
    if spec.sequence is None:
        x, rows, last, plan = scaler.transform(frame), np.arange(len(frame)), None, None
    else:
        x, _, last = windows(frame, spec, scaler)
        plan = plan_windows(frame[spec.sequence.group].to_numpy(), frame[spec.sequence.order].to_numpy(), spec.sequence)
        rows = plan.ends
    if len(x) == 0:
        shape = (0, scaler.n_outputs) if spec.kind == "multiclass" else (0,)
        return FramePredictions(rows, np.zeros(shape), last, plan)
    parts = [predict(model, x[i : i + batch_size], spec=spec, scaler=scaler) for i in range(0, len(x), batch_size)]
    return FramePredictions(rows, np.concatenate(parts), last, plan)
