"""Multiclass tasks: the spec, label checks, merged class weights, metrics, DP-SGD and prediction."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from models.errors import SiteDataError, TaskSpecError
from models.metrics import compute_metrics
from models.nets import build_model, get_weights
from models.scaler import FederatedScaler, SiteProfile, profile_site
from models.schema import load_site_data, validate_frame
from models.tasks import TaskSpec, get_task, load_task_spec
from models.training import TrainConfig, evaluate_model, loss_fn, prepare, train_local
from privacy.dp_sgd import make_private, train_private
from tests.conftest import dataset_path, explain, sangsaeng

FM = get_task("failure-mode")
MODES = ("TWF", "HDF", "PWF", "OSF", "RNF")

SPEC = """
[task]
name = "tool-grade"
kind = "multiclass"
label = "grade"
features = ["x1", "x2"]
classes = [0, 1, 2]
"""


def _grades(tmp_path, labels, name="site.csv"):
    rng = np.random.default_rng(len(labels))
    frame = pd.DataFrame({"x1": rng.normal(size=len(labels)), "x2": rng.normal(size=len(labels)), "grade": labels})
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


def _grade_spec(tmp_path):
    path = tmp_path / "task.toml"
    path.write_text(SPEC)
    return load_task_spec(path)


def test_a_toml_spec_declares_integer_classes_in_order(tmp_path):
    path = tmp_path / "task.toml"
    path.write_text(SPEC)
    spec = load_task_spec(path)
    assert spec.kind == "multiclass" and spec.classes == ("0", "1", "2")
    assert spec.primary_metric == "macro_f1" and spec.higher_is_better
    assert spec.metrics == ("macro_f1", "accuracy", "balanced_accuracy", "macro_roc_auc")
    assert TaskSpec.from_json(spec.to_json()) == spec


def test_binary_and_regression_specs_serialise_as_before():
    for name in ("predictive-maintenance", "injection-molding-quality"):
        data = get_task(name).to_dict()
        assert "classes" not in data and "label_from" not in data


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kind": "binary"}, "are for multiclass tasks"),
        ({"classes": ("a", "a", "b")}, "listed twice"),
        ({"classes": ("a",)}, "at least 2 classes"),
        ({"classes": ("none", "TWF")}, "which 'classes' does not list"),
        ({"features": (*FM.features, "TWF")}, "must never be features"),
    ],
)
def test_bad_multiclass_specs_are_refused(change, message):
    data = {**FM.to_dict(), **{k: list(v) if isinstance(v, tuple) else v for k, v in change.items()}}
    with pytest.raises(TaskSpecError, match=message):
        TaskSpec.from_dict(data)


def test_a_label_outside_the_declared_classes_names_file_column_value_and_classes(tmp_path):
    path = _grades(tmp_path, [0, 1, 2, 1, 7, 0])
    spec = _grade_spec(tmp_path)
    with pytest.raises(SiteDataError) as info:
        load_site_data(path, spec)
    assert str(info.value) == (
        f"{path}: column 'grade': label value not among the task's classes (known classes: ['0', '1', '2']) "
        "in 1 row(s), first at data row 5: '7'"
    )


def test_string_labels_and_integer_labels_in_a_float_column_read_as_classes():
    spec = TaskSpec(name="t", kind="multiclass", label="y", features=("x",), classes=("0", "2"))
    frame = validate_frame(pd.DataFrame({"x": [1.0, 2.0], "y": [2.0, 0.0]}), spec, source="f.csv")
    assert frame["y"].tolist() == ["2", "0"]
    words = TaskSpec(name="t", kind="multiclass", label="y", features=("x",))
    assert validate_frame(pd.DataFrame({"x": [1.0], "y": ["worn"]}), words, source="f.csv")["y"].tolist() == ["worn"]


def test_failure_mode_label_takes_the_first_mode_set(ai4i):
    frame = validate_frame(ai4i, FM, source="ai4i2020.csv")
    flags = ai4i[list(MODES)].to_numpy()
    first = np.where(flags.any(axis=1), np.array(MODES)[flags.argmax(axis=1)], "none")
    assert frame["Failure mode"].tolist() == first.tolist()
    several = flags.sum(axis=1) > 1
    assert several.sum() > 0  # AI4I has rows with several modes: each takes the first in TWF, HDF, PWF, OSF, RNF
    assert set(frame["Failure mode"]) == set(FM.classes)
    assert not set(FM.features) & {*MODES, "Machine failure"}


def test_a_bad_mode_flag_names_its_column(ai4i):
    broken = ai4i.head(20).copy()
    broken.loc[3, "HDF"] = 2
    with pytest.raises(SiteDataError, match=r"x.csv: column 'HDF': label flag must be 0 or 1.*data row 4: 2"):
        validate_frame(broken, FM, source="x.csv")


def test_class_weights_equal_the_hand_computed_merged_counts(tmp_path):
    spec = _grade_spec(tmp_path)
    # Site a lacks class 2 (non-IID), site b lacks class 0.
    a = load_site_data(_grades(tmp_path, [0] * 6 + [1] * 2, "a.csv"), spec)
    b = load_site_data(_grades(tmp_path, [1] * 2 + [2] * 4, "b.csv"), spec)
    profiles = [SiteProfile.from_json(profile_site(f, spec).to_json()) for f in (a, b)]
    scaler = FederatedScaler.combine(profiles, spec)
    assert scaler.classes == ("0", "1", "2") and scaler.class_counts == {"0": 6, "1": 4, "2": 4}
    # balanced: total / (K * count_k) = 14 / (3 * n)
    np.testing.assert_allclose(scaler.class_weights(), [14 / 18, 14 / 12, 14 / 12])
    assert FederatedScaler.from_json(scaler.to_json()) == scaler
    sqrt = loss_fn(spec, scaler, "sqrt")
    np.testing.assert_allclose(sqrt.weight.numpy(), np.sqrt([14 / 18, 14 / 12, 14 / 12]), rtol=1e-6)
    # The loss is the plain mean of each row's weighted cross-entropy.
    logits, target = torch.randn(5, 3), torch.tensor([0, 1, 2, 2, 0])
    per_row = torch.nn.functional.cross_entropy(logits, target, reduction="none") * torch.tensor(
        [14 / 18, 14 / 12, 14 / 12, 14 / 12, 14 / 18]
    )
    torch.testing.assert_close(loss_fn(spec, scaler)(logits, target), per_row.mean())

    # A site that lacks a class trains with the federation's scaler, and is scored on what it has.
    x, y = prepare(a, spec, scaler)
    model = build_model(scaler.n_inputs, outputs=scaler.n_outputs)
    assert np.isfinite(train_local(model, x, y, spec=spec, scaler=scaler, config=TrainConfig(epochs=2)))
    _, metrics = evaluate_model(model, x, y, spec=spec, scaler=scaler)
    assert np.isnan(metrics["recall_2"]) and 0 <= metrics["macro_f1"] <= 1


def test_undeclared_classes_are_the_sorted_labels_the_sites_report():
    spec = TaskSpec(name="t", kind="multiclass", label="y", features=("x",))
    a = profile_site(pd.DataFrame({"x": [1.0, 2.0], "y": ["worn", "new"]}), spec)
    b = profile_site(pd.DataFrame({"x": [3.0], "y": ["half"]}), spec)
    assert FederatedScaler.combine([a, b], spec).classes == ("half", "new", "worn")
    with pytest.raises(TaskSpecError, match="at least 2 classes"):
        FederatedScaler.combine([b], spec)


def test_multiclass_metrics_on_known_values():
    y = np.array([0, 0, 1, 1, 2, 2])
    proba = np.array(
        [[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.1, 0.6, 0.3], [0.1, 0.2, 0.7], [0.5, 0.1, 0.4]]
    )
    m = compute_metrics("multiclass", y, proba, classes=("a", "b", "c"))
    # predictions 0,1,1,1,2,0: recalls 1/2, 1, 1/2; F1 per class 1/2, 4/5, 2/3
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 1 + 0.5) / 3)
    assert m["macro_f1"] == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)
    assert (m["recall_a"], m["recall_b"], m["recall_c"]) == pytest.approx((0.5, 1.0, 0.5))
    # one-vs-rest AUCs: a 7/8, b 7/8, c 1; as scikit-learn's own one-vs-rest macro average
    assert m["macro_roc_auc"] == pytest.approx((0.875 + 0.875 + 1.0) / 3)
    assert m["macro_roc_auc"] == pytest.approx(roc_auc_score(y, proba, multi_class="ovr", average="macro"))
    # A site lacking a class is scored on the classes it has.
    lacking = compute_metrics("multiclass", y[:4], proba[:4], classes=("a", "b", "c"))
    assert np.isnan(lacking["recall_c"]) and lacking["recall_b"] == 1.0


def _fm_rows(ai4i, rows=400):
    frame = validate_frame(ai4i, FM, source="ai4i")
    # Enough failures among few rows that every class shows up.
    part = pd.concat([frame[frame["Failure mode"] != "none"].head(rows // 2), frame.head(rows // 2)])
    scaler = FederatedScaler.fit_pooled(part, FM)
    x, y = prepare(part, FM, scaler)
    return x, y, scaler


@pytest.mark.parametrize(("model", "per_sample"), [("ple", "head"), ("mlp", "ghost")])
def test_dp_sgd_with_a_k_output_head_trains_as_materialised_per_sample_clipping(ai4i, model, per_sample):
    x, y, scaler = _fm_rows(ai4i)
    config = TrainConfig(epochs=2, batch_size=64, lr=0.05, seed=3)
    runs = {}
    for method in (per_sample, "ew"):
        net = build_model(scaler.n_inputs, name=model, hidden=() if model == "ple" else (16,), outputs=6, seed=0)
        loss, steps = train_private(
            net, x, y, spec=FM, scaler=scaler, config=config, noise_multiplier=1.0, max_grad_norm=1.0,
            per_sample=method, noise_seed=7,  # the same draws for both methods
        )  # fmt: skip
        runs[method] = (loss, steps, get_weights(net))
    assert runs[per_sample][0] == pytest.approx(runs["ew"][0], rel=1e-4)
    for trained, reference in zip(runs[per_sample][2], runs["ew"][2], strict=True):
        np.testing.assert_allclose(trained, reference, rtol=1e-4, atol=1e-5)


def test_head_per_sample_gradients_of_a_k_output_head_equal_opacus_and_are_clipped(ai4i):
    x, y, scaler = _fm_rows(ai4i)
    grads = {}
    for method in ("head", "ew"):
        net = build_model(scaler.n_inputs, name="ple", hidden=(), outputs=6, seed=0)
        private = make_private(
            net, x, y, spec=FM, scaler=scaler, config=TrainConfig(batch_size=64),
            noise_multiplier=0.0, max_grad_norm=0.01, per_sample=method,
        )  # fmt: skip
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            private.gradients(torch.as_tensor(x[:64]), torch.as_tensor(y[:64]))
        grads[method] = torch.cat([p.grad_sample.reshape(64, -1) for p in net.parameters()], dim=1)
    assert grads["head"].shape == (64, 6 * (net.head.in_features + 1))
    torch.testing.assert_close(grads["head"], grads["ew"], rtol=1e-5, atol=1e-6)


def test_predict_gives_the_class_and_its_probability(ai4i, tmp_path):
    from client.portal_commands import predict
    from portal.artifact import build_artifact

    x, y, scaler = _fm_rows(ai4i)
    net = build_model(scaler.n_inputs, hidden=(8,), outputs=scaler.n_outputs)
    train_local(net, x, y, spec=FM, scaler=scaler, config=TrainConfig(epochs=3))
    blob = build_artifact(get_weights(net), task=FM.to_dict(), scaler_json=scaler.to_json(), hidden=[8], source={})
    model = tmp_path / "model.zip"
    model.write_bytes(blob)
    data = tmp_path / "new.csv"
    ai4i.head(50).to_csv(data, index=False)
    report = predict(model, data)
    out, metrics = report.path, report.metrics
    scores = pd.read_csv(out)
    assert list(scores.columns) == ["UDI", "Product ID", "predicted_Failure mode", "p_Failure mode"]
    assert set(scores["predicted_Failure mode"]) <= set(FM.classes)
    assert scores["p_Failure mode"].between(1 / 6, 1).all()
    assert "macro_f1" in metrics and "recall_none" in metrics
    # Without the mode flags (new parts, no label yet) it still scores.
    unlabelled = tmp_path / "unlabelled.csv"
    ai4i.head(50).drop(columns=[*MODES]).to_csv(unlabelled, index=False)
    report = predict(model, unlabelled)
    assert report.metrics == {} and report.predictions == 50 and len(pd.read_csv(report.path)) == 50


def test_an_artifact_whose_head_does_not_fit_the_classes_is_refused(ai4i):
    from portal.artifact import build_artifact, read_artifact
    from sangsaeng.errors import ModelArtifactError

    _, _, scaler = _fm_rows(ai4i)
    net = build_model(scaler.n_inputs, hidden=(8,))  # one output for six classes
    blob = build_artifact(get_weights(net), task=FM.to_dict(), scaler_json=scaler.to_json(), hidden=[8], source={})
    with pytest.raises(ModelArtifactError, match=r"output layer has shape \(1, 8\); the scaler's task needs 6"):
        read_artifact(blob)


SPEC_FILE = """
[task]
name = "failure-mode-from-spec"
kind = "multiclass"
label = "Failure mode"
label_from = ["TWF", "HDF", "PWF", "OSF", "RNF"]
classes = ["none", "TWF", "HDF", "PWF", "OSF", "RNF"]
features = ["Air temperature [K]", "Process temperature [K]", "Rotational speed [rpm]", "Torque [Nm]",
            "Tool wear [min]"]
id_columns = ["UDI", "Product ID", "Type"]
leak_columns = ["Machine failure"]
"""


@pytest.mark.slow
def test_simulate_runs_a_multiclass_task_from_a_spec_file(tmp_path):
    spec = tmp_path / "task.toml"
    spec.write_text(SPEC_FILE)
    out = tmp_path / "run"
    done = sangsaeng("simulate", "--data", str(dataset_path("ai4i2020.csv")), "--task-spec", str(spec),
                     "--split-by", "Type", "--rounds", "2", "--local-epochs", "1", "--out", str(out))  # fmt: skip
    assert done.exit_code == 0, explain(done)
    results = json.loads((out / "results.json").read_text())
    assert results["task"] == {"name": "failure-mode-from-spec", "kind": "multiclass", "primary_metric": "macro_f1"}
    final = results["federated"]["global"]
    assert {"macro_f1", "accuracy", "balanced_accuracy", "macro_roc_auc", "recall_none", "recall_RNF"} <= set(final)
    assert [r["round"] for r in results["rounds"]] == [1, 2]
    assert final["macro_roc_auc"] > results["initial"]["macro_roc_auc"]
    assert "macro_f1" in done.stdout
