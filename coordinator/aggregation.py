"""Aggregation strategies by name: a small base class and its registry, free of Flower until one is built.

Each `Aggregation` names Flower's strategy that combines the sites' updates; the names a run
may choose (`coordinator.config.STRATEGIES`) are this registry's keys, so the settings object
checks a name without importing Flower and a new strategy is added in one place::

    class FedMedian(Aggregation, name="fedmedian", robust=True):
        def build(self, config, common):
            from flwr.server.strategy import FedMedian
            return FedMedian(**common)

A rule that only holds with enough updates says so in `shortfall`: the coordinator refuses a run
that samples too few sites per round, and leaves out of aggregation a round in which too few
updates arrived (the global model stays as it was), with that message.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from flwr.server.strategy import Strategy

    from coordinator.config import FederationConfig

__all__ = ["Aggregation", "AGGREGATIONS", "sites_per_round", "sites_per_evaluation", "sample_nodes"]

AGGREGATIONS: dict[str, type[Aggregation]] = {}
"""Every aggregation by its name, in the order they are declared below."""


class Aggregation:
    """How the coordinator combines the sites' updates into the next global model.

    ``robust``: not a mean, so a few poisoned updates cannot drag the model away (Yin et al.
    2018); for the same reason neither supplier-level DP noise (calibrated to a mean) nor
    secure aggregation (which reveals only a sum) fits it.
    """

    name: ClassVar[str]
    robust: ClassVar[bool] = False

    def __init_subclass__(cls, *, name: str, robust: bool = False, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if name in AGGREGATIONS:
            raise ValueError(f"aggregation '{name}' is declared twice ({AGGREGATIONS[name].__name__}, {cls.__name__})")
        cls.name, cls.robust = name, robust
        AGGREGATIONS[name] = cls

    def build(self, config: FederationConfig, common: dict[str, Any]) -> Strategy:
        """Flower's strategy for `config`; ``common`` holds the arguments every Flower strategy takes."""
        raise NotImplementedError

    def shortfall(self, config: FederationConfig, updates: int) -> str | None:
        """Why this rule cannot combine ``updates`` updates under `config` (too few of them), or None."""
        return None


def sites_per_round(config: FederationConfig, sites: int) -> int:
    """How many of ``sites`` healthy sites Flower samples to train each round (its `num_fit_clients`)."""
    return max(int(sites * config.fraction_fit), config.min_sites)


def sites_per_evaluation(config: FederationConfig, sites: int) -> int:
    """How many of ``sites`` sites an evaluation asks: Flower's `num_evaluation_clients`, at least `min_sites`.

    Also the size of the questions the coordinator asks outside the round loop (coalition
    scores each round, the membership check at the end), so that their cost grows with the
    evaluation sample, not with the federation: all sites at the default ``fraction_evaluate`` of 1.
    """
    return min(sites, max(int(sites * config.fraction_evaluate), config.min_sites))


def sample_nodes(node_ids: Sequence[int], size: int, *, seed: int) -> list[int]:
    """`size` of `node_ids`, drawn without replacement and seeded, in their given order (all of them if fewer)."""
    import numpy as np

    if size >= len(node_ids):
        return list(node_ids)
    picked = np.sort(np.random.default_rng(seed).choice(len(node_ids), size=size, replace=False))
    return [node_ids[int(i)] for i in picked]


def _byzantine_shortfall(name: str, config: FederationConfig, updates: int, *, need: int, bound: str) -> str | None:
    if updates >= need:
        return None
    f = config.byzantine_sites
    return (
        f"{name} assumes up to {f} poisoned site(s) (byzantine_sites) and needs {bound} = {need} updates "
        f"per round, got {updates}"
    )


class FedAvgAggregation(Aggregation, name="fedavg"):
    """Flower's FedAvg: the mean of the updates, weighted by examples (by a running sum, `coordinator.streaming`)."""

    def build(self, config: FederationConfig, common: dict[str, Any]) -> Strategy:
        """Flower's `FedAvg` with the common arguments only, aggregating one update at a time."""
        from coordinator.streaming import StreamingFedAvg

        return StreamingFedAvg(**common)


class FedProxAggregation(Aggregation, name="fedprox"):
    """Flower's FedProx: FedAvg, with each site's training pulled towards the global model by ``proximal_mu``."""

    def build(self, config: FederationConfig, common: dict[str, Any]) -> Strategy:
        """Flower's `FedProx`, with the run's ``proximal_mu``."""
        from flwr.server.strategy import FedProx

        return FedProx(proximal_mu=config.proximal_mu, **common)


class FedAdamAggregation(Aggregation, name="fedadam"):
    """Flower's FedAdam: Adam at the server on the mean update, at rate ``server_lr`` (its state is checkpointed)."""

    def build(self, config: FederationConfig, common: dict[str, Any]) -> Strategy:
        """Flower's `FedAdam`: server rate ``server_lr``, client rate ``lr``, adaptivity ``tau`` 1e-3."""
        from flwr.server.strategy import FedAdam

        return FedAdam(eta=config.server_lr, eta_l=config.lr, tau=1e-3, **common)


