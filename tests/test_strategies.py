"""Aggregation: weighted FedAvg equals the hand-computed weighted mean; failures are recorded."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.strategy import FedAvg

from coordinator.checkpoint import RunRecorder, load_resume_point
from coordinator.config import FederationConfig
from coordinator.strategies import SangsaengStrategy, SiteClientManager, build_strategy, weighted_mean
from models.scaler import FederatedScaler
from models.tasks import get_task

PM = get_task("predictive-maintenance")


def proxy(node_id: int) -> GridClientProxy:
    return GridClientProxy(node_id=node_id, grid=None, run_id=1)  # type: ignore[arg-type]


def fit_res(arrays, n, site, loss):
    return FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), n, {"site": site, "train_loss": loss})


@pytest.fixture
def strategy(tmp_path):
    def make(name="fedavg"):
        config = FederationConfig(task=PM, strategy=name, out_dir=tmp_path)
        initial = [np.zeros((2, 3), np.float32), np.zeros(3, np.float32)]
        recorder = RunRecorder(tmp_path, header={"schema_hash": PM.schema_hash(), "scaler": "{}"})
        scaler = FederatedScaler(PM.name, PM.numeric_features, {}, {}, {}, 0.0, 1.0, 10, 1)
        return SangsaengStrategy(build_strategy(config, initial), config=config, scaler=scaler, recorder=recorder)

    return make


def test_weighted_fedavg_equals_hand_computed_mean(strategy, tmp_path):
    rng = np.random.default_rng(0)
    updates = {
        site: [rng.normal(size=(2, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32)] for site in "abc"
    }
    counts = {"a": 600, "b": 300, "c": 100}
    results = [(proxy(i), fit_res(updates[s], counts[s], s, float(i))) for i, s in enumerate("abc")]

    params, metrics = strategy().aggregate_fit(1, results, [])

    total = sum(counts.values())
    expected = [sum(counts[s] * updates[s][k] for s in "abc") / total for k in range(2)]
    for got, want in zip(parameters_to_ndarrays(params), expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    # Hand-computed: (600*0 + 300*1 + 100*2) / 1000
    assert metrics["train_loss"] == pytest.approx(0.5)

    manifest = json.loads((tmp_path / "manifest.json").read_text())
    record = manifest["rounds"][0]
    assert record["sites_trained"] == ["a", "b", "c"] and record["examples"] == 1000
    assert record["checkpoint"] == "checkpoints/round_001.npz"


def test_failures_are_recorded_and_the_round_goes_on(strategy, tmp_path):
    from flwr.app import Error

    good = [(proxy(1), fit_res([np.ones((2, 3), np.float32), np.ones(3, np.float32)], 10, "a", 0.3))]
    failure = Exception(Error(code=1001, reason="site 'b': b.csv: column 'Torque [Nm]': non-finite"))
    params, _ = strategy().aggregate_fit(1, good, [failure])
    assert params is not None
    record = json.loads((tmp_path / "manifest.json").read_text())["rounds"][0]
    assert record["failures"] == ["site 'b': b.csv: column 'Torque [Nm]': non-finite"]
    assert record["sites_trained"] == ["a"]


def test_checkpoint_resume_point_restores_weights(strategy, tmp_path):
    weights = [np.full((2, 3), 2.0, np.float32), np.full(3, 3.0, np.float32)]
    s = strategy("fedadam")
    s.aggregate_fit(1, [(proxy(1), fit_res(weights, 5, "a", 0.1))], [])
    point = load_resume_point(tmp_path, schema_hash=PM.schema_hash())
    assert point is not None and point.round == 1
    assert set(point.strategy_state) == {"m_t", "v_t"}  # FedAdam's moments survive a restart
    with pytest.raises(ValueError, match="recorded for schema"):
        load_resume_point(tmp_path, schema_hash="0" * 64)


def test_client_manager_never_samples_excluded_nodes():
    manager = SiteClientManager(excluded={2})
    for i in (1, 2, 3):
        manager.register(proxy(i))
    assert manager.num_available() == 2
    for _ in range(20):
        assert {c.node_id for c in manager.sample(2)} == {1, 3}


def test_weighted_mean_skips_nan_and_text():
    assert weighted_mean([(1, {"x": 1.0, "site": "a"}), (3, {"x": float("nan")}), (1, {"x": 3.0})]) == {"x": 2.0}


@pytest.mark.parametrize(
    ("name", "cls"), [("fedavg", "StreamingFedAvg"), ("fedprox", "FedProx"), ("fedadam", "FedAdam")]
)
def test_strategy_registry_builds_flowers_own_strategies(tmp_path, name, cls):
    config = FederationConfig(task=PM, strategy=name, out_dir=tmp_path, fraction_fit=0.5, min_sites=3)
    strategy = build_strategy(config, [np.zeros(2, np.float32)])
    assert type(strategy).__name__ == cls and isinstance(strategy, FedAvg)  # FedAvg's: Flower's subclass or ours
    assert strategy.fraction_fit == 0.5 and strategy.min_fit_clients == 3


def test_fedprox_sends_mu_and_the_proximal_term_changes_local_training():
    import torch

    from models.nets import build_model
    from models.training import TrainConfig, train_local

    manager = SiteClientManager()
    for i in (1, 2):
        manager.register(proxy(i))
    config = FederationConfig(task=PM, strategy="fedprox", proximal_mu=0.5)
    fedprox = build_strategy(config, [np.zeros(2, np.float32)])
    (_, ins), *_ = fedprox.configure_fit(1, fedprox.initial_parameters, manager)
    assert ins.config["proximal_mu"] == 0.5

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(200, 8)).astype(np.float32), (rng.random(200) < 0.2).astype(np.float32)
    scaler = FederatedScaler(PM.name, (), {}, {}, {}, 0.0, 1.0, 200, 40)
    start = build_model(8, seed=1)
    drift = {}
    for mu in (0.0, 5.0):
        model = build_model(8, seed=1)
        train_local(model, x, y, spec=PM, scaler=scaler, config=TrainConfig(epochs=3, proximal_mu=mu, lr=1e-2))
        drift[mu] = sum(
            float(((p - q) ** 2).sum()) for p, q in zip(model.parameters(), start.parameters(), strict=True)
        )
    assert drift[5.0] < drift[0.0]  # the proximal term keeps local weights near the global ones
    assert isinstance(start, torch.nn.Module)


def test_central_dp_aggregate_is_unweighted_clipped_and_noised(tmp_path):
    from coordinator.config import FederationConfig as Config
    from privacy.central import CentralDP

    config = Config(task=PM, out_dir=tmp_path, central_dp_noise=1e-9, central_dp_clip=1.0)
    initial = [np.zeros(4, np.float32)]
    recorder = RunRecorder(tmp_path, header={"schema_hash": PM.schema_hash(), "scaler": "{}"})
    scaler = FederatedScaler(PM.name, (), {}, {}, {}, 0.0, 1.0, 10, 1)
    inner = build_strategy(config, initial, sites=2)
    central = CentralDP(noise_multiplier=1e-9, clipping_norm=1.0, delta=1e-3, suppliers=2)
    wrapped = SangsaengStrategy(inner, config=config, scaler=scaler, recorder=recorder, central_dp=central)
    manager = SiteClientManager()
    for i in (1, 2):
        manager.register(proxy(i))
    wrapped.configure_fit(1, ndarrays_to_parameters(initial), manager)
    big = [np.array([30.0, 40.0, 0.0, 0.0], np.float32)]  # norm 50: clipped to 1
    small = [np.array([0.0, 0.0, 0.6, 0.8], np.float32)]  # norm 1: kept
    results = [(proxy(1), fit_res(big, 10_000, "a", 0.0)), (proxy(2), fit_res(small, 1, "b", 0.0))]
    params, _ = wrapped.aggregate_fit(1, results, [])
    got = parameters_to_ndarrays(params)[0]
    # Unweighted mean of the clipped updates, despite 10,000 vs 1 examples.
    np.testing.assert_allclose(got, [0.3, 0.4, 0.3, 0.4], atol=1e-5)
    record = json.loads((tmp_path / "manifest.json").read_text())["rounds"][0]["central_dp"]
    assert record["sample_rate"] == 1.0 and record["epsilon"] > 0


# -- supplier-level DP with adaptive clipping --------------------------------------------------
def _adaptive(initial_clip: float, *, quantile: float = 0.5, lr: float = 0.2, noise: float = 1e-9, count=1e-9):
    from flwr.server.strategy import FedAvg

    from privacy.central import AdaptiveClipping

    wrapper = AdaptiveClipping(
        FedAvg(), noise_multiplier=noise, num_sampled_clients=20, initial_clipping_norm=initial_clip,
        target_quantile=quantile, clip_norm_lr=lr, clipped_count_stddev=count, rng=np.random.default_rng(0),
    )  # fmt: skip
    wrapper.current_round_params = [np.zeros(8, np.float32)]
    return wrapper


def _updates_with_norms(norms):
    rng = np.random.default_rng(1)
    out = []
    for i, norm in enumerate(norms):
        direction = rng.normal(size=8)
        update = (direction / np.linalg.norm(direction) * norm).astype(np.float32)
        out.append((proxy(i), FitRes(Status(Code.OK, ""), ndarrays_to_parameters([update]), 1, {})))
    return out


@pytest.mark.parametrize("initial_clip", [0.1, 100.0])
@pytest.mark.parametrize("quantile", [0.5, 0.8])
def test_adaptive_clipping_norm_converges_to_the_target_quantile_of_update_norms(initial_clip, quantile):
    rng = np.random.default_rng(2)
    wrapper = _adaptive(initial_clip, quantile=quantile)
    for rnd in range(1, 301):
        wrapper.aggregate_fit(rnd, _updates_with_norms(rng.uniform(0, 10, size=20)), [])
    # Norms uniform on [0, 10]: the target quantile is 10 * quantile (5 or 8), whichever side it started.
    assert wrapper.clipping_norm == pytest.approx(10 * quantile, rel=0.15)


def test_adaptive_clipping_noise_is_scaled_to_the_norm_the_updates_were_clipped_to():
    wrapper = _adaptive(1.0, lr=2.0, noise=1.0, count=10.0)
    wrapper.current_round_params = [np.zeros(20_000, np.float32)]
    zero_updates = [(proxy(i), FitRes(Status(Code.OK, ""), ndarrays_to_parameters([np.zeros(20_000, np.float32)]),
                                      1, {})) for i in range(4)]  # fmt: skip
    wrapper.num_sampled_clients = 4
    params, _ = wrapper.aggregate_fit(1, zero_updates, [])
    noise = parameters_to_ndarrays(params)[0]
    # Every update was unclipped (norm 0 <= 1), so the norm shrinks for round 2 (lr 2: by about e^-1)...
    assert wrapper.clipping_norm < 0.6
    # ...but round 1's noise is for norm 1: std = z_update * 1 / 4, z_update from z = 1 and count noise 10.
    z_update = (1.0**-2 - (2 * 10.0) ** -2) ** -0.5
    assert noise.std() == pytest.approx(z_update * 1.0 / 4, rel=0.03)


def test_adaptive_central_dp_records_each_rounds_clipping_norm(tmp_path):
    from privacy.central import AdaptiveClipping, CentralDP

    config = FederationConfig(task=PM, out_dir=tmp_path, central_dp_noise=0.5, central_dp_clip=2.0,
                              central_dp_adaptive=True, central_dp_quantile=0.5)  # fmt: skip
    initial = [np.zeros(4, np.float32)]
    recorder = RunRecorder(tmp_path, header={"schema_hash": PM.schema_hash(), "scaler": "{}"})
    scaler = FederatedScaler(PM.name, (), {}, {}, {}, 0.0, 1.0, 10, 1)
    inner = build_strategy(config, initial, sites=2)
    assert isinstance(inner, AdaptiveClipping) and inner.clipped_count_stddev == 0.5  # max(2 / 20, z)
    central = CentralDP(noise_multiplier=0.5, clipping_norm=2.0, delta=1e-3, suppliers=2)
    wrapped = SangsaengStrategy(inner, config=config, scaler=scaler, recorder=recorder, central_dp=central)
    manager = SiteClientManager()
    for i in (1, 2):
        manager.register(proxy(i))
    clips = []
    for rnd in (1, 2):
        wrapped.configure_fit(rnd, ndarrays_to_parameters(initial), manager)
        big = [np.array([30.0, 40.0, 0.0, 0.0], np.float32)]  # both clipped: the norm should grow
        wrapped.aggregate_fit(rnd, [(proxy(1), fit_res(big, 10, "a", 0.0)), (proxy(2), fit_res(big, 10, "b", 0.0))],
                              [])  # fmt: skip
        record = json.loads((tmp_path / "manifest.json").read_text())["rounds"][rnd - 1]["central_dp"]
        clips.append((record["clipping_norm"], record["next_clipping_norm"]))
    assert clips[0][0] == 2.0 and clips[1][0] == clips[0][1]  # round 2 clips at the norm round 1 adapted to


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"central_dp_adaptive": True}, "set central_dp_noise too"),
        ({"central_dp_adaptive": True, "central_dp_noise": 1.0, "central_dp_quantile": 1.0}, "strictly between"),
        ({"central_dp_adaptive": True, "central_dp_noise": 1.0, "central_dp_count_stddev": 0.4}, "must exceed"),
    ],
)
def test_adaptive_clipping_settings_are_checked(tmp_path, options, problem):
    with pytest.raises(ValueError, match=problem):
        FederationConfig(task=PM, out_dir=tmp_path, **options)


def test_a_poisoned_or_malformed_update_is_left_out_by_name_and_the_round_goes_on(strategy, tmp_path):
    wrapped = strategy()
    manager = SiteClientManager()
    for i in (1, 2, 3, 4):
        manager.register(proxy(i))
    initial = [np.zeros((2, 3), np.float32), np.zeros(3, np.float32)]
    wrapped.configure_fit(1, ndarrays_to_parameters(initial), manager)
    good = [np.ones((2, 3), np.float32), np.ones(3, np.float32)]
    poisoned = [np.full((2, 3), np.nan, np.float32), np.ones(3, np.float32)]
    poisoned[0][0, 0] = 1.0
    reshaped = [np.ones((3, 2), np.float32), np.ones(3, np.float32)]
    short = [np.ones((2, 3), np.float32)]
    results = [(proxy(1), fit_res(good, 10, "a", 0.1)), (proxy(2), fit_res(poisoned, 10_000, "b", 0.1)),
               (proxy(3), fit_res(reshaped, 10, "c", 0.1)), (proxy(4), fit_res(short, 10, "d", 0.1))]  # fmt: skip
    params, _ = wrapped.aggregate_fit(1, results, [])
    for got, want in zip(parameters_to_ndarrays(params), good, strict=True):
        np.testing.assert_allclose(got, want)  # the good update alone, however many rows the others claim
    record = json.loads((tmp_path / "manifest.json").read_text())["rounds"][0]
    assert record["sites_trained"] == ["a"]
    assert record["failures"] == [
        "site 'b': update rejected: weight array 0 has 5 non-finite value(s) (NaN or infinity)",
        "site 'c': update rejected: weight array 0 has shape (3, 2), the global model's is (2, 3)",
        "site 'd': update rejected: update has 1 weight arrays, the global model 2",
    ]


def central_dp_round(config: FederationConfig, initial: list[np.ndarray]) -> SangsaengStrategy:
    """Supplier-level DP (noise 0.5, clip 1) over two sites, round 1 configured: ready for `aggregate_fit`."""
    from privacy.central import CentralDP

    recorder = RunRecorder(config.out_dir, header={"schema_hash": PM.schema_hash(), "scaler": "{}"})
    scaler = FederatedScaler(PM.name, (), {}, {}, {}, 0.0, 1.0, 10, 1)
    central = CentralDP(noise_multiplier=0.5, clipping_norm=1.0, delta=1e-3, suppliers=2)
    wrapped = SangsaengStrategy(build_strategy(config, initial, sites=2), config=config, scaler=scaler,
                                recorder=recorder, central_dp=central)  # fmt: skip
    manager = SiteClientManager()
    for i in (1, 2):
        manager.register(proxy(i))
    wrapped.configure_fit(1, ndarrays_to_parameters(initial), manager)
    return wrapped


def test_supplier_level_dp_takes_an_update_that_did_not_move(tmp_path):
    for adaptive in (False, True):
        out = tmp_path / str(adaptive)
        config = FederationConfig(task=PM, out_dir=out, central_dp_noise=0.5, central_dp_clip=1.0,
                                  central_dp_adaptive=adaptive)  # fmt: skip
        initial = [np.ones(4, np.float32)]
        wrapped = central_dp_round(config, initial)
        unmoved = [(proxy(i), fit_res([np.ones(4, np.float32)], 10, s, 0.0)) for i, s in ((1, "a"), (2, "b"))]
        params, _ = wrapped.aggregate_fit(1, unmoved, [])  # Flower's own wrappers divide by the norm, 0
        assert params is not None and np.isfinite(parameters_to_ndarrays(params)[0]).all()


@pytest.mark.parametrize("name", ["fedmedian", "fedtrimmedavg"])
def test_robust_aggregation_resists_a_poisoned_update_that_drags_fedavg(strategy, name):
    manager = SiteClientManager()
    for i in range(1, 7):
        manager.register(proxy(i))
    initial = [np.zeros((2, 3), np.float32), np.zeros(3, np.float32)]
    rng = np.random.default_rng(0)

    def round_with_a_poisoned_site(wrapped):
        wrapped.configure_fit(1, ndarrays_to_parameters(initial), manager)
        honest = [(proxy(i), fit_res([1 + 0.01 * rng.normal(size=(2, 3)).astype(np.float32),
                                      np.ones(3, np.float32)], 100, f"s{i}", 0.1)) for i in range(1, 6)]  # fmt: skip
        boosted = [np.full((2, 3), -500.0, np.float32), np.full(3, -500.0, np.float32)]  # finite, well-formed
        params, _ = wrapped.aggregate_fit(1, [*honest, (proxy(6), fit_res(boosted, 100, "evil", 0.1))], [])
        return parameters_to_ndarrays(params)

    dragged = round_with_a_poisoned_site(strategy("fedavg"))
    assert dragged[1].max() < -80  # one site in six moved the mean by -83
    robust = round_with_a_poisoned_site(strategy(name))
    for array in robust:
        np.testing.assert_allclose(array, 1.0, atol=0.05)  # the honest sites' value


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"strategy": "fedmedian", "central_dp_noise": 1.0}, "calibrated to a mean"),
        ({"strategy": "fedtrimmedavg", "secagg": True}, "only reveals the sum"),
        ({"strategy": "fedtrimmedavg", "trim_fraction": 0.5}, "trim_fraction must lie in"),
    ],
)
def test_robust_aggregation_refuses_what_it_cannot_combine_with(tmp_path, options, problem):
    with pytest.raises(ValueError, match=problem):
        FederationConfig(task=PM, out_dir=tmp_path, **options)


def test_an_update_of_non_numbers_is_named():
    from coordinator.strategies import update_problem

    text = [np.array([["a", "b", "c"], ["d", "e", "f"]]), np.ones(3, np.float32)]
    assert update_problem(text, [(2, 3), (3,)]) == "weight array 0 holds <U1, not numbers"
    assert update_problem([np.ones((2, 3)), np.ones(3)], [(2, 3), (3,)]) is None


@pytest.mark.parametrize("adaptive", [False, True])
def test_fedadam_moments_survive_a_resume_under_supplier_level_dp(tmp_path, adaptive):
    """Flower's DP wrapper has no m_t / v_t of its own: they must be read from, and restored into, FedAdam."""
    from coordinator.strategies import innermost, restore_strategy_state

    config = FederationConfig(task=PM, strategy="fedadam", out_dir=tmp_path, central_dp_noise=0.5,
                              central_dp_adaptive=adaptive)  # fmt: skip
    initial = [np.zeros((2, 3), np.float32), np.zeros(3, np.float32)]
    wrapped = central_dp_round(config, initial)
    updates = [(proxy(i), fit_res([np.full((2, 3), 0.1 * i, np.float32), np.full(3, 0.2, np.float32)], 10, s, 0.1))
               for i, s in ((1, "a"), (2, "b"))]  # fmt: skip
    wrapped.aggregate_fit(1, updates, [])
    moments = {name: getattr(innermost(wrapped.inner), name) for name in ("m_t", "v_t")}

    point = load_resume_point(tmp_path, schema_hash=PM.schema_hash())
    assert point is not None and set(point.strategy_state) == {"m_t", "v_t"}  # saved through the wrapper
    fresh = build_strategy(config, initial, sites=2)
    restore_strategy_state(fresh, point.strategy_state)
    assert not hasattr(fresh, "m_t")  # onto FedAdam itself, not onto the wrapper where nothing reads them
    for name, arrays in moments.items():
        for got, want in zip(getattr(innermost(fresh), name), arrays, strict=True):
            np.testing.assert_array_equal(got, want)


