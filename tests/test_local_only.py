"""What each supplier got back in a deployment: its line alone / with the network, measured at the site.

The runs are the real deployment ServerApp (config from the run config) and ClientApps in
Flower's message loop in this process (`tests.loopback`). Each site's "alone" and
"with_network" are recomputed here from the site's own rows: the held-out split, the run's
initial model trained alone with the run's settings, and the final checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from client.client_app import SiteClient, make_client_app
from client.local_only import DP_REFUSAL
from client.site import SiteConfig
from coordinator import server_app
from coordinator.checkpoint import load_checkpoint, read_manifest
from coordinator.config import FederationConfig
from coordinator.simulation import write_site_files
from models.datasets import holdout_split
from models.histogram import build_histogram, histogram_metrics
from models.nets import get_weights, set_weights
from models.scaler import FederatedScaler
from models.schema import load_site_data
from models.tasks import get_task
from models.training import TrainConfig, predict, prepare, task_metrics, train_local
from privacy.errors import PolicyError
from privacy.ledger import PrivacyLedger
from privacy.policy import SitePrivacyPolicy
from privacy.report import verify_report
from sangsaeng.protocol import PHASE_LOCAL_ONLY, ConfigKey
from tests.loopback import run_in_process

PM = get_task("predictive-maintenance")


def _deploy(ai4i, tmp_path: Path, policies=None, **settings) -> tuple[FederationConfig, list[SiteConfig], dict]:  # type: ignore[no-untyped-def]
    site_files, _ = write_site_files(ai4i.head(3000), "Type", tmp_path / "data", spec=PM)
    config = FederationConfig(task=PM, num_rounds=2, local_epochs=1, min_sites=3, out_dir=tmp_path / "run",
                              key_dir=tmp_path / "keys", **settings)  # fmt: skip
    sites = [SiteConfig(name=name, data_path=path, holdout_seed=config.seed,
                        privacy=(policies or {}).get(name, SitePrivacyPolicy()))
             for name, path in site_files.items()]  # fmt: skip
    run_in_process(server_app.app, make_client_app(sites), len(sites), run_config=config.to_run_config())
    return config, sites, json.loads((config.out_dir / "results.json").read_text(encoding="utf-8"))


def test_a_deployment_reports_each_line_alone_and_with_the_network_as_its_own_rows_give_them(ai4i, tmp_path):
    config, sites, results = _deploy(ai4i, tmp_path)
    per_site = results["contribution"]["per_site"]
    manifest = read_manifest(config.out_dir)
    scaler = FederatedScaler.from_json(manifest["scaler"])
    final = manifest["rounds"][-1]
    weights, _ = load_checkpoint(config.out_dir / final["checkpoint"], sha256=final["checkpoint_sha256"])
    assert sorted(per_site) == sorted(s.name for s in sites)
    for site in sites:
        # The site's own rows, as it splits them; the run's initial model, trained on them alone.
        train, test = holdout_split(load_site_data(site.data_path, PM), PM, test_fraction=site.holdout_fraction,
                                    seed=site.holdout_seed)  # fmt: skip
        x, y = prepare(train, PM, scaler)
        x_test, y_test = prepare(test, PM, scaler)
        alone = config.new_model(scaler.n_inputs, outputs=scaler.n_outputs, seed=config.seed)
        train_local(alone, x, y, spec=PM, scaler=scaler, config=TrainConfig(
            epochs=config.num_rounds * config.local_epochs, batch_size=config.batch_size, lr=config.lr,
            weight_decay=config.weight_decay, seed=config.seed * 7919, class_weight=config.class_weight,
        ))  # fmt: skip
        network = config.new_model(scaler.n_inputs, outputs=scaler.n_outputs, seed=config.seed)
        set_weights(network, weights)
        for model, key in ((alone, "alone"), (network, "with_network")):
            scores = predict(model, x_test, spec=PM, scaler=scaler)
            binned = histogram_metrics(build_histogram(PM.kind, y_test, scores, classes=scaler.classes))
            assert per_site[site.name][key] == pytest.approx(binned["roc_auc"], abs=1e-9), (site.name, key)
            exact = task_metrics(PM, y_test, scores, None, classes=scaler.classes)["roc_auc"]
            # 400 bins: near the exact value (a small line's weak local model puts many scores in one bin)
            assert per_site[site.name][key] == pytest.approx(exact, abs=0.05), (site.name, key)
    assert "alone" not in results["contribution"].get("not_available", {})
    assert manifest["local_only"]["problems"] == {} and sorted(manifest["local_only"]["per_site"]) == sorted(per_site)
    # What `sangsaeng coordinator run` and the portal show: numbers, not n/a.
    from rich.console import Console

    from coordinator.report import contribution_table

    console = Console(record=True, width=160)
    console.print(contribution_table(results["contribution"]))
    text = console.export_text()
    assert all(f"{per_site[s.name]['alone']:.3f}" in text for s in sites)


@pytest.mark.slow
def test_under_per_site_dp_no_local_only_model_is_trained_and_the_report_verifies(ai4i, tmp_path):
    config, sites, results = _deploy(ai4i, tmp_path, dp_epsilon=3.0, model="ple", hidden=(), batch_size=256)
    contribution = results["contribution"]
    assert "per-site DP" in contribution["not_available"]["alone"]
    manifest = read_manifest(config.out_dir)
    released = manifest["rounds"][-1]["per_site"]  # the last round's DP evaluations, noisy and charged
    for site, entry in contribution["per_site"].items():
        assert entry["alone"] is None and entry["with_network"] == released[site]["roc_auc"]
        assert manifest["rounds"][-1]["dp_evaluation"][site]["round"] == config.num_rounds
    for site in sites:  # the site spent nothing on it: its ledger holds the run's rounds and releases only
        entries = PrivacyLedger(site.ledger_file, site.name).load()["entries"]
        assert {e["round"] for e in entries} <= {0, 1, 2} and entries
    privacy = config.out_dir / "privacy"
    verify_report(privacy / "report.json", privacy / "coordinator.pub.pem")


def test_a_site_that_requires_dp_refuses_the_local_only_model_naming_why(ai4i, tmp_path):
    site_files, _ = write_site_files(ai4i.head(600), "Type", tmp_path, spec=PM)
    name, path = next(iter(site_files.items()))
    site = SiteConfig(name=name, data_path=path, privacy=SitePrivacyPolicy(max_epsilon=5.0, dp_required=True))
    frame = load_site_data(path, PM)
    scaler = FederatedScaler.fit_pooled(frame, PM)
    model = FederationConfig(task=PM).new_model(scaler.n_inputs, outputs=scaler.n_outputs, seed=0)
    config = {ConfigKey.PHASE: PHASE_LOCAL_ONLY, ConfigKey.TASK: PM.to_json(), ConfigKey.SCALER: scaler.to_json(),
              ConfigKey.HIDDEN: ",".join(str(h) for h in FederationConfig(task=PM).hidden)}  # fmt: skip
    with pytest.raises(PolicyError, match="no local-only model under DP"):
        SiteClient(site).evaluate(get_weights(model), config)
    assert DP_REFUSAL.startswith("no local-only model under DP")
    assert not site.ledger_file.exists()  # refused before anything was charged


def test_a_site_that_gives_no_local_only_score_gets_null_and_the_run_completes(ai4i, tmp_path):
    # Site h requires DP: it trains the run's rounds with DP-SGD on its own, and refuses the local-only model.
    strict = {"h": SitePrivacyPolicy(max_epsilon=8.0, dp_required=True)}
    config, sites, results = _deploy(ai4i, tmp_path, policies=strict, model="ple", hidden=())
    assert results["status"] == "completed"
    per_site = results["contribution"]["per_site"]
    assert per_site["h"]["alone"] is None and per_site["h"]["with_network"] is not None
    assert all(per_site[s]["alone"] is not None for s in ("l", "m"))
    problems = read_manifest(config.out_dir)["local_only"]["problems"]
    assert list(problems.values()) == [f"site 'h': {DP_REFUSAL}"]