class FedMedianAggregation(Aggregation, name="fedmedian", robust=True):
    """Flower's FedMedian: the coordinate-wise median of the updates."""

    def build(self, config: FederationConfig, common: dict[str, Any]) -> Strategy:
        """Flower's `FedMedian` with the common arguments only."""
        from flwr.server.strategy import FedMedian

        return FedMedian(**common)


class FedTrimmedAvgAggregation(Aggregation, name="fedtrimmedavg", robust=True):
    """Flower's FedTrimmedAvg: the coordinate-wise mean once ``trim_fraction`` is cut from each end."""

    def build(self, config: FederationConfig, common: dict[str, Any]) -> Strategy:
        """Flower's `FedTrimmedAvg`, cutting the run's ``trim_fraction`` (its ``beta``) from each end."""
        from flwr.server.strategy import FedTrimmedAvg

        return FedTrimmedAvg(beta=config.trim_fraction, **common)


class KrumAggregation(Aggregation, name="krum", robust=True):
    """Flower's Krum (Blanchard et al. 2017): the one update nearest its ``n - f - 2`` nearest others.

    ``f`` is ``byzantine_sites``; Krum's guarantee needs ``n > 2f + 2`` updates. One site's update
    becomes the global model, so the others' data only counts through the choice.
    """

    def build(self, config: FederationConfig, common: dict[str, Any]) -> Strategy:
        """Flower's `Krum`, assuming ``byzantine_sites`` poisoned sites, keeping one update."""
        from flwr.server.strategy import Krum

        return Krum(num_malicious_clients=config.byzantine_sites, num_clients_to_keep=0, **common)

    def shortfall(self, config: FederationConfig, updates: int) -> str | None:
        """Fewer than ``2f + 3`` updates (Krum needs ``n > 2f + 2``)."""
        return _byzantine_shortfall(
            "krum", config, updates, need=2 * config.byzantine_sites + 3, bound="n > 2f + 2, at least 2f + 3"
        )


class MultiKrumAggregation(Aggregation, name="multikrum", robust=True):
    """Multi-Krum (Blanchard et al. 2017) on Flower's Krum: the example-weighted mean of the ``m`` best-scored updates.

    ``m`` is ``multikrum_keep``, by default (0) the round's updates less ``f``: all but the
    ``f`` most isolated. Needs ``n > 2f + 2`` and ``n >= m + f``.
    """

    def build(self, config: FederationConfig, common: dict[str, Any]) -> Strategy:
        """Flower's `Krum` with ``num_clients_to_keep`` set each round to ``m``."""
        from flwr.server.strategy import Krum

        f, keep = config.byzantine_sites, config.multikrum_keep

        class MultiKrum(Krum):
            """Flower's Krum keeping ``m`` updates, ``m`` worked out for each round's number of updates."""

            def aggregate_fit(self, server_round: int, results: Any, failures: Any) -> Any:
                """Flower's Multi-Krum, keeping ``multikrum_keep`` updates (0: all but ``f``)."""
                self.num_clients_to_keep = keep or max(1, len(results) - f)
                return super().aggregate_fit(server_round, results, failures)

            def __repr__(self) -> str:
                return f"MultiKrum(f={f}, m={keep or 'n - f'})"

        return MultiKrum(num_malicious_clients=f, num_clients_to_keep=keep, **common)

    def shortfall(self, config: FederationConfig, updates: int) -> str | None:
        """Fewer than ``2f + 3`` updates, or fewer than ``m + f``."""
        f, keep = config.byzantine_sites, config.multikrum_keep
        if keep and updates < keep + f and keep + f > 2 * f + 3:
            return (
                f"multikrum keeps {keep} update(s) (multikrum_keep) besides up to {f} poisoned site(s) "
                f"(byzantine_sites) and needs m + f = {keep + f} updates per round, got {updates}"
            )
        return _byzantine_shortfall("multikrum", config, updates, need=2 * f + 3, bound="n > 2f + 2, at least 2f + 3")


class BulyanAggregation(Aggregation, name="bulyan", robust=True):
    """Flower's Bulyan (El Mhamdi et al. 2018): Krum picks ``n - 2f`` updates, then a coordinate-wise trimmed mean.

    Each coordinate is the mean of the ``n - 4f`` selected values nearest their median. Needs
    ``n >= 4f + 3`` updates (the paper's and Flower's bound): 7 sites for one poisoned site.
    """

    def build(self, config: FederationConfig, common: dict[str, Any]) -> Strategy:
        """Flower's `Bulyan` on Flower's Krum, assuming ``byzantine_sites`` poisoned sites."""
        from flwr.server.strategy import Bulyan

        # Flower's Bulyan passes its extra arguments on to the Krum it selects with; Krum's
        # `to_keep` has no default there (0: Krum proper).
        return Bulyan(num_malicious_clients=config.byzantine_sites, to_keep=0, **common)

    def shortfall(self, config: FederationConfig, updates: int) -> str | None:
        """Fewer than ``4f + 3`` updates."""
        return _byzantine_shortfall("bulyan", config, updates, need=4 * config.byzantine_sites + 3, bound="n >= 4f + 3")
