"""Supplier-level DP at the coordinator, with Flower's own server-side DP wrappers.

Each site's model update is clipped to a norm ``C`` and Gaussian noise with standard
deviation ``noise_multiplier * C / m`` is added to the mean of the ``m`` clipped updates.
The mean must be unweighted for that noise to cover any one supplier, so `SangsaengStrategy`
gives every update weight 1 when this is on. Epsilon is accounted per round with the RDP
accountant, at the fraction of suppliers sampled that round.

``C`` is either fixed (`FixedClipping`, on Flower's ``DifferentialPrivacyServerSideFixedClipping``)
or adaptive (`AdaptiveClipping`, on Flower's ``DifferentialPrivacyServerSideAdaptiveClipping``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.common import FitRes, Parameters, Scalar, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import (
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Strategy,
)
from flwr.supercore.differential_privacy import add_gaussian_noise_to_params, get_norm

from privacy.accounting import Step, epsilon_of

__all__ = ["AdaptiveClipping", "CentralDP", "FixedClipping", "default_count_stddev", "wrap_central_dp"]


def clip_updates(results: list[tuple[ClientProxy, FitRes]], current: list[np.ndarray], clip: float) -> int:
    """Clip each site's update (its parameters minus ``current``) to norm ``clip`` in place; return how many fit.

    Flower's flat clipping (McMahan et al. 2018), as its ``clip_inputs_inplace``, except that an update
    of norm 0 (a site whose model did not move) is left as it is: Flower divides by the norm.
    """
    unclipped = 0
    for _, res in results:
        params = parameters_to_ndarrays(res.parameters)
        update = [np.subtract(p, g) for p, g in zip(params, current, strict=True)]
        norm = get_norm(update)
        if norm <= clip:
            unclipped += 1
            continue
        res.parameters = ndarrays_to_parameters([g + u * (clip / norm) for g, u in zip(current, update, strict=True)])
    return unclipped


def clipped_noised_mean(
    wrapper: DifferentialPrivacyServerSideFixedClipping | DifferentialPrivacyServerSideAdaptiveClipping,
    server_round: int,
    results: list[tuple[ClientProxy, FitRes]],
    failures: list[tuple[ClientProxy, FitRes] | BaseException],
) -> tuple[Parameters | None, dict[str, Scalar], int]:
    """The wrapped strategy's aggregate of updates clipped to the wrapper's norm, noised for that norm.

    Also returns how many updates were within the norm. Noise std is
    ``noise_multiplier * clipping_norm / num_sampled_clients``, as in Flower's wrappers.
    """
    clip = wrapper.clipping_norm
    unclipped = clip_updates(results, wrapper.current_round_params, clip)
    aggregated, metrics = wrapper.strategy.aggregate_fit(server_round, results, failures)
    if aggregated is not None:
        aggregated = add_gaussian_noise_to_params(
            aggregated, wrapper.noise_multiplier, clip, wrapper.num_sampled_clients
        )
    return aggregated, metrics, unclipped


class FixedClipping(DifferentialPrivacyServerSideFixedClipping):
    """Flower's server-side fixed clipping; one fix to its round: an update of norm 0 is not an error.

    Flower's wrapper divides by each update's norm, so a site whose model did not move would
    crash the round for everyone. Clipping and noise are otherwise Flower's: each update clipped
    to ``clipping_norm``, Gaussian noise of std ``noise_multiplier * clipping_norm / m`` on the mean.
    """

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """Clip each update to the fixed norm, average unweighted and add Gaussian noise."""
        if not results:
            return None, {}
        aggregated, metrics, _ = clipped_noised_mean(self, server_round, results, failures)
        return aggregated, metrics


def default_count_stddev(noise_multiplier: float, sites: int) -> float:
    """Noise on the count of unclipped updates: Andrew et al.'s sites/20, but at least the noise multiplier.

    The update noise is raised so that both together are worth ``noise_multiplier``:
    ``z_update = (z**-2 - (2 * count_stddev)**-2) ** -0.5``. With a handful of suppliers, sites/20
    leaves no room for any useful ``z``, and Flower's wrapper refuses it. At ``count_stddev = z``
    the update noise is 15 % above ``z``.
    """
    return max(sites / 20, noise_multiplier)


class AdaptiveClipping(DifferentialPrivacyServerSideAdaptiveClipping):
    """Flower's server-side adaptive clipping (Andrew et al., NeurIPS 2021), with two fixes to its round.

    The clipping norm follows the ``target_quantile`` of the suppliers' update norms. Each round,
    ``b`` is the noised fraction of updates left *unclipped* (norm <= C). Then
    ``C <- C * exp(-lr * (b - target_quantile))``: when more updates than the target pass
    unclipped, C shrinks. Flower 1.42's ``aggregate_fit`` differs from the paper in two ways,
    fixed here with Flower's own clipping and noise helpers:

    - it counts the *clipped* updates into the same rule. That drives C the wrong way: when every
      update is clipped, C shrinks, without end. This is the sign error in the clipped/unclipped
      indicator;
    - it adapts C *before* adding the noise, so the noise is scaled to next round's norm, not to
      the norm these updates were clipped to. That is too little noise whenever C shrinks.

    The noise accounting is the paper's Theorem 1: the update noise ``z_update`` and the count
    noise ``count_stddev`` together are a Gaussian mechanism of noise multiplier ``z``, the one
    the accountant is given. Flower's ``compute_adaptive_noise_params`` splits ``z`` that way.
    As in `FixedClipping`, an update of norm 0 is not an error.
    """

    def __init__(
        self,
        strategy: Strategy,
        *,
        noise_multiplier: float,
        num_sampled_clients: int,
        initial_clipping_norm: float,
        target_quantile: float = 0.5,
        clip_norm_lr: float = 0.2,
        clipped_count_stddev: float | None = None,
        rng: np.random.Generator | None = None,
    ):
        if clipped_count_stddev is None:
            clipped_count_stddev = default_count_stddev(noise_multiplier, num_sampled_clients)
        super().__init__(
            strategy,
            noise_multiplier=noise_multiplier,
            num_sampled_clients=num_sampled_clients,
            initial_clipping_norm=initial_clipping_norm,
            target_clipped_quantile=target_quantile,  # range-checked there; its meaning here is the unclipped share
            clip_norm_lr=clip_norm_lr,
            clipped_count_stddev=clipped_count_stddev,
        )
        self.target_quantile = target_quantile
        self.rng = rng or np.random.default_rng()

    def __repr__(self) -> str:
        return "AdaptiveClipping(Flower server-side adaptive clipping, Andrew et al. 2021)"

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """Clip and noise at this round's norm, then adapt the norm from the noised unclipped share."""
        if not results:
            return None, {}
        # Clipped and noised at this round's norm; only then is the norm adapted for the next round.
        aggregated, metrics, unclipped = clipped_noised_mean(self, server_round, results, failures)
        noised_share = float(self.rng.normal(unclipped, self.clipped_count_stddev)) / len(results)
        self.clipping_norm *= math.exp(-self.clip_norm_lr * (noised_share - self.target_quantile))
        return aggregated, metrics