def test_a_site_lost_before_the_round_deadline_is_named_and_the_round_goes_on_if_enough_replied(tmp_path):
    from flwr.common import ndarrays_to_parameters as to_parameters

    from privacy.report import build_report

    config = FederationConfig(task=PM, out_dir=tmp_path, min_sites=2, round_timeout=5.0)
    initial = [np.zeros((2, 3), np.float32), np.zeros(3, np.float32)]
    sites = {name: {"node_id": node, "n_train": 10, "n_test": 5} for node, name in enumerate("abc", start=1)}
    recorder = RunRecorder(tmp_path, header={"run_id": "r", "schema_hash": PM.schema_hash(), "scaler": "{}",
                                             "sites": sites})  # fmt: skip
    scaler = FederatedScaler(PM.name, PM.numeric_features, {}, {}, {}, 0.0, 1.0, 10, 1)
    wrapped = SangsaengStrategy(build_strategy(config, initial), config=config, scaler=scaler, recorder=recorder)
    manager = SiteClientManager()
    for node in (1, 2, 3):
        manager.register(proxy(node))
    ones = [np.ones((2, 3), np.float32), np.ones(3, np.float32)]
    # round 1: c's reply never came; a and b (= min_sites) make the round
    assert len(wrapped.configure_fit(1, to_parameters(initial), manager)) == 3
    params, _ = wrapped.aggregate_fit(1, [(proxy(1), fit_res(ones, 10, "a", 0.1)),
                                          (proxy(2), fit_res(ones, 10, "b", 0.1))], [])  # fmt: skip
    assert params is not None
    record = recorder.round_record(1)
    assert record["sites_trained"] == ["a", "b"] and record["sites_lost"] == ["c"]
    assert any("site 'c': no training reply within the round timeout of 5 s" in f for f in record["failures"])
    # round 2: only a replied, fewer than min_sites: nothing aggregated, no checkpoint
    wrapped.configure_fit(2, to_parameters(initial), manager)
    params, _ = wrapped.aggregate_fit(2, [(proxy(1), fit_res(ones, 10, "a", 0.1))], [])
    assert params is None and "checkpoint" not in recorder.round_record(2)
    assert recorder.round_record(2)["sites_lost"] == ["b", "c"]
    # the privacy report names the lost replies and the sites' own ledgers as the authority
    lost = build_report(recorder.manifest)["replies_lost"]
    assert lost["sites"]["c"] == {"training": [1, 2], "evaluation": []}
    assert lost["sites"]["b"]["training"] == [2] and "own ledger is the authority" in lost["note"]


