"""Inference and validation for the newer task kinds: `sangsaeng client predict` on sequence tasks
(one prediction per group at its latest row, or per window with --all-windows), multiclass
sequences (class and probability), what a model card states, and `sangsaeng client validate`'s
per-class and per-window counts. Real networks, trained for a moment on a few turbofan engines."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from client.portal_commands import predict
from models.datasets import sample_path
from models.errors import SiteDataError
from models.nets import build_model, get_weights
from models.scaler import FederatedScaler
from models.schema import validate_frame
from models.sequence import SequenceSpec
from models.tasks import TaskSpec, get_task
from models.training import TrainConfig, predict_frame, prepare, train_local
from portal.artifact import build_artifact, describe_inputs, read_artifact
from sangsaeng.cli import app
from sangsaeng.errors import ModelArtifactError

RUL = get_task("turbofan-rul")
UNITS = 6
runner = CliRunner()


def said(result) -> str:
    """The command's output with the terminal's line wrapping undone."""
    return " ".join(result.output.split())


@pytest.fixture(scope="module")
def engines() -> pd.DataFrame:
    """The raw rows of the first few engines of the C-MAPSS sample, as a site would export them."""
    raw = pd.read_csv(sample_path("turbofan-rul"))
    return raw[raw["unit"].isin(sorted(raw["unit"].unique())[:UNITS])].reset_index(drop=True)


def _artifact(engines: pd.DataFrame, spec: TaskSpec, *, hidden: tuple[int, ...] = (8,)) -> bytes:
    """A tcn trained one epoch at one site (scaler from that site alone), packed as a model artifact."""
    frame = validate_frame(engines, spec, source="site.csv")
    scaler = FederatedScaler.fit_pooled(frame, spec)
    x, y = prepare(frame, spec, scaler)
    net = build_model(scaler.n_inputs, name="tcn", hidden=hidden, outputs=scaler.n_outputs)
    train_local(net, x, y, spec=spec, scaler=scaler, config=TrainConfig(epochs=1, batch_size=128))
    return build_artifact(get_weights(net), task=spec.to_dict(), scaler_json=scaler.to_json(), hidden=list(hidden),
                          source={}, model="tcn")  # fmt: skip


@pytest.fixture(scope="module")
def rul_model(engines, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "turbofan.zip"
    path.write_bytes(_artifact(engines, RUL))
    return path


def _write(frame: pd.DataFrame, path):
    frame.to_csv(path, index=False)
    return path


# -- predict on a sequence task --------------------------------------------------------------
def test_one_prediction_per_engine_at_its_latest_cycle(rul_model, engines, tmp_path):
    report = predict(rul_model, _write(engines, tmp_path / "fleet.csv"))
    scores = pd.read_csv(report.path)
    assert list(scores.columns) == ["unit", "cycle", "operator", "predicted_RUL"]
    assert len(scores) == UNITS == report.predictions == report.groups
    latest = engines.groupby("unit")["cycle"].max()
    assert scores.set_index("unit")["cycle"].to_dict() == latest.to_dict()
    assert report.windows == len(engines) and report.dropped_groups == report.dropped_rows == 0  # pad, stride 1
    assert np.isfinite(scores["predicted_RUL"]).all()
    # Labels present: the RUL metrics over every window, and at each engine's last cycle.
    assert {"rmse", "mae", "phm08_score", "rmse_last"} <= set(report.metrics)
    truth = engines.loc[engines.groupby("unit")["cycle"].idxmax()].set_index("unit")["RUL"]
    error = scores.set_index("unit")["predicted_RUL"] - truth
    assert report.metrics["rmse_last"] == pytest.approx(float(np.sqrt(np.mean(error**2))), rel=1e-6)


def test_all_windows_and_the_latest_agree(rul_model, engines, tmp_path):
    data = _write(engines, tmp_path / "fleet.csv")
    latest = pd.read_csv(predict(rul_model, data, tmp_path / "latest.csv").path)
    report = predict(rul_model, data, tmp_path / "all.csv", all_windows=True)
    every = pd.read_csv(report.path)
    assert len(every) == report.windows == len(engines) == report.predictions  # stride 1, pad: one per row
    assert list(every.columns) == list(latest.columns)
    assert every.groupby("unit")["cycle"].apply(lambda c: c.is_monotonic_increasing).all()
    last = every.loc[every.groupby("unit")["cycle"].idxmax()].reset_index(drop=True)
    pd.testing.assert_frame_equal(last, latest)


def test_shuffled_rows_give_the_same_predictions(rul_model, engines, tmp_path):
    ordered = predict(rul_model, _write(engines, tmp_path / "a.csv"), tmp_path / "a.scores.csv", all_windows=True)
    shuffled = engines.sample(frac=1.0, random_state=3)
    mixed = predict(rul_model, _write(shuffled, tmp_path / "b.csv"), tmp_path / "b.scores.csv", all_windows=True)
    pd.testing.assert_frame_equal(pd.read_csv(ordered.path), pd.read_csv(mixed.path))
    assert ordered.metrics == pytest.approx(mixed.metrics)


def test_new_engines_without_a_label_are_scored(rul_model, engines, tmp_path):
    report = predict(rul_model, _write(engines.drop(columns=["RUL"]), tmp_path / "new.csv"))
    assert report.metrics == {} and len(pd.read_csv(report.path)) == UNITS


def test_a_missing_order_column_is_refused_with_its_name(rul_model, engines, tmp_path):
    data = _write(engines.drop(columns=["cycle", "RUL"]), tmp_path / "no-cycle.csv")
    with pytest.raises(SiteDataError, match=r"no-cycle\.csv.*order column 'cycle' of \[task.sequence\] not found"):
        predict(rul_model, data)
    done = runner.invoke(app, ["client", "predict", str(rul_model), str(data)])
    assert done.exit_code == 2 and "order column 'cycle'" in said(done) and "no-cycle.csv" in said(done)


def test_short_groups_under_drop_get_no_prediction_and_are_counted(engines, tmp_path):
    spec = dataclasses.replace(RUL, sequence=SequenceSpec("unit", "cycle", window=30, stride=10, short="drop"))
    model = tmp_path / "drop.zip"
    model.write_bytes(_artifact(engines, spec))
    first = engines["unit"].min()
    short = engines[(engines["unit"] != first) | (engines["cycle"] <= 12)]  # engine `first` keeps 12 cycles
    report = predict(model, _write(short, tmp_path / "short.csv"), all_windows=True)
    scores = pd.read_csv(report.path)
    lengths = short.groupby("unit").size()
    assert report.groups == UNITS and report.dropped_groups == 1 and first not in set(scores["unit"])
    assert report.dropped_rows == 12 + 29 * (UNITS - 1)
    # A window ends at every 10th cycle counted back from each engine's last.
    assert report.windows == len(scores) == sum((n - 30) // 10 + 1 for n in lengths.drop(first))
    done = runner.invoke(app, ["client", "predict", str(model), str(tmp_path / "short.csv")])
    assert done.exit_code == 0, done.output
    assert f"({UNITS - 1} prediction(s))" in said(done)
    assert "no prediction for 1 group(s) shorter than the window" in said(done)


def test_cli_flag_writes_every_window(rul_model, engines, tmp_path):
    data = _write(engines, tmp_path / "fleet.csv")
    out = tmp_path / "every.csv"
    done = runner.invoke(app, ["client", "predict", str(rul_model), str(data), "--all-windows", "--out", str(out)])
    assert done.exit_code == 0, done.output
    assert len(pd.read_csv(out)) == len(engines)
    assert f"{UNITS} group(s), {len(engines)} window(s); written: one per window" in said(done)
    assert "rmse_last:" in said(done)
    done = runner.invoke(app, ["client", "predict", str(rul_model), str(data), "--out", str(out)])
    assert done.exit_code == 0 and len(pd.read_csv(out)) == UNITS and "one per group" in said(done)


STAGES = ("healthy", "degrading", "critical")


def _staged(engines: pd.DataFrame) -> pd.DataFrame:
    stage = np.select([engines["RUL"] > 100, engines["RUL"] > 30], ["healthy", "degrading"], "critical")
    return engines.assign(stage=stage).drop(columns=["RUL"])


def test_a_multiclass_sequence_gives_the_class_and_its_probability(engines, tmp_path):
    spec = TaskSpec(name="turbofan-stage", kind="multiclass", label="stage", features=RUL.features,
                    id_columns=RUL.id_columns, classes=STAGES, sequence=RUL.sequence)  # fmt: skip
    staged = _staged(engines)
    model = tmp_path / "stage.zip"
    model.write_bytes(_artifact(staged, spec))
    report = predict(model, _write(staged, tmp_path / "staged.csv"))
    scores = pd.read_csv(report.path)
    assert list(scores.columns) == ["unit", "cycle", "operator", "predicted_stage", "p_stage"]
    assert len(scores) == UNITS and set(scores["predicted_stage"]) <= set(STAGES)
    assert scores["p_stage"].between(1 / 3, 1).all()
    assert {"macro_f1", "accuracy", "recall_critical"} <= set(report.metrics)


# -- the model and its card ------------------------------------------------------------------
def test_the_card_states_kind_window_and_input_columns(rul_model):
    content = read_artifact(rul_model.read_bytes())
    described = describe_inputs(content)
    assert described == {
        "kind": "regression", "label": "RUL",
        "window": {"group": "unit", "order": "cycle", "window": 30, "stride": 1, "short": "pad"},
        "input_columns": list(RUL.features), "derived_features": {}, "input_width": len(RUL.features),
    }  # fmt: skip


def test_the_card_of_a_multiclass_row_model_states_its_classes(ai4i):
    spec = get_task("failure-mode")
    frame = validate_frame(ai4i.head(300), spec, source="ai4i")
    scaler = FederatedScaler.fit_pooled(frame, spec)
    net = build_model(scaler.n_inputs, hidden=(4,), outputs=scaler.n_outputs)
    blob = build_artifact(get_weights(net), task=spec.to_dict(), scaler_json=scaler.to_json(), hidden=[4], source={})
    described = describe_inputs(read_artifact(blob))
    assert described["kind"] == "multiclass" and described["classes"] == list(spec.classes)
    assert described["window"] is None and "Type" in described["input_columns"]
    assert described["derived_features"] == dict(spec.derived) and described["input_width"] == scaler.n_inputs


def test_a_tcn_artifact_with_a_wrong_array_is_refused(rul_model):
    content = read_artifact(rul_model.read_bytes())
    weights = [w.copy() for w in content.weights]
    weights[2] = np.ones(5, dtype=np.float32)  # GroupNorm's scale of an 8-channel block
    blob = build_artifact(weights, task=content.task, scaler_json=content.scaler_json, hidden=[8], source={},
                          model="tcn")  # fmt: skip
    with pytest.raises(ModelArtifactError, match=r"weight array 2 has shape \(5,\); .* needs \(8,\)"):
        read_artifact(blob)


def test_predict_frame_latest_is_each_groups_last_window(rul_model, engines):
    content = read_artifact(rul_model.read_bytes())
    scaler = FederatedScaler.from_json(content.scaler_json)
    net = build_model(scaler.n_inputs, name="tcn", hidden=content.hidden)
    from models.nets import set_weights

    set_weights(net, content.weights)
    frame = validate_frame(engines, RUL, source="site.csv")
    scored = predict_frame(net, frame, spec=RUL, scaler=scaler, batch_size=100)  # batches change nothing
    whole = predict_frame(net, frame, spec=RUL, scaler=scaler)
    np.testing.assert_allclose(scored.predictions, whole.predictions, rtol=1e-5)
    latest = scored.latest()
    assert len(latest.rows) == UNITS
    assert (frame["cycle"].to_numpy()[latest.rows] == frame.groupby("unit")["cycle"].max().to_numpy()).all()


# -- validate ----------------------------------------------------------------------------------
def test_validate_counts_classes_and_names_the_absent_ones(ai4i, tmp_path):
    path = _write(ai4i.head(200), tmp_path / "line.csv")
    done = runner.invoke(app, ["client", "validate", "--task", "failure-mode", "--data", str(path)])
    assert done.exit_code == 0, done.output
    frame = validate_frame(ai4i.head(200), get_task("failure-mode"), source="line.csv")
    counts = frame["Failure mode"].value_counts()
    expected = ", ".join(f"{c} {int(counts.get(c, 0))}" for c in get_task("failure-mode").classes)
    assert f"classes: {expected}" in said(done)
    absent = [c for c in get_task("failure-mode").classes if c not in counts.index]
    assert absent and f"no row of class(es) {absent} at this site" in said(done)


def test_validate_counts_groups_rows_and_windows(engines, tmp_path):
    path = _write(engines, tmp_path / "fleet.csv")
    done = runner.invoke(app, ["client", "validate", "--task", "turbofan-rul", "--data", str(path)])
    assert done.exit_code == 0, done.output
    assert (f"sequence: {UNITS} group(s) of 'unit', {len(engines)} rows, {len(engines)} window(s) of 30 rows "
            '(stride 1, short = "pad")') in said(done)  # fmt: skip
    spec = tmp_path / "drop.toml"
    features = ", ".join(f'"{c}"' for c in RUL.features)
    spec.write_text(f'[task]\nname = "rul-drop"\nkind = "regression"\nlabel = "RUL"\nfeatures = [{features}]\n'
                    'id_columns = ["operator"]\n\n[task.sequence]\ngroup = "unit"\norder = "cycle"\nwindow = 100\n'
                    'short = "drop"\n')  # fmt: skip
    lengths = engines.groupby("unit").size()
    done = runner.invoke(app, ["client", "validate", "--task", str(spec), "--data", str(path)])
    assert done.exit_code == 0, done.output
    windows = int((lengths - 99).clip(lower=0).sum())
    dropped_rows = int(np.minimum(lengths, 99).sum())
    assert f"{windows} window(s) of 100 rows" in said(done)
    assert f"dropped: {int((lengths < 100).sum())} group(s) shorter than the window, {dropped_rows} row(s)" in said(
        done
    )


def test_the_runs_operating_point_goes_into_the_artifact_and_predict_flags_by_it(ai4i, tmp_path):
    """A binary run's threshold, chosen from its merged held-out histograms, travels in the artifact (whose
    hash the signed card names, and which the card repeats); `predict` writes score, flag and threshold."""
    import json

    from coordinator.checkpoint import RunRecorder
    from models.histogram import build_histogram, run_operating_point
    from models.training import predict as predict_scores
    from portal.artifact import artifact_from_run

    spec = get_task("predictive-maintenance")
    frame = validate_frame(ai4i.head(1500), spec, source="ai4i")
    scaler = FederatedScaler.fit_pooled(frame, spec)
    x, y = prepare(frame, spec, scaler)
    net = build_model(scaler.n_inputs, hidden=(8,))
    train_local(net, x, y, spec=spec, scaler=scaler, config=TrainConfig(epochs=2, batch_size=128))
    scores = predict_scores(net, x, spec=spec, scaler=scaler)
    merged = json.loads(build_histogram("binary", y, scores).to_json())  # the rows scored below, here
    header = {"run_id": "r1", "config": {"task": spec.to_dict(), "model": "mlp", "hidden": [8],
                                         "operating_rule": "recall>=0.9"}, "scaler": scaler.to_json()}  # fmt: skip
    recorder = RunRecorder(tmp_path / "run", header)
    recorder.save_checkpoint(1, get_weights(net))
    recorder.update_round(1, eval_histogram=merged)
    recorder.set(status="completed")

    blob, _ = artifact_from_run(tmp_path / "run")
    point = read_artifact(blob).operating_point
    assert point == run_operating_point(recorder.manifest["rounds"], "recall>=0.9") and point["rule"] == "recall>=0.9"
    model = tmp_path / "model.zip"
    model.write_bytes(blob)
    report = predict(model, _write(ai4i.head(1500), tmp_path / "parts.csv"), tmp_path / "scores.csv")
    written = pd.read_csv(report.path)
    label = spec.label
    assert set(written["threshold"]) == {point["threshold"]}
    assert (written[f"flag_{label}"] == (written[f"p_{label}"] >= point["threshold"])).all()
    # The share flagged on these rows is the workload the histogram promised for them.
    assert written[f"flag_{label}"].mean() == pytest.approx(point["workload"], abs=1 / len(written))
    with pytest.raises(ModelArtifactError, match="operating_point needs a threshold"):
        read_artifact(build_artifact(get_weights(net), task=spec.to_dict(), scaler_json=scaler.to_json(), hidden=[8],
                                     source={}, operating_point={"threshold": 2}))  # fmt: skip


def test_a_multiclass_run_flags_any_failure_mode_by_its_operating_point(ai4i, tmp_path):
    """Failure modes: the card's threshold applies to 1 - P(none); predict writes p_defect, flag_defect, threshold."""
    import json

    from coordinator.checkpoint import RunRecorder
    from models.histogram import build_histogram
    from models.training import predict as predict_scores
    from portal.artifact import artifact_from_run

    spec = get_task("failure-mode")
    frame = validate_frame(ai4i.head(2000), spec, source="ai4i")
    scaler = FederatedScaler.fit_pooled(frame, spec)
    x, y = prepare(frame, spec, scaler)
    net = build_model(scaler.n_inputs, hidden=(8,), outputs=scaler.n_outputs)
    train_local(net, x, y, spec=spec, scaler=scaler, config=TrainConfig(epochs=2, batch_size=128))
    proba = predict_scores(net, x, spec=spec, scaler=scaler)
    merged = json.loads(build_histogram("multiclass", y, proba, classes=scaler.classes).to_json())
    header = {"run_id": "r2", "config": {"task": spec.to_dict(), "model": "mlp", "hidden": [8],
                                         "operating_rule": "recall>=0.9"}, "scaler": scaler.to_json()}  # fmt: skip
    recorder = RunRecorder(tmp_path / "run", header)
    recorder.save_checkpoint(1, get_weights(net))
    recorder.update_round(1, eval_histogram=merged)
    recorder.set(status="completed")
    blob, _ = artifact_from_run(tmp_path / "run")
    point = read_artifact(blob).operating_point
    assert point is not None and point["normal_class"] == "none"
    model = tmp_path / "model.zip"
    model.write_bytes(blob)
    report = predict(model, _write(ai4i.head(2000), tmp_path / "parts.csv"), tmp_path / "scores.csv")
    written = pd.read_csv(report.path)
    assert set(written["threshold"]) == {point["threshold"]}
    assert (written["flag_defect"] == (written["p_defect"] >= point["threshold"])).all()
    assert written["flag_defect"].mean() == pytest.approx(point["workload"], abs=0.01)  # within about one bin
