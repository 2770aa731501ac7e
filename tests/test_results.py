"""A run's result: one builder of results.json for simulation and deployment, one privacy summary.

The federations here run the real ServerApp and ClientApps through `tests.loopback` (Flower's
message loop in this process) instead of the Ray-backed runtime, so they take seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import flwr.simulation
import pytest

from client.client_app import make_client_app
from client.site import SiteConfig
from coordinator import report, server_app
from coordinator.config import FederationConfig
from coordinator.simulation import run_experiment, write_site_files
from models.tasks import get_task
from privacy.report import build_report
from privacy.summary import privacy_summary
from sangsaeng.files import json_safe
from tests.factories import dp_manifest
from tests.loopback import run_in_process

PM = get_task("predictive-maintenance")


def _read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> list[tuple[object, dict]]:
    """Every call of the results builder: (its comparison, the results it built)."""
    calls: list[tuple[object, dict]] = []
    real = report.build_results

    def spy(result, comparison=None):  # type: ignore[no-untyped-def]
        results = real(result, comparison)
        calls.append((comparison, json_safe(results)))  # a copy, as it was built
        return results

    monkeypatch.setattr(report, "build_results", spy)
    return calls


def test_simulation_and_deployment_build_results_json_with_one_builder(ai4i, tmp_path, monkeypatch, built):
    monkeypatch.setattr(flwr.simulation, "run_simulation", run_in_process)
    site_files, _ = write_site_files(ai4i.head(3000), "Type", tmp_path / "data", spec=PM)
    config = FederationConfig(task=PM, num_rounds=1, local_epochs=1, min_sites=2, out_dir=tmp_path / "simulation")

    # Simulation: run_experiment scores the RunResult the ServerApp hands back in this process.
    simulated = run_experiment(PM, site_files, config)
    # Deployment: the ServerApp Flower's SuperLink starts (config from the run config) writes results itself.
    deployed_dir = tmp_path / "deployment"
    sites = [SiteConfig(name=name, data_path=path, holdout_seed=config.seed) for name, path in site_files.items()]
    run_in_process(server_app.app, make_client_app(sites), len(sites),
                   run_config=config.replace(out_dir=deployed_dir).to_run_config())  # fmt: skip

    assert [comparison is None for comparison, _ in built] == [False, True]
    (_, from_simulation), (_, from_deployment) = built
    assert _read(config.out_dir / "results.json") == from_simulation
    assert _read(deployed_dir / "results.json") == from_deployment
    assert (config.out_dir / "metrics.png").exists() and (deployed_dir / "metrics.png").exists()
    deployed = _read(deployed_dir / "results.json")
    assert deployed["runtime"] == "deployment" and deployed["status"] == "completed" and deployed["error"] is None
    assert deployed["centralized"] is None and deployed["local_only"] is None
    assert sorted(deployed["sites"]) == sorted(simulated["sites"]) == ["h", "l", "m"]
    assert deployed["site_rows"] == simulated["site_rows"]  # what the sites report is what the simulation split
    assert deployed["federated"]["global"]["roc_auc"] > 0.5  # the sites' own held-out scores
    # The simulation reuses the score `evaluate_fn` gave the final weights in the last round.
    assert simulated["federated"]["global"] == {
        k: v for k, v in simulated["rounds"][-1]["metrics"].items() if k != "train_loss"
    }
    assert set(simulated["federated"]["per_site"]) == {"h", "l", "m"}
    # Both runtimes ask every site for its membership-inference check on the same path, on the same rows.
    for runtime in (simulated, deployed):
        assert set(runtime["membership_inference"]) == {"h", "l", "m"}
    assert {s: f["n_train"] for s, f in deployed["membership_inference"].items()} == {
        s: min(rows.values()) for s, rows in simulated["site_rows"].items()
    }
    assert simulated["plot"] == str(config.out_dir / "metrics.png")
    # The sites' merged histograms give the union's metrics: those the simulation computes on the pooled
    # held-out rows with the same weights, within the tie error of one bin (F1 at 0.5 exactly).
    merged = json.loads((config.out_dir / "manifest.json").read_text())["rounds"][-1]["federated_eval"]
    assert merged["roc_auc"] == pytest.approx(simulated["federated"]["global"]["roc_auc"], abs=0.01)
    assert merged["f1"] == pytest.approx(simulated["federated"]["global"]["f1"], abs=1e-9)
    for run in (simulated, deployed):
        point = run["operating_point"]
        assert point["rule"] == "recall>=0.95" and point["recall"] >= 0.95 and 0 < point["workload"] <= 1
        assert point["held_out_rows"] == run["held_out_rows"] and not point["noisy"]


def test_results_json_and_the_portal_take_one_privacy_summary(tmp_path):
    from portal.uploader import privacy_summary as portal_summary

    content = build_report(dp_manifest(sites=("plant-b", "plant-a"), rounds=3))
    path = tmp_path / "report.json"
    path.write_text(json.dumps(content, sort_keys=True))  # as the coordinator writes it
    summary = privacy_summary(content, report_path="privacy/report.json")
    assert summary["report"] == "privacy/report.json" and summary["central_dp"] is None
    assert list(summary["sites"]) == ["plant-a", "plant-b"]
    entry = summary["sites"]["plant-a"]
    assert list(entry["epsilon_by_round"]) == ["1", "2", "3"]
    assert entry["epsilon"] == entry["epsilon_by_round"]["3"] and entry["delta"] == 1e-5
    # The portal's run report: the same numbers, epsilon over rounds as a list.
    assert portal_summary(path) == {
        site: {"epsilon": s["epsilon"], "budget_epsilon": s["budget_epsilon"],
               "epsilon_by_round": list(s["epsilon_by_round"].values())}
        for site, s in summary["sites"].items()
    }  # fmt: skip


def test_a_privacy_summary_names_the_site_without_an_epsilon():
    from privacy.errors import ReportInvalid

    with pytest.raises(ReportInvalid, match="run-7/report.json: site 'plant-a' needs numeric 'epsilon'"):
        privacy_summary({"sites": {"plant-a": {"budget_epsilon": 4.0}}}, source="run-7/report.json")
