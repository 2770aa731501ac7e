"""The coordinator's one typed settings object for a federated training run."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coordinator.aggregation import AGGREGATIONS
from coordinator.contribution import DEFAULT_BUDGET, DEFAULT_TRUNCATION
from models.architectures import CNN_WIDTHS, IMAGE_ARCHITECTURES, SEQUENCE_ARCHITECTURES, check_architecture
from models.defaults import TRAINING_DEFAULTS
from models.histogram import DEFAULT_RULE, parse_rule
from models.tasks import TaskSpec, builtin_tasks, get_task
from sangsaeng.paths import DEFAULT_KEY_DIR

__all__ = [
    "FederationConfig",
    "PROFILE_SITES",
    "STRATEGIES",
    "ROBUST_STRATEGIES",
    "DP_TRAINING_DEFAULTS",
    "parse_hidden",
]

STRATEGIES: tuple[str, ...] = tuple(AGGREGATIONS)
PROFILE_SITES = 500
"""Sites profiled before round 1 by default: above it a seeded sample (`coordinator.server_app.profile_sample`).

Each profile is a message to a site and its reply, one after another on a simulation's few workers
(13 ms of CPU a reply, 10,000 replies before round 1 at 10,000 sites). A mean over 500 sites' rows has
a standard error under 5 % of the spread of the sites' own means, whatever the federation's size."""
# Aggregations robust to a few poisoned updates (Yin et al. 2018): not a mean, so neither the
# supplier-level DP noise (calibrated to a mean) nor secure aggregation (which only sums) fits.
ROBUST_STRATEGIES: tuple[str, ...] = tuple(name for name, kind in AGGREGATIONS.items() if kind.robust)
# Local training that suits DP-SGD (measured by bench/privacy.py and docs/privacy.md):
# - an additive model on a piecewise-linear encoding of each input ("ple" with no hidden
#   layer): convex, ~140 weights on AI4I, and the failure physics are thresholds on single
#   inputs. At epsilon 3 it beat every MLP tried (best: one hidden layer of 16, clip 50) by
#   0.03-0.04 ROC-AUC on AI4I and matched it on KAMP;
# - Poisson batches of 512: more signal per unit of noise than 64-256, while 2048-4096 left
#   too few steps;
# - clipping at 10 still leaves the class weighting of rare defects effective (at a clip of 1
#   every example is clipped to the same length and the weighting vanishes);
# - 4 epochs at lr 0.05 (2 epochs under-trained, 0.1-0.2 were too noisy).
DP_TRAINING_DEFAULTS: dict[str, Any] = {
    "model": "ple",
    "hidden": (),
    "batch_size": 512,
    "lr": 0.05,
    "local_epochs": 4,
    "dp_max_grad_norm": 10.0,
    # Every evaluation is a noisy release charged to the sites' ledgers: under DP, the last round only.
    "evaluate_every": 0,
}


def parse_hidden(text: str | None) -> tuple[int, ...] | None:
    """Hidden layer widths from text ("64,32"; "none" for no hidden layer); None keeps the default."""
    if text is None:
        return None
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        widths = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"hidden layers must be widths like 64,32 or 'none', got '{text}'") from None
    if any(w < 1 for w in widths):
        raise ValueError(f"hidden layer widths must be positive, got '{text}'")
    return widths


@dataclass(frozen=True)
class FederationConfig:
    """How a run trains: task, rounds, site sampling, aggregation and local training.

    In deployment the values come from the Flower run config (kebab-case keys, see
    ``[tool.flwr.app.config]`` in ``pyproject.toml``); `from_run_config` reads them.
    """

    task: TaskSpec
    num_rounds: int = 10
    strategy: str = "fedavg"
    fraction_fit: float = 1.0
    fraction_evaluate: float = 1.0
    min_sites: int = 2
    local_epochs: int = TRAINING_DEFAULTS.local_epochs
    batch_size: int = TRAINING_DEFAULTS.batch_size
    lr: float = TRAINING_DEFAULTS.lr
    weight_decay: float = TRAINING_DEFAULTS.weight_decay
    proximal_mu: float = 0.01  # FedProx only
    trim_fraction: float = 0.2  # FedTrimmedAvg only: the share cut from each end, per coordinate
    server_lr: float = 0.01  # FedAdam only (eta)
    # Krum, Multi-Krum and Bulyan: the poisoned sites they are built to withstand (f), and how
    # many updates Multi-Krum averages (m; 0: each round's updates less f).
    byzantine_sites: int = 1
    multikrum_keep: int = 0
    seed: int = 0
    model: str = TRAINING_DEFAULTS.model  # architecture, see models.architectures
    hidden: tuple[int, ...] = TRAINING_DEFAULTS.hidden
    class_weight: str = TRAINING_DEFAULTS.class_weight  # see models.training.CLASS_WEIGHTS
    out_dir: Path = Path("sangsaeng-run")
    resume: bool = False
    node_wait_timeout: float = 120.0
    # Sites asked for their data profile before round 1: a seeded sample of this many (0: every site).
    # The scaler from a few hundred profiles is as good as from all of them; the other sites' row counts
    # come from their first replies. Under secagg every site is asked (SecAgg+ needs the largest site).
    profile_sites: int = PROFILE_SITES
    # Deployment: seconds a round's training (and evaluation) waits for replies; a site that has not
    # replied by then is left out of that round ("sites_lost"), the round goes on if min_sites replied.
    round_timeout: float | None = None
    # Record-level DP-SGD at every site: the per-site epsilon the whole run may spend.
    dp_epsilon: float | None = None
    dp_max_grad_norm: float = TRAINING_DEFAULTS.dp_max_grad_norm
    # Supplier-level DP at the coordinator (clip each site's update, add Gaussian noise).
    central_dp_noise: float | None = None
    central_dp_clip: float = 1.0  # the clipping norm; with adaptive clipping, its first value
    central_dp_delta: float = 1e-3
    # Adaptive clipping (Andrew et al. 2021): the norm follows this quantile of the update norms.
    central_dp_adaptive: bool = False
    central_dp_quantile: float = 0.5
    central_dp_clip_lr: float = 0.2
    central_dp_count_stddev: float | None = None  # None: max(sites / 20, central_dp_noise)
    # Secure aggregation (Flower's SecAgg+): the coordinator sees only the sum of the updates.
    secagg: bool = False
    secagg_shares: int = 3
    secagg_threshold: int = 2
    secagg_clip: float = 8.0  # every parameter must lie in [-clip, clip] to be summed exactly
    key_dir: Path = DEFAULT_KEY_DIR
    # Contribution scores (coordinator.contribution): coalition models evaluated per round
    # (0: data shares only) and the GTG-Shapley truncation threshold, in metric units.
    contribution_coalitions: int = DEFAULT_BUDGET
    contribution_truncation: float = DEFAULT_TRUNCATION
    # The sites evaluate every k-th round and the last (0: the last only); see privacy.evaluation.
    evaluate_every: int = 1
    # How the operating threshold is chosen from the merged held-out histograms (models.histogram).
    operating_rule: str = DEFAULT_RULE
    # After the last round each site attacks the final model with its own training rows against
    # its held-out rows and reports the attack's ROC-AUC (privacy.membership, docs/privacy.md).
    membership_check: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_architecture(self.model)
        if self.task.image is not None and self.model not in IMAGE_ARCHITECTURES:
            # An image task's inputs are images, which only an image model reads; the tabular
            # default widths (or DP-SGD's additive model's none) mean nothing to it: its own widths.
            object.__setattr__(self, "model", IMAGE_ARCHITECTURES[0])
            if self.hidden in (TRAINING_DEFAULTS.hidden, ()):
                object.__setattr__(self, "hidden", CNN_WIDTHS)
        elif self.task.image is None and self.model in IMAGE_ARCHITECTURES:
            raise ValueError(f"model '{self.model}' reads images; task '{self.task.name}' declares no [task.image]")
        if self.task.sequence is not None and self.model not in SEQUENCE_ARCHITECTURES:
            # A sequence task's inputs are windows of rows, which only a sequence model reads.
            object.__setattr__(self, "model", SEQUENCE_ARCHITECTURES[0])
        elif self.task.sequence is None and self.model in SEQUENCE_ARCHITECTURES:
            raise ValueError(f"model '{self.model}' reads windows of rows; task '{self.task.name}' declares no "
                             "[task.sequence]")  # fmt: skip
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy '{self.strategy}' (choose from {list(STRATEGIES)})")
        if self.num_rounds < 1:
            raise ValueError("num_rounds must be at least 1")
        if not 0 < self.fraction_fit <= 1 or not 0 <= self.fraction_evaluate <= 1:
            raise ValueError("fractions of sites per round must lie in (0, 1]")
        if self.min_sites < 1:
            raise ValueError("min_sites must be at least 1")
        if self.round_timeout is not None and self.round_timeout <= 0:
            raise ValueError("round_timeout must be positive (seconds), or None to wait for every reply")
        if self.dp_epsilon is not None and self.dp_epsilon <= 0:
            raise ValueError("dp_epsilon must be positive")
        if self.central_dp_noise is not None and self.central_dp_noise <= 0:
            raise ValueError("central_dp_noise must be positive")
        if self.central_dp_clip <= 0:
            raise ValueError("central_dp_clip must be positive")
        if self.central_dp_adaptive:
            if self.central_dp_noise is None:
                raise ValueError("adaptive clipping is part of supplier-level DP: set central_dp_noise too")
            if not 0 < self.central_dp_quantile < 1:
                raise ValueError("central_dp_quantile must lie strictly between 0 and 1")
            if self.central_dp_clip_lr <= 0:
                raise ValueError("central_dp_clip_lr must be positive")
            if self.central_dp_count_stddev is not None and self.central_dp_count_stddev <= self.central_dp_noise / 2:
                raise ValueError(
                    f"central_dp_count_stddev must exceed central_dp_noise / 2 = {self.central_dp_noise / 2:g}: "
                    "the count noise and the update noise together make up central_dp_noise"
                )
        if self.evaluate_every < 0:
            raise ValueError("evaluate_every must be 0 (the last round only) or a positive number of rounds")
        parse_rule(self.operating_rule)
        if not 0 <= self.trim_fraction < 0.5:
            raise ValueError("trim_fraction must lie in [0, 0.5): the share of updates cut from each end")
        if self.byzantine_sites < 0:
            raise ValueError("byzantine_sites must be 0 or more: the poisoned sites krum, multikrum and bulyan assume")
        if self.multikrum_keep < 0:
            raise ValueError("multikrum_keep must be 0 (each round's updates less byzantine_sites) or more")
        if self.strategy in ROBUST_STRATEGIES and self.central_dp_noise is not None:
            raise ValueError(
                f"supplier-level DP noise is calibrated to a mean of the updates; '{self.strategy}' is not a mean: "
                "use fedavg with central DP, or per-site DP-SGD (dp_epsilon) with a robust aggregation"
            )
        if self.strategy in ROBUST_STRATEGIES and self.secagg:
            raise ValueError(
                f"secure aggregation only reveals the sum of the updates; '{self.strategy}' needs each update"
            )
        if self.secagg and self.central_dp_noise is not None:
            raise ValueError(
                "secure aggregation hides each site's update, so the coordinator cannot clip it: "
                "use per-site DP-SGD (dp_epsilon) with secagg, not central DP"
            )
        if self.secagg and not 2 <= self.secagg_threshold <= self.secagg_shares:
            raise ValueError("secagg needs 2 <= secagg_threshold <= secagg_shares")
        if self.profile_sites < 0:
            raise ValueError("profile_sites must be 0 (every site) or the size of the profiled sample")
        if self.contribution_coalitions < 0 or self.contribution_truncation < 0:
            raise ValueError("contribution_coalitions and contribution_truncation must not be negative")

    @property
    def uses_dp(self) -> bool:
        """True when the run asks for record-level DP-SGD or supplier-level (central) DP."""
        return self.dp_epsilon is not None or self.central_dp_noise is not None

    @classmethod
    def with_defaults(cls, **kwargs: Any) -> FederationConfig:
        """Build from options where None means "the default", which differs under DP-SGD."""
        given = {k: v for k, v in kwargs.items() if v is not None}
        if given.get("dp_epsilon") is not None:
            given = {**DP_TRAINING_DEFAULTS, **given}
        return cls(**given)

    def new_model(self, n_inputs: int, *, outputs: int = 1, seed: int = 0) -> Any:
        """A freshly initialised model of this run's architecture (`model`, `hidden`); `outputs`: one per class."""
        from models.nets import build_model  # torch only where a model is built

        return build_model(n_inputs, name=self.model, hidden=self.hidden, outputs=outputs, seed=seed)

    def replace(self, **changes: Any) -> FederationConfig:
        """A copy with `changes` applied (the config is frozen)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, recorded in the run manifest."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["task"] = self.task.to_dict()
        out["hidden"] = list(self.hidden)
        out["out_dir"] = str(self.out_dir)
        out["key_dir"] = str(self.key_dir)
        return out

    def to_run_config(self) -> dict[str, Any]:
        """The Flower run config that `from_run_config` reads back (kebab-case, TOML-ready values)."""
        builtin = builtin_tasks().get(self.task.name)
        out: dict[str, Any] = {"task": self.task.name if builtin == self.task else self.task.to_json()}
        for f in dataclasses.fields(self):
            if f.name in ("task", "extra"):
                continue
            value = getattr(self, f.name)
            if value is None:
                value = "none"
            elif isinstance(value, tuple):
                value = ",".join(str(v) for v in value)
            elif isinstance(value, Path):
                value = str(value)
            out[f.name.replace("_", "-")] = value
        return out

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any]) -> FederationConfig:
        """Build from a Flower run config (``num-rounds``, ``strategy``, ``task``, ...)."""
        task_value = str(run_config.get("task", "injection-molding-quality"))
        task = TaskSpec.from_json(task_value) if task_value.lstrip().startswith("{") else get_task(task_value)
        defaults = cls(task=task)
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            key = f.name.replace("_", "-")
            if f.name in ("task", "extra") or key not in run_config:
                continue
            value = run_config[key]
            current = getattr(defaults, f.name)
            if current is None:
                kwargs[f.name] = float(value) if str(value) not in ("", "none", "None") else None
            elif isinstance(current, bool):
                kwargs[f.name] = str(value).lower() in ("1", "true", "yes")
            elif isinstance(current, tuple):
                kwargs[f.name] = tuple(int(h) for h in str(value).split(",") if h)
            elif isinstance(current, Path):
                kwargs[f.name] = Path(str(value))
            else:
                kwargs[f.name] = type(current)(value)
        return cls(task=task, **kwargs)
