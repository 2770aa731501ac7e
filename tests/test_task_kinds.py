"""The new task kinds through every feature of a run (issue 13 item 7, issue 14 item 6): multiclass
(`failure-mode`, an MLP with one output per class), sequence regression (`turbofan-rul`, the TCN)
and images (`solar-cell-defect-level` on small generated cells, the cnn with a 4-class head).

Unit level, on real networks' weights: the robust strategies, supplier-level DP, checkpoint and
resume (the network rebuilt from the manifest's scaler). One slow simulation runs
`turbofan-rul` with SecAgg+ and per-site DP-SGD at each site's own budget.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.compat.grid_client_proxy import GridClientProxy
from scipy import stats

from coordinator.checkpoint import RunRecorder, load_resume_point
from coordinator.config import FederationConfig
from coordinator.strategies import SangsaengStrategy, SiteClientManager, build_strategy
from models.architectures import weight_shapes
from models.nets import get_weights, set_weights
from models.scaler import FederatedScaler
from privacy.central import CentralDP
from tests.factories import IMAGE_TASK, scored_image_model, scored_model

KINDS = ["failure-mode", "turbofan-rul", IMAGE_TASK]


@pytest.fixture(scope="module", params=KINDS)
def kind(request, tmp_path_factory):
    """(spec, scaler, model, metrics) of a real multiclass MLP, sequence TCN or image cnn."""
    if request.param == IMAGE_TASK:
        return scored_image_model(tmp_path_factory.mktemp("cells"), hidden=(8, 8))
    return scored_model(request.param, hidden=(8, 8))


def _architecture(spec) -> str:
    return "cnn" if spec.image is not None else "tcn" if spec.sequence else "mlp"


def proxy(node_id: int) -> GridClientProxy:
    return GridClientProxy(node_id=node_id, grid=None, run_id=1)  # type: ignore[arg-type]


def _wrapped(kind, tmp_path, **options):
    """`SangsaengStrategy` over the configured strategy, for this kind's network, after configure_fit."""
    spec, scaler, model, _ = kind
    config = FederationConfig(task=spec, out_dir=tmp_path, hidden=(8, 8), min_sites=2, **options)
    initial = get_weights(model)
    recorder = RunRecorder(tmp_path, header={"schema_hash": spec.schema_hash(), "scaler": scaler.to_json()})
    central = None
    if config.central_dp_noise is not None:
        central = CentralDP(noise_multiplier=config.central_dp_noise, clipping_norm=config.central_dp_clip,
                            delta=1e-3, suppliers=6)  # fmt: skip
    strategy = SangsaengStrategy(
        build_strategy(config, initial, sites=6), config=config, scaler=scaler, recorder=recorder, central_dp=central
    )
    manager = SiteClientManager()
    for i in range(1, 7):
        manager.register(proxy(i))
    strategy.configure_fit(1, ndarrays_to_parameters(initial), manager)
    return config, initial, strategy


def _fit(arrays, n, site):
    return FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), n, {"site": site, "train_loss": 0.1})


def test_the_networks_are_the_kinds_own(kind):
    spec, scaler, model, metrics = kind
    assert [w.shape for w in get_weights(model)] == weight_shapes(
        _architecture(spec), scaler.n_inputs, (8, 8), scaler.n_outputs
    )
    if spec.image is not None:  # GroupNorm'd 3x3 convolutions (4-D weights), a head per defect level
        assert scaler.n_outputs == 4 and {"macro_f1", "recall_0", "recall_3"} <= set(metrics)
        assert any(w.ndim == 4 for w in get_weights(model)) and scaler.pixel_mean
    elif spec.kind == "multiclass":
        assert scaler.n_outputs == 6 and {"macro_f1", "recall_TWF", "recall_RNF"} <= set(metrics)
    else:
        assert {"rmse", "mae", "phm08_score", "rmse_last"} <= set(metrics)