def test_a_lost_site_the_profile_never_heard_from_is_named_by_the_admitted_sites(tmp_path):
    # A deployment site that connected after the profile (so not in the manifest's sites) and whose first
    # reply was lost: the round names it by the coordinator's admitted.json, not by a bare node id.
    from flwr.common import ndarrays_to_parameters as to_parameters

    from coordinator.deploy import ADMITTED_FILE
    from coordinator.server_app import admitted_sites

    config = FederationConfig(task=PM, out_dir=tmp_path, min_sites=2, round_timeout=5.0)
    initial = [np.zeros((2, 3), np.float32), np.zeros(3, np.float32)]
    big = 15939694743588714659  # Flower's node ids are unsigned 64-bit: above int64's range too
    admitted = tmp_path / "admitted.json"
    admitted.write_text(json.dumps({"SHA256:aa": {"site": "a", "node_id": 1}, "SHA256:bb": {"site": "b", "node_id": 2},
                                    "SHA256:cc": {"site": "line-late", "node_id": big}}))  # fmt: skip
    names = admitted_sites({ADMITTED_FILE: str(admitted)})
    assert names == {1: "a", 2: "b", big: "line-late"}
    sites = {name: {"node_id": node, "n_train": 10, "n_test": 5} for node, name in ((1, "a"), (2, "b"))}
    recorder = RunRecorder(tmp_path, header={"run_id": "r", "schema_hash": PM.schema_hash(), "scaler": "{}",
                                             "sites": sites})  # fmt: skip
    scaler = FederatedScaler(PM.name, PM.numeric_features, {}, {}, {}, 0.0, 1.0, 10, 1)
    wrapped = SangsaengStrategy(build_strategy(config, initial), config=config, scaler=scaler, recorder=recorder,
                                site_names=names)  # fmt: skip
    manager = SiteClientManager()
    for node in (1, 2, big, 7):  # 7: a node neither profiled nor admitted
        manager.register(proxy(node))
    ones = [np.ones((2, 3), np.float32), np.ones(3, np.float32)]
    assert len(wrapped.configure_fit(1, to_parameters(initial), manager)) == 4
    wrapped.aggregate_fit(1, [(proxy(1), fit_res(ones, 10, "a", 0.1)), (proxy(2), fit_res(ones, 10, "b", 0.1))], [])
    assert recorder.round_record(1)["sites_lost"] == ["line-late", "node 7"]


