"""End to end in Flower's simulation runtime: real ServerApp, real ClientApps in Ray workers.

Starting the runtime costs seconds, so one federation is shared by most tests here.
"""

from __future__ import annotations

import json
import shutil

import pytest

from coordinator.config import FederationConfig
from coordinator.simulation import run_experiment, write_site_files
from models.tasks import get_task
from tests.conftest import explain, sangsaeng

pytestmark = pytest.mark.slow
PM = get_task("predictive-maintenance")


@pytest.fixture(scope="module")
def federation(ai4i, tmp_path_factory):
    """AI4I split by Type into three real sites, plus a fourth whose export is broken."""
    out = tmp_path_factory.mktemp("pm-run")
    site_files, _ = write_site_files(ai4i, "Type", out, spec=PM)
    broken = ai4i[ai4i["Type"] == "M"].head(300).copy()
    broken["Torque [Nm]"] = broken["Torque [Nm]"].astype(object)
    broken.loc[broken.index[4], "Torque [Nm]"] = "4O.2"
    site_files["broken"] = out / "sites" / "broken.csv"
    broken.to_csv(site_files["broken"], index=False)
    config = FederationConfig(task=PM, num_rounds=2, local_epochs=1, out_dir=out, min_sites=2)
    results = run_experiment(PM, site_files, config)
    return out, results, site_files, config


def test_three_sites_two_rounds_improve_on_the_initial_model(federation):
    _, results, _, _ = federation
    initial = results["initial"]["roc_auc"]
    after = [r["metrics"]["roc_auc"] for r in results["rounds"]]
    assert [r["round"] for r in results["rounds"]] == [1, 2]
    assert after[-1] > initial + 0.2, (initial, after)
    assert results["federated"]["global"]["roc_auc"] == pytest.approx(after[-1], abs=1e-9)
    assert all(r["sites_trained"] == ["h", "l", "m"] for r in results["rounds"])


def test_broken_site_is_reported_and_the_run_goes_on(federation):
    out, results, _, _ = federation
    assert set(results["sites"]) == {"h", "l", "m"}
    problem = results["excluded_sites"]["broken"]
    assert "broken.csv" in problem and "column 'Torque [Nm]'" in problem and "'4O.2'" in problem
    manifest = json.loads((out / "manifest.json").read_text())
    reasons = list(manifest["excluded_sites"].values())
    assert len(reasons) == 1 and reasons[0].startswith("site 'broken': ")
    assert manifest["status"] == "completed"


def test_results_json_compares_every_model_on_the_same_rows(federation):
    out, results, _, _ = federation
    on_disk = json.loads((out / "results.json").read_text())
    assert {"task", "sites", "centralized", "local_only", "federated", "rounds"} <= set(on_disk)
    assert on_disk["task"] == {"name": PM.name, "kind": "binary", "primary_metric": "roc_auc"}
    assert set(on_disk["local_only"]) == {"h", "l", "m"}
    assert set(on_disk["federated"]["per_site"]) == {"h", "l", "m"}
    held_out = sum(v["held_out"] for v in on_disk["site_rows"].values())
    assert on_disk["held_out_rows"] == held_out == 3001
    for block in (on_disk["centralized"], on_disk["federated"]["global"], *on_disk["local_only"].values()):
        assert set(block) == {"roc_auc", "pr_auc", "f1"}
    assert (out / "metrics.png").stat().st_size > 10_000
    # Each site that joined (not the broken one) attacked the final model: equal samples, a figure in [0, 1].
    assert set(on_disk["membership_inference"]) == {"h", "l", "m"}
    for site, figure in on_disk["membership_inference"].items():
        assert figure["n_train"] == figure["n_holdout"] == min(on_disk["site_rows"][site].values())
        assert 0.0 <= figure["auc"] <= 1.0 and figure["auc"] == max(figure["by_method"].values())


