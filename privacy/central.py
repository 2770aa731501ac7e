"""Supplier-level DP at the coordinator, with Flower's own server-side DP wrapper.

Each site's model update is clipped to ``clipping_norm`` and Gaussian noise with standard
deviation ``noise_multiplier * clipping_norm / m`` is added to the mean of the ``m`` clipped
updates (Flower's ``DifferentialPrivacyServerSideFixedClipping``). The mean must be
unweighted for that noise to cover any one supplier, so `SangsaengStrategy` gives every
update weight 1 when this is on. Epsilon is accounted per round with the RDP accountant, at
the fraction of suppliers sampled that round.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flwr.server.strategy import DifferentialPrivacyServerSideFixedClipping, Strategy

from privacy.accounting import Step, epsilon_of

__all__ = ["CentralDP", "wrap_central_dp"]


def wrap_central_dp(inner: Strategy, *, noise_multiplier: float, clipping_norm: float, sites: int) -> Strategy:
    return DifferentialPrivacyServerSideFixedClipping(
        inner, noise_multiplier=noise_multiplier, clipping_norm=clipping_norm, num_sampled_clients=sites
    )


@dataclass
class CentralDP:
    """Accounting of supplier-level DP over the rounds of a run."""

    noise_multiplier: float
    clipping_norm: float
    delta: float
    suppliers: int
    history: list[Step] = field(default_factory=list)

    def account_round(self, sampled: int) -> dict[str, float | int]:
        sample_rate = min(1.0, sampled / max(self.suppliers, 1))
        self.history.append((self.noise_multiplier, sample_rate, 1))
        return {
            "noise_multiplier": self.noise_multiplier,
            "clipping_norm": self.clipping_norm,
            "delta": self.delta,
            "suppliers": self.suppliers,
            "sampled": sampled,
            "sample_rate": sample_rate,
            "epsilon": epsilon_of(self.history, delta=self.delta, accountant="rdp"),
        }