def test_admitted_sites_without_a_file_or_from_a_broken_one_are_none(tmp_path, caplog):
    from coordinator.deploy import ADMITTED_FILE
    from coordinator.server_app import admitted_sites

    assert admitted_sites({}) == admitted_sites({ADMITTED_FILE: "none"}) == {}  # "none": the app's default
    broken = tmp_path / "admitted.json"
    broken.write_text('{"SHA256:aa": {"site": "a"')
    with caplog.at_level("WARNING", logger="sangsaeng.coordinator"):
        assert admitted_sites({ADMITTED_FILE: str(broken)}) == {}
    assert "unreadable admitted sites" in caplog.text and str(broken) in caplog.text


def test_a_run_waits_for_every_admitted_site_then_goes_on_with_min_sites():
    from coordinator.errors import FederationError
    from coordinator.server_app import wait_for_nodes

    class Arriving:  # the SuperLink's connected nodes as they come: one more every call
        def __init__(self, nodes: list[int]):
            self.nodes, self.calls = nodes, 0

        def get_node_ids(self) -> list[int]:
            self.calls += 1
            return self.nodes[: self.calls]

    grid = Arriving([1, 2, 3])
    assert wait_for_nodes(grid, 2, 5.0, hoped={1, 2, 3}) == [1, 2, 3]  # not at 2 already: 3 is admitted
    assert grid.calls == 3
    assert wait_for_nodes(Arriving([1, 2, 3]), 2, 5.0) == [1, 2]  # nothing hoped for: min_sites is enough
    assert wait_for_nodes(Arriving([1, 2]), 2, 0.5, hoped={1, 2, 3}) == [1, 2]  # 3 never comes: go on with 2
    with pytest.raises(FederationError, match="only 1 of 2 site"):
        wait_for_nodes(Arriving([1]), 2, 0.5, hoped={1, 2})