def test_checkpoint_and_manifest_after_every_round(federation):
    out, _, _, _ = federation
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["schema_hash"] == PM.schema_hash()
    assert manifest["config"]["num_rounds"] == 2 and manifest["config"]["strategy"] == "fedavg"
    for record in manifest["rounds"]:
        assert (out / record["checkpoint"]).exists()
        assert set(record["per_site"]) == {"h", "l", "m"}
        assert record["federated_eval"]["roc_auc"] > 0.5


def test_a_run_resumes_from_its_last_checkpoint(federation, tmp_path):
    out, _, site_files, config = federation
    copy = tmp_path / "resumed"
    shutil.copytree(out, copy)
    before = json.loads((copy / "manifest.json").read_text())
    results = run_experiment(PM, site_files, config.replace(out_dir=copy, num_rounds=3, resume=True))
    after = json.loads((copy / "manifest.json").read_text())
    assert after["run_id"] == before["run_id"]
    assert [r["round"] for r in after["rounds"]] == [1, 2, 3]
    assert after["rounds"][:2] == before["rounds"]  # finished rounds are not re-run
    assert (copy / "checkpoints" / "round_003.npz").exists()
    assert [r["round"] for r in results["rounds"]] == [1, 2, 3]


REGRESSION_SPEC = """
[task]
name = "process-temperature"
kind = "regression"
label = "Process temperature [K]"
features = ["Air temperature [K]", "Rotational speed [rpm]", "Torque [Nm]", "Type"]
categorical = ["Type"]
id_columns = ["UDI", "Product ID"]
leak_columns = ["TWF", "HDF", "PWF", "OSF", "RNF"]
"""


def _sangsaeng(*args):
    return sangsaeng(*args)


def test_simulate_runs_a_regression_task_from_a_spec_file(tmp_path):
    from tests.conftest import dataset_path

    spec = tmp_path / "task.toml"
    spec.write_text(REGRESSION_SPEC)
    out = tmp_path / "run"
    done = _sangsaeng("simulate", "--data", str(dataset_path("ai4i2020.csv")), "--task-spec", str(spec),
                      "--split-by", "Type", "--rounds", "2", "--local-epochs", "1", "--out", str(out))  # fmt: skip
    assert done.exit_code == 0, explain(done)
    results = json.loads((out / "results.json").read_text())
    assert results["task"] == {"name": "process-temperature", "kind": "regression", "primary_metric": "rmse"}
    assert set(results["federated"]["global"]) == {"rmse", "mae"}
    # Process temperature follows air temperature closely: far better than predicting the mean.
    assert results["federated"]["global"]["rmse"] < results["initial"]["rmse"]
    assert results["federated"]["global"]["rmse"] < 1.2
    assert "rmse" in done.stdout


def test_simulate_refuses_a_spec_whose_label_is_missing_before_training(tmp_path):
    from tests.conftest import dataset_path

    spec = tmp_path / "task.toml"
    spec.write_text(REGRESSION_SPEC.replace('label = "Process temperature [K]"', 'label = "Spindle vibration"'))
    out = tmp_path / "run"
    done = _sangsaeng("simulate", "--data", str(dataset_path("ai4i2020.csv")), "--task-spec", str(spec),
                      "--split-by", "Type", "--out", str(out))  # fmt: skip
    assert done.exit_code == 2
    assert "label column 'Spindle vibration' is not in the data" in done.stderr  # sangsaeng.console.fail
    assert not (out / "sites").exists() and not (out / "manifest.json").exists()


def test_demo_runs_on_the_embedded_kamp_data(tmp_path):
    out = tmp_path / "demo"
    done = _sangsaeng("demo", "--rounds", "1", "--local-epochs", "1", "--out", str(out))
    assert done.exit_code == 0, explain(done)
    results = json.loads((out / "results.json").read_text())
    assert results["task"]["name"] == "injection-molding-quality"
    assert len(results["sites"]) == 4 and set(results["dropped_groups"].values()) == {1}
    assert "federated (global model)" in done.stdout and "round   1" in done.stdout
    assert len(results["membership_inference"]) == 4 and "membership inference on the final model" in done.stdout