@pytest.mark.parametrize("name", ["fedmedian", "fedtrimmedavg"])
def test_robust_strategies_combine_each_array_coordinate_wise_and_resist_a_poisoned_site(kind, name, tmp_path):
    """Every array keeps its shape (a 6-class head, 3-D convolutions), each coordinate is the median
    (trimmed mean) of the sites' values, and a site boosting its update by -500 moves nothing."""
    config, initial, strategy = _wrapped(kind, tmp_path, strategy=name)
    rng = np.random.default_rng(0)
    updates = [[w + 0.01 * rng.normal(size=w.shape).astype(np.float32) for w in initial] for _ in range(5)]
    updates.append([w - 500.0 for w in initial])  # finite and well-formed: the screen lets it through
    results = [(proxy(i + 1), _fit(u, 100, f"s{i}")) for i, u in enumerate(updates)]

    params, _ = strategy.aggregate_fit(1, results, [])

    got = parameters_to_ndarrays(params)
    assert [a.shape for a in got] == [w.shape for w in initial]
    for k, array in enumerate(got):
        stack = np.stack([u[k] for u in updates])
        want = np.median(stack, axis=0) if name == "fedmedian" else stats.trim_mean(stack, config.trim_fraction, axis=0)
        np.testing.assert_allclose(array, want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(array, initial[k], atol=0.05)  # the honest sites' value, not dragged


def test_supplier_level_dp_clips_the_whole_update_of_every_array(kind, tmp_path):
    """The clipping norm covers the update of every array together (the head and convolutions
    included); the mean is unweighted, as the noise calibrated to it requires."""
    _, initial, strategy = _wrapped(kind, tmp_path, central_dp_noise=1e-9, central_dp_clip=1.0)
    rng = np.random.default_rng(1)
    raw = [[rng.normal(size=w.shape).astype(np.float32) * scale for w in initial] for scale in (3.0, 1e-3)]
    results = [(proxy(i + 1), _fit([w + u for w, u in zip(initial, update, strict=True)], n, f"s{i}"))
               for i, (update, n) in enumerate(zip(raw, (10_000, 1), strict=True))]  # fmt: skip

    params, _ = strategy.aggregate_fit(1, results, [])

    def clipped(update):
        norm = np.sqrt(sum(float((u.astype(np.float64) ** 2).sum()) for u in update))
        return [u * min(1.0, 1.0 / norm) for u in update]

    big, small = (clipped(u) for u in raw)
    assert np.sqrt(sum(float((u**2).sum()) for u in big)) == pytest.approx(1.0, rel=1e-5)
    for k, array in enumerate(parameters_to_ndarrays(params)):
        np.testing.assert_allclose(array, initial[k] + (big[k] + small[k]) / 2, atol=1e-5)
    record = json.loads((tmp_path / "manifest.json").read_text())["rounds"][0]["central_dp"]
    assert record["sampled"] == 2 and record["epsilon"] > 0


def test_a_resumed_run_rebuilds_the_network_from_its_checkpoint_and_scaler(kind, tmp_path):
    """The resume point's weights load into a fresh network built from the manifest's scaler
    (outputs per class, the TCN over windows), which then predicts as the checkpointed one."""
    spec, scaler, model, _ = kind
    config, initial, strategy = _wrapped(kind, tmp_path, strategy="fedadam")
    moved = [[w + 0.1 * (i + 1) for w in initial] for i in range(2)]
    strategy.aggregate_fit(1, [(proxy(i + 1), _fit(u, 10, f"s{i}")) for i, u in enumerate(moved)], [])

    point = load_resume_point(tmp_path, schema_hash=spec.schema_hash())
    assert point is not None and point.round == 1 and set(point.strategy_state) == {"m_t", "v_t"}
    for got, want in zip(point.weights, strategy.global_weights or [], strict=True):
        np.testing.assert_array_equal(got, want)
    resumed_scaler = FederatedScaler.from_json(point.manifest["scaler"])
    fresh = config.new_model(resumed_scaler.n_inputs, outputs=resumed_scaler.n_outputs)
    set_weights(fresh, point.weights)
    set_weights(model, strategy.global_weights or [])
    if spec.image is not None:
        shape: tuple[int, ...] = (4, *spec.image.shape)
    else:
        shape = (4, spec.sequence.window, scaler.n_inputs) if spec.sequence else (4, scaler.n_inputs)
    x = torch.as_tensor(np.random.default_rng(2).normal(size=shape), dtype=torch.float32)
    with torch.no_grad():
        out = fresh(x)
        np.testing.assert_allclose(out.numpy(), model(x).numpy(), rtol=1e-6)
    assert tuple(out.shape) == ((4, scaler.n_outputs) if spec.kind == "multiclass" else (4,))
    assert config.model == _architecture(spec)  # an image task's run builds the cnn, whatever the default
    # A resume of the other kind's directory is refused: its schema differs.
    with pytest.raises(ValueError, match="recorded for schema"):
        other = next(k for k in KINDS if k != spec.name)
        from models.tasks import get_task

        load_resume_point(tmp_path, schema_hash=get_task(other).schema_hash())


@pytest.mark.parametrize("private", [False, True], ids=["plain", "dp-sgd"])
def test_a_multiclass_sequence_task_trains_a_tcn_with_a_head_per_class(private):
    """C-MAPSS engines' windows labelled by remaining life (late / mid / early): the TCN has one
    output per class, trains plainly and under DP-SGD, and scores with the multiclass metrics."""
    import pandas as pd

    from models.datasets import sample_path
    from models.nets import build_model
    from models.schema import validate_frame
    from models.sequence import SequenceSpec
    from models.tasks import TaskSpec
    from models.training import TrainConfig, evaluate_model, prepare, train_local
    from privacy.dp_sgd import train_private

    sensors = ("sensor_2", "sensor_3", "sensor_4", "sensor_7", "sensor_11")
    spec = TaskSpec(name="life-stage", kind="multiclass", label="stage", features=sensors,
                    id_columns=("unit", "cycle", "operator"), classes=("late", "mid", "early"),
                    sequence=SequenceSpec(group="unit", order="cycle", window=10, stride=3))  # fmt: skip
    raw = pd.read_csv(sample_path("turbofan-rul"))
    raw = raw[raw["unit"].isin(sorted(raw["unit"].unique())[:4])]
    raw = raw.assign(stage=pd.cut(raw["RUL"], [-1, 50, 120, 10**6], labels=["late", "mid", "early"]).astype(str))
    frame = validate_frame(raw.drop(columns="RUL"), spec, source="fd003 stages")
    scaler = FederatedScaler.fit_pooled(frame, spec)
    x, y = prepare(frame, spec, scaler)
    assert x.shape[1:] == (10, len(sensors)) and set(np.unique(y)) == {0, 1, 2}
    net = build_model(scaler.n_inputs, name="tcn", hidden=(8,), outputs=scaler.n_outputs, seed=0)
    assert [w.shape for w in get_weights(net)] == weight_shapes("tcn", len(sensors), (8,), 3)
    config = TrainConfig(epochs=1, batch_size=64)
    if private:
        train_private(net, x, y, spec=spec, scaler=scaler, config=config, noise_multiplier=1.0, max_grad_norm=1.0)
    else:
        train_local(net, x, y, spec=spec, scaler=scaler, config=config)
    loss, metrics = evaluate_model(net, x, y, spec=spec, scaler=scaler)
    assert np.isfinite(loss) and 0 <= metrics["macro_f1"] <= 1
    assert {"recall_late", "recall_mid", "recall_early"} <= set(metrics)


# -- end to end ------------------------------------------------------------------------------
@pytest.mark.slow
def test_turbofan_rul_under_secagg_with_each_sites_own_budget(tmp_path):
    """`turbofan-rul` on three operators (two engines each), two rounds of SecAgg+ with per-site
    DP-SGD, each site held to the lower of the run's target and its own policy's budget. (Resume
    of these networks is checked above without an engine: starting one again costs a minute.)"""
    import pandas as pd

    from coordinator.simulation import run_experiment, write_site_files
    from models.tasks import get_task
    from privacy.ledger import PrivacyLedger
    from privacy.policy import SitePrivacyPolicy
    from privacy.report import verify_report
    from tests.conftest import dataset_path

    spec = get_task("turbofan-rul")
    raw = pd.read_csv(dataset_path("cmapss_fd003.csv"))
    raw = raw[raw["operator"].isin(["OP01", "OP02", "OP03"])]
    raw = raw[raw["unit"].isin(raw.groupby("operator")["unit"].apply(lambda u: sorted(u.unique())[:2]).explode())]
    out = tmp_path / "run"
    site_files, _ = write_site_files(raw, "operator", out, spec=spec)
    sites = sorted(site_files)
    budgets = dict(zip(sites, (2.0, 3.0, 8.0), strict=True))  # each site's own ceiling; the run asks for 4
    policies = {site: SitePrivacyPolicy(max_epsilon=budget) for site, budget in budgets.items()}
    config = FederationConfig(
        task=spec, num_rounds=2, local_epochs=1, batch_size=64, hidden=(8,), out_dir=out, min_sites=3,
        dp_epsilon=4.0, secagg=True, key_dir=tmp_path / "keys",
    )  # fmt: skip

    results = run_experiment(spec, site_files, config, site_policies=policies)

    assert "Secure aggregation completed" in (out / "flower.log").read_text()
    # No single update reaches the coordinator: contribution scores are data shares only, and say why.
    contribution = results["contribution"]
    assert contribution["method"] is None and "secure aggregation" in contribution["not_available"]["utility"]
    assert sum(s["data_share"] for s in contribution["per_site"].values()) == pytest.approx(1.0)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "completed" and [r["round"] for r in manifest["rounds"]] == [1, 2]
    assert all(r["sites_trained"] == sites for r in manifest["rounds"])
    with np.load(out / "checkpoints" / "round_002.npz") as npz:
        shapes = [npz[k].shape for k in sorted(k for k in npz.files if k.startswith("w"))]
    scaler = FederatedScaler.from_json(manifest["scaler"])
    assert shapes == weight_shapes("tcn", scaler.n_inputs, (8,), 1)
    for figures in (results["federated"]["global"], *results["federated"]["per_site"].values()):
        assert all(np.isfinite(figures[k]) for k in ("rmse", "mae", "phm08_score", "rmse_last"))
    # The signed report: both rounds for every site, each within the lower of its budget and the target.
    report = verify_report(out / "privacy" / "report.json", out / "privacy" / "coordinator.pub.pem")
    for site, budget in budgets.items():
        entry = report["sites"][site]
        assert [r["round"] for r in entry["rounds"]] == [1, 2]
        assert 0.9 * min(budget, 4.0) < entry["epsilon"] <= min(budget, 4.0) * (1 + 1e-6)
        ledger = PrivacyLedger(out / "sites" / ".sangsaeng-privacy" / f"{site}.ledger.json", site)
        assert ledger.spent(delta=entry["delta"]) == pytest.approx(entry["epsilon"], rel=1e-6)


def test_the_sites_rul_scores_pool_as_the_federations_own():
    """Split held-out windows between two sites: the aggregate of their metrics is the pooled one
    for rmse (root of the weighted mean of squares), mae (weighted mean) and phm08_score (a sum)."""
    from coordinator.strategies import weighted_mean
    from models.rul import phm08_score

    rng = np.random.default_rng(3)
    truth, pred = rng.uniform(0, 150, 90), rng.uniform(0, 150, 90)
    last = np.zeros(90, bool)
    last[::10] = True  # one engine's last window every ten

    def scores(rows):
        t, p = truth[rows], pred[rows]
        return {"rmse": float(np.sqrt(np.mean((t - p) ** 2))), "mae": float(np.mean(np.abs(t - p))),
                "phm08_score": phm08_score(t[last[rows]], p[last[rows]])}  # fmt: skip

    a, b = np.arange(60), np.arange(60, 90)
    pooled = weighted_mean([(60, scores(a)), (30, scores(b))])
    whole = scores(np.arange(90))
    for key in whole:
        assert pooled[key] == pytest.approx(whole[key], rel=1e-9), key


def test_a_multiclass_task_with_a_group_splits_by_whole_groups(ai4i):
    """A multiclass export keeps its group column through validation, as the other kinds do, so the
    held-out split keeps every group on one side (it raised a KeyError for multiclass before)."""
    import dataclasses

    from models.datasets import holdout_split
    from models.schema import validate_frame
    from models.tasks import get_task

    spec = dataclasses.replace(get_task("failure-mode"), name="failure-mode-by-lot", group_column="lot")
    frame = validate_frame(ai4i.head(600).assign(lot=np.arange(600) // 20), spec, source="ai4i with lots")
    assert frame["lot"].nunique() == 30
    train, test = holdout_split(frame, spec, source="ai4i with lots")
    assert len(train) + len(test) == 600 and not set(train["lot"]) & set(test["lot"])