def test_round_timeout_must_be_positive():
    with pytest.raises(ValueError, match="round_timeout must be positive"):
        FederationConfig(task=PM, round_timeout=0.0)


def test_a_dp_release_whose_reply_was_lost_reaches_the_report_with_the_sites_next_reply(ai4i, tmp_path):
    # Site c trains round 1 under DP, but its reply misses the deadline; its round 2 reply carries the run's
    # releases as its ledger recorded them, so the report lists round 1 too (reply_lost) and `privacy verify`
    # recomputes c's epsilon, which equals its own ledger's. Without that list the report could not add up.
    from flwr.common import ndarrays_to_parameters as to_parameters

    from client.client_app import SiteClient
    from client.site import SiteConfig
    from coordinator.simulation import write_site_files
    from models.nets import get_weights
    from models.schema import load_site_data
    from privacy.errors import ReportInvalid
    from privacy.keys import PUBLIC_NAME, load_signing_key
    from privacy.ledger import PrivacyLedger
    from privacy.report import build_report, verify_report, write_signed_report

    files, _ = write_site_files(ai4i.sample(1800, random_state=0), "Type", tmp_path / "data", spec=PM)
    names = sorted(files)
    clients = {n: SiteClient(SiteConfig(name=n, data_path=files[n])) for n in names}
    config = FederationConfig.with_defaults(task=PM, out_dir=tmp_path / "run", num_rounds=2, min_sites=2,
                                            dp_epsilon=3.0, round_timeout=5.0)  # fmt: skip
    scaler = FederatedScaler.fit_pooled(pd.concat([load_site_data(files[n], PM) for n in names]), PM)
    initial = get_weights(config.new_model(scaler.n_inputs, outputs=scaler.n_outputs, seed=0))
    sites = {n: {"node_id": node, "n_train": 10, "n_test": 5} for node, n in enumerate(names, start=1)}
    recorder = RunRecorder(config.out_dir, header={"run_id": "lost-reply", "schema_hash": PM.schema_hash(),
                                                   "scaler": scaler.to_json(), "sites": sites})  # fmt: skip
    wrapped = SangsaengStrategy(build_strategy(config, initial), config=config, scaler=scaler, recorder=recorder)
    manager = SiteClientManager()
    for node in sites.values():
        manager.register(proxy(node["node_id"]))
    late = names[-1]
    weights = initial
    for rnd in (1, 2):
        replies = []
        for client_proxy, ins in wrapped.configure_fit(rnd, to_parameters(weights), manager):
            name = names[client_proxy.node_id - 1]
            arrays, n, metrics = clients[name].fit(weights, ins.config)
            if (rnd, name) != (1, late):  # c trained round 1 and charged it; its reply never arrived
                replies.append((client_proxy, FitRes(Status(Code.OK, ""), to_parameters(arrays), n, metrics)))
        params, _ = wrapped.aggregate_fit(rnd, replies, [])
        weights = parameters_to_ndarrays(params)
        wrapped._finish_round(rnd)
    assert recorder.round_record(1)["sites_lost"] == [late]
    report = build_report(recorder.manifest)
    entry = report["sites"][late]
    assert [(r["round"], r.get("reply_lost", False)) for r in entry["rounds"]] == [(1, True), (2, False)]
    assert report["replies_lost"]["sites"][late]["recovered"] == {"training": [1], "evaluation": []}
    ledger = PrivacyLedger(clients[late].site.ledger_file, late)
    assert entry["epsilon"] == pytest.approx(ledger.spent(delta=entry["delta"]), rel=1e-12)
    key = load_signing_key(tmp_path / "keys", create=True)
    verify_report(write_signed_report(report, tmp_path / "privacy", key), tmp_path / "privacy" / PUBLIC_NAME)
    # The same run without the sites' lists (a site of an older version): c's figure cannot be recomputed.
    for record in recorder.manifest["rounds"]:
        for dp in record.get("dp", {}).values():
            dp.pop("run_releases", None)
    old = build_report(recorder.manifest)
    with pytest.raises(ReportInvalid, match=f"site '{late}' round 2: recorded epsilon"):
        verify_report(write_signed_report(old, tmp_path / "old", key), tmp_path / "old" / PUBLIC_NAME)
    # A tampered recovered release fails verify too.
    forged = json.loads(json.dumps(report))
    forged["sites"][late]["rounds"][0]["noise_multiplier"] *= 2
    with pytest.raises(ReportInvalid, match=f"site '{late}' round 1: recorded epsilon"):
        verify_report(write_signed_report(forged, tmp_path / "forged", key), tmp_path / "forged" / PUBLIC_NAME)
