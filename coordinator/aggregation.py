"""Aggregation strategies by name: a small base class and its registry, free of Flower until one is built.

Each `Aggregation` names Flower's strategy that combines the sites' updates; the names a run
may choose (`coordinator.config.STRATEGIES`) are this registry's keys, so the settings object
checks a name without importing Flower and a new strategy is added in one place::

    class Krum(Aggregation, name="krum", robust=True):
        def build(self, config, common):
            from flwr.server.strategy import Krum
            return Krum(**common)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from flwr.server.strategy import Strategy

    from coordinator.config import FederationConfig

__all__ = ["Aggregation", "AGGREGATIONS"]

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
