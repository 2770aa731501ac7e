"""Model architectures: the piecewise-linear encoding, what travels as weights, and the DP defaults."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from coordinator.config import DP_TRAINING_DEFAULTS, FederationConfig
from models.architectures import ARCHITECTURES, PLE_KNOTS, input_width, weight_shapes
from models.nets import PiecewiseLinearEncoding, build_model, get_weights, set_weights
from models.tasks import get_task

PM = get_task("predictive-maintenance")


def test_piecewise_linear_encoding_values():
    encoding = PiecewiseLinearEncoding((-1.0, 0.0, 2.0))
    x = torch.tensor([[-5.0], [-0.5], [1.0], [9.0]])
    out = encoding(x)
    # The input itself, then one value per bin: 1 for bins wholly below x, the fraction of x's own bin, 0 above.
    expected = torch.tensor([[-5.0, 0.0, 0.0], [-0.5, 0.5, 0.0], [1.0, 1.0, 0.5], [9.0, 1.0, 1.0]])
    assert torch.equal(out, expected)


def test_encoding_keeps_features_apart():
    encoding = PiecewiseLinearEncoding(PLE_KNOTS)
    x = torch.tensor([[0.25, -9.0, 9.0]])
    out = encoding(x)[0]
    bins = len(PLE_KNOTS) - 1
    assert out.shape == (3 * len(PLE_KNOTS),) and torch.equal(out[:3], x[0])
    first, second, third = out[3 : 3 + bins], out[3 + bins : 3 + 2 * bins], out[3 + 2 * bins :]
    assert first.tolist() == [1.0] * 6 + [0.5] + [0.0] * 5  # 0.25 lies halfway through the bin [0, 0.5)
    assert second.sum() == 0 and third.sum() == bins


def test_bad_bin_edges_are_refused():
    with pytest.raises(ValueError, match="increase strictly"):
        PiecewiseLinearEncoding((0.0, 0.0, 1.0))


@pytest.mark.parametrize("hidden", [(), (8,)])
def test_ple_model_shares_only_its_learned_weights(hidden):
    model = build_model(11, name="ple", hidden=hidden, seed=3)
    weights = get_weights(model)
    assert len(weights) == 2 * (len(hidden) + 1)  # the fixed bins are not weights and never travel
    assert weights[0].shape[1] == input_width("ple", 11) == 11 * len(PLE_KNOTS)
    other = build_model(11, name="ple", hidden=hidden, seed=4)
    set_weights(other, weights)
    x = torch.randn(5, 11)
    assert torch.equal(model(x), other(x))


def test_ple_model_is_additive_without_hidden_layers():
    model = build_model(2, name="ple", hidden=(), seed=0)
    a, b = torch.tensor([[0.3, 0.0]]), torch.tensor([[0.0, -1.7]])
    both, zero = torch.tensor([[0.3, -1.7]]), torch.zeros(1, 2)
    with torch.no_grad():  # f(a + b) - f(0) = (f(a) - f(0)) + (f(b) - f(0)) for inputs on separate features
        assert float(model(both) - model(zero)) == pytest.approx(float(model(a) + model(b) - 2 * model(zero)), abs=1e-6)


def test_unknown_architecture_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown model 'tree'.*mlp.*ple"):
        build_model(4, name="tree")
    with pytest.raises(ValueError, match="unknown model 'tree'"):
        FederationConfig(task=PM, model="tree")


def test_dp_runs_default_to_the_additive_model_and_overrides_win(tmp_path):
    private = FederationConfig.with_defaults(task=PM, dp_epsilon=3.0, out_dir=tmp_path)
    assert (private.model, private.hidden) == ("ple", ())
    assert (DP_TRAINING_DEFAULTS["model"], DP_TRAINING_DEFAULTS["hidden"]) == ("ple", ())
    assert private.dp_max_grad_norm == DP_TRAINING_DEFAULTS["dp_max_grad_norm"]
    chosen = FederationConfig.with_defaults(task=PM, dp_epsilon=3.0, model="mlp", hidden=(16,))
    assert (chosen.model, chosen.hidden) == ("mlp", (16,))
    plain = FederationConfig.with_defaults(task=PM)
    assert (plain.model, plain.hidden) == ("mlp", (64, 32))


def test_model_and_an_empty_hidden_survive_the_flower_run_config():
    config = FederationConfig(task=PM, model="ple", hidden=(), out_dir=Path("/tmp/x"))
    back = FederationConfig.from_run_config(config.to_run_config())
    assert (back.model, back.hidden) == ("ple", ())
    weights = get_weights(build_model(11, name=back.model, hidden=back.hidden))
    assert [w.shape for w in weights] == [(1, 11 * len(PLE_KNOTS)), (1,)] and all(np.isfinite(w).all() for w in weights)


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
@pytest.mark.parametrize("hidden", [(), (8,), (12, 4)])
@pytest.mark.parametrize("outputs", [1, 6])
def test_the_torch_free_weight_shapes_are_every_networks_own(name, hidden, outputs):
    """What an artifact is checked against without torch (`weight_shapes`) is what the network sends."""
    net = build_model(5, name=name, hidden=hidden, outputs=outputs)
    assert [w.shape for w in get_weights(net)] == weight_shapes(name, 5, hidden, outputs)
