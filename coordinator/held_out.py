"""A simulation's centralised evaluation: the global model scored on held-out rows the coordinator holds.

The rows are prepared with the run's own federated scaler, the one the ServerApp combined
from the sites' profiles (`bind`), not with one the coordinator fits to the rows it happens
to read: a simulation of 10,000 sites reads only a sample of their files, and a resumed run's
scaler came from its first start.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from coordinator.config import FederationConfig
from coordinator.errors import FederationError
from models.nets import set_weights
from models.scaler import FederatedScaler
from models.tasks import TaskSpec
from models.training import evaluate_model, last_windows, prepare

__all__ = ["HeldOutEvaluation"]


class HeldOutEvaluation:
    """``evaluate_fn(round, weights) -> (loss, metrics)`` on `frame`, once bound to the run's scaler.

    `run_federation` calls `bind` as soon as it has the scaler (before the initial model is
    scored). `scored` keeps the metrics of the last weights it scored, so the caller need not
    score the final model again.
    """

    def __init__(self, spec: TaskSpec, config: FederationConfig, frame: pd.DataFrame):
        self.spec = spec
        self.config = config
        self.frame = frame
        self.scaler: FederatedScaler | None = None
        self._prepared: tuple[np.ndarray, np.ndarray, np.ndarray | None] | None = None
        self._last: tuple[list[np.ndarray], dict[str, float]] | None = None

    def bind(self, scaler: FederatedScaler) -> None:
        """Prepare the held-out rows with `scaler`, the run's federated scaler."""
        x, y = prepare(self.frame, self.spec, scaler)
        self.scaler, self._prepared = scaler, (x, y, last_windows(self.frame, self.spec))

    def __call__(self, server_round: int, weights: list[np.ndarray]) -> tuple[float, dict[str, float]]:
        """The model with `weights` on the held-out rows: (loss, metrics)."""
        if self.scaler is None or self._prepared is None:
            raise FederationError("the held-out evaluation was called before the run's scaler was bound to it")
        x, y, last = self._prepared
        model: Any = self.config.new_model(self.scaler.n_inputs, outputs=self.scaler.n_outputs)
        set_weights(model, weights)
        loss, metrics = evaluate_model(model, x, y, spec=self.spec, scaler=self.scaler, last=last)
        self._last = ([np.array(w, copy=True) for w in weights], metrics)
        return loss, metrics

    def scored(self, weights: list[np.ndarray], scaler: FederatedScaler) -> dict[str, float] | None:
        """The metrics this evaluation gave exactly these `weights` under `scaler`, or None if it did not score them."""
        if self._last is None or self.scaler is None or self.scaler.to_json() != scaler.to_json():
            return None
        kept, metrics = self._last
        same = len(kept) == len(weights) and all(
            a.shape == np.shape(b) and np.array_equal(a, b) for a, b in zip(kept, weights, strict=True)
        )
        return dict(metrics) if same else None