def wrap_central_dp(
    inner: Strategy,
    *,
    noise_multiplier: float,
    clipping_norm: float,
    sites: int,
    adaptive: bool = False,
    target_quantile: float = 0.5,
    clip_norm_lr: float = 0.2,
    count_stddev: float | None = None,
) -> Strategy:
    """Flower's fixed-clipping wrapper, or `AdaptiveClipping` starting from ``clipping_norm``."""
    if adaptive:
        return AdaptiveClipping(
            inner, noise_multiplier=noise_multiplier, num_sampled_clients=sites, initial_clipping_norm=clipping_norm,
            target_quantile=target_quantile, clip_norm_lr=clip_norm_lr, clipped_count_stddev=count_stddev,
        )  # fmt: skip
    return FixedClipping(
        inner, noise_multiplier=noise_multiplier, clipping_norm=clipping_norm, num_sampled_clients=sites
    )


@dataclass(kw_only=True)
class CentralDP:
    """Accounting of supplier-level DP over the rounds of a run.

    Keyword-only, as Opacus' accountants: a noise multiplier and a clipping norm swapped by
    position would still be floats, and the epsilon reported would be wrong.

    >>> central = CentralDP(noise_multiplier=1.0, clipping_norm=0.5, delta=1e-3, suppliers=4)
    >>> round(central.account_round(2)["sample_rate"], 2)
    0.5
    """

    noise_multiplier: float
    clipping_norm: float
    delta: float
    suppliers: int
    adaptive: dict[str, float] | None = None  # target_quantile, clip_norm_lr, count_stddev, update_noise_multiplier
    history: list[Step] = field(default_factory=list)

    def account_round(self, sampled: int, *, clipping_norm: float | None = None) -> dict[str, Any]:
        """The round's record; ``clipping_norm`` is the norm this round's updates are clipped to."""
        sample_rate = min(1.0, sampled / max(self.suppliers, 1))
        self.history.append((self.noise_multiplier, sample_rate, 1))
        return {
            "noise_multiplier": self.noise_multiplier,
            "clipping_norm": self.clipping_norm if clipping_norm is None else clipping_norm,
            "delta": self.delta,
            "suppliers": self.suppliers,
            "sampled": sampled,
            "sample_rate": sample_rate,
            "epsilon": epsilon_of(self.history, delta=self.delta, accountant="rdp"),
            **({"adaptive": self.adaptive} if self.adaptive else {}),
        }
