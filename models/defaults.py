"""The defaults of local training and of the model, in one place.

The coordinator's `FederationConfig` starts from them, a site falls back on them when an
instruction leaves a setting out, and the networks are built with them. (Under DP-SGD the
coordinator starts from other values: `coordinator.config.DP_TRAINING_DEFAULTS`.)
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TrainingDefaults", "TRAINING_DEFAULTS"]


@dataclass(frozen=True)
class TrainingDefaults:
    """Local training and model settings a run takes when nobody chooses them."""

    model: str = "mlp"  # architecture, see models.architectures
    hidden: tuple[int, ...] = (64, 32)  # hidden layer widths
    local_epochs: int = 2  # per round, at each site
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    class_weight: str = "balanced"  # see models.training.CLASS_WEIGHTS
    dp_max_grad_norm: float = 1.0  # DP-SGD's per-sample clipping norm


TRAINING_DEFAULTS = TrainingDefaults()
