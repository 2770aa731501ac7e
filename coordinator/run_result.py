"""What one federated run hands back when it ends: `RunResult`.

`coordinator.server_app.run_federation` returns it (and passes it to an ``on_result`` callback,
also when the run fails after it started recording). Inside one process this object is how a
run's outcome travels: the simulation scores the final weights it holds, and the deployment
ServerApp writes results.json from it. The files a run leaves (``manifest.json``, checkpoints,
the signed privacy report) stay the record for resuming and auditing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from models.scaler import FederatedScaler
from models.tasks import TaskSpec

__all__ = ["RunResult", "SiteRows"]


@dataclass(frozen=True)
class SiteRows:
    """A site that joined the run: its Flower node and the rows it reported (training, held-out).

    An image task's site also reports its images (`coordinator.server_app.image_report`): how
    many, the bad ones skipped (count, first ten paths) and those whose channels were converted.
    """

    node_id: int
    n_train: int | None  # None: a site not asked for its profile that has not trained yet (profile_sample)
    n_test: int | None  # ... and has not evaluated yet
    images: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class RunResult:
    """The outcome of one run of the ServerApp.

    Attributes:
        run_id: the run's id, as in its manifest and privacy report.
        status: ``"completed"`` or ``"failed"``.
        error: why a failed run stopped (None when completed).
        task: the task the run trained.
        sites: the sites that supplied usable data, by name.
        excluded_sites: sites left out, their problem by Flower node id (as text).
        scaler: the federated scaler the weights are fitted to.
        weights: the global weights after the last round that aggregated an update (None if
            no round did).
        rounds: the manifest's per-round records (sites trained, failures, metrics, DP), by round.
        initial_metrics: the initial model's centralised score (empty without an ``evaluate_fn``).
        privacy_report: the signed privacy report's content (None for a run without DP).
        privacy_report_path: its path relative to the run directory (None without DP).
        config: the run's configuration (`FederationConfig.to_dict`).
        contribution: each site's contribution scores (results.json's ``"contribution"``, see
            `coordinator.contribution`), or None for a run that recorded none.
        membership: each site's membership-inference figures on the final model, by site
            (`privacy.membership.MembershipResult.to_dict`); empty when the check did not run.

    Example::

        result = run_federation(grid, context, config)
        if result.status == "completed" and result.weights is not None:
            model = config.new_model(result.scaler.n_inputs, outputs=result.scaler.n_outputs)
            set_weights(model, result.weights)
    """

    run_id: str
    status: Literal["completed", "failed"]
    error: str | None
    task: TaskSpec
    sites: Mapping[str, SiteRows]
    excluded_sites: Mapping[str, str]
    scaler: FederatedScaler
    weights: Sequence[np.ndarray] | None
    rounds: Sequence[Mapping[str, Any]]
    initial_metrics: Mapping[str, float]
    privacy_report: Mapping[str, Any] | None
    privacy_report_path: str | None
    config: Mapping[str, Any]
    contribution: Mapping[str, Any] | None = None
    membership: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @property
    def aggregated_rounds(self) -> list[Mapping[str, Any]]:
        """The rounds that aggregated an update (those with a checkpoint), in order."""
        return sorted((r for r in self.rounds if r.get("checkpoint")), key=lambda r: r["round"])
