"""The coordinator's settings, as read from a Flower run config in deployment."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.config import DP_TRAINING_DEFAULTS, FederationConfig


def test_run_config_keys_map_onto_typed_settings():
    config = FederationConfig.from_run_config(
        {
            "task": "predictive-maintenance",
            "num-rounds": 3,
            "strategy": "fedprox",
            "dp-epsilon": 2.5,
            "hidden": "32,16",
            "resume": "true",
            "out-dir": "/tmp/x",
            "fraction-fit": 0.5,
        }  # fmt: skip
    )
    assert config.task.name == "predictive-maintenance"
    assert (config.num_rounds, config.strategy, config.dp_epsilon) == (3, "fedprox", 2.5)
    assert config.hidden == (32, 16) and config.resume is True and config.out_dir == Path("/tmp/x")
    assert config.central_dp_noise is None and config.uses_dp


def test_dp_runs_get_dp_training_defaults_unless_set():
    plain = FederationConfig.with_defaults(task=FederationConfig.from_run_config({}).task, batch_size=None)
    assert plain.batch_size == 64 and not plain.uses_dp
    dp = FederationConfig.with_defaults(task=plain.task, dp_epsilon=3.0, lr=0.01)
    assert dp.batch_size == DP_TRAINING_DEFAULTS["batch_size"] and dp.lr == 0.01


@pytest.mark.parametrize(
    ("changes", "message"),
    [({"strategy": "gm"}, "unknown strategy"), ({"num_rounds": 0}, "at least 1"), ({"dp_epsilon": -1.0}, "positive")],
)
def test_bad_settings_are_refused(changes, message):
    base = FederationConfig.from_run_config({})
    with pytest.raises(ValueError, match=message):
        base.replace(**changes)


def test_training_defaults_live_in_one_place():
    """The coordinator's settings, a site's local training and the networks all start from TRAINING_DEFAULTS."""
    import dataclasses

    from models.defaults import TRAINING_DEFAULTS
    from models.nets import build_model
    from models.training import TrainConfig

    config = FederationConfig.from_run_config({})
    for name, value in dataclasses.asdict(TRAINING_DEFAULTS).items():
        assert getattr(config, name) == value, name
    local = TrainConfig()
    assert (local.epochs, local.batch_size, local.lr, local.weight_decay, local.class_weight) == (
        TRAINING_DEFAULTS.local_epochs, TRAINING_DEFAULTS.batch_size, TRAINING_DEFAULTS.lr,
        TRAINING_DEFAULTS.weight_decay, TRAINING_DEFAULTS.class_weight,
    )  # fmt: skip
    widths = [layer.out_features for layer in build_model(5).net if hasattr(layer, "out_features")]
    assert tuple(widths[:-1]) == TRAINING_DEFAULTS.hidden


def test_strategy_names_are_the_aggregation_registry():
    from coordinator.aggregation import AGGREGATIONS, Aggregation
    from coordinator.config import ROBUST_STRATEGIES, STRATEGIES
    from coordinator.strategies import STRATEGY_REGISTRY

    assert STRATEGIES == tuple(AGGREGATIONS) == tuple(STRATEGY_REGISTRY)
    assert ROBUST_STRATEGIES == ("fedmedian", "fedtrimmedavg", "krum", "multikrum", "bulyan")
    with pytest.raises(ValueError, match="aggregation 'fedavg' is declared twice"):

        class Again(Aggregation, name="fedavg"):
            pass


def test_a_network_registers_only_under_a_known_architecture():
    from torch import nn

    from models.architectures import ARCHITECTURES
    from models.nets import MODEL_REGISTRY, implements

    assert set(MODEL_REGISTRY) == set(ARCHITECTURES)
    with pytest.raises(ValueError, match="unknown model 'forest'"):
        implements("forest")(nn.Linear)
