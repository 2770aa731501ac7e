"""A supplier site's own privacy policy, and the DP request a coordinator may send."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from privacy.accounting import ACCOUNTANTS
from privacy.errors import PolicyError

__all__ = ["SitePrivacyPolicy", "DpRequest"]


@dataclass(frozen=True)
class SitePrivacyPolicy:
    """What the site allows, whatever the coordinator asks.

    ``max_epsilon``: the site's total budget over everything trained on its data (None: no
    budget of its own; a DP request's target then applies). ``delta``: None means
    ``0.1 / records``, below 1/n as DP requires. ``dp_required``: refuse to train without
    DP-SGD even when the coordinator does not ask for it.
    """

    max_epsilon: float | None = None
    delta: float | None = None
    dp_required: bool = False
    accountant: str = "rdp"
    max_grad_norm: float | None = None

    def __post_init__(self) -> None:
        if self.max_epsilon is not None and self.max_epsilon <= 0:
            raise PolicyError(f"max-epsilon must be positive, got {self.max_epsilon}")
        if self.delta is not None and not 0 < self.delta < 1:
            raise PolicyError(f"delta must lie in (0, 1), got {self.delta}")
        if self.accountant not in ACCOUNTANTS:
            raise PolicyError(f"unknown accountant '{self.accountant}' (choose from {list(ACCOUNTANTS)})")
        if self.dp_required and self.max_epsilon is None:
            raise PolicyError("a site that requires DP must set max-epsilon")

    def delta_for(self, records: int) -> float:
        """The delta for `records` rows (default 0.1 / n); refuses one not below 1/n."""
        delta = self.delta if self.delta is not None else 0.1 / max(records, 1)
        if delta >= 1 / max(records, 1):
            raise PolicyError(f"delta {delta:g} is not below 1/n = {1 / records:g} for {records} records")
        return delta

    @classmethod
    def from_node_config(cls, node_config: dict[str, Any]) -> SitePrivacyPolicy:
        """The policy from the SuperNode's node config (max-epsilon, delta, dp-required, ...)."""

        def opt_float(key: str) -> float | None:
            return float(node_config[key]) if key in node_config and str(node_config[key]) != "" else None

        return cls(
            max_epsilon=opt_float("max-epsilon"),
            delta=opt_float("delta"),
            dp_required=str(node_config.get("dp-required", "false")).lower() in ("1", "true", "yes"),
            accountant=str(node_config.get("accountant", "rdp")),
            max_grad_norm=opt_float("max-grad-norm"),
        )


@dataclass(frozen=True)
class DpRequest:
    """What the coordinator asks of a site for one run.

    ``evaluate_every``: the run evaluates every k-th round and the last (0: the last only, see
    `privacy.evaluation.evaluation_rounds`); under DP the site reserves budget for those releases.
    """

    run_id: str
    target_epsilon: float | None
    max_grad_norm: float
    num_rounds: int
    accountant: str = "rdp"
    evaluate_every: int = 1
