"""What each supplier got back in a deployment: its line alone / with the network, measured at the site.

The runs are the real deployment ServerApp (config from the run config) and ClientApps in
Flower's message loop in this process (`tests.loopback`). Each site's "alone" and
"with_network" are recomputed here from the site's own rows: the held-out split, the run's
initial model trained alone with the run's settings, and the final checkpoint.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from client.client_app import SiteClient, make_client_app
from client.site import SiteConfig
from coordinator import server_app
from coordinator.checkpoint import load_checkpoint, read_manifest
from coordinator.config import FederationConfig
from coordinator.simulation import write_site_files
from models.datasets import holdout_split
from models.histogram import EvalHistogram, build_histogram, histogram_metrics
from models.nets import get_weights, set_weights
from models.scaler import FederatedScaler
from models.schema import load_site_data
from models.tasks import get_task
from models.training import TrainConfig, predict, prepare, task_metrics, train_local
from privacy.errors import BudgetExhausted
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
def test_under_per_site_dp_the_local_only_model_is_charged_to_the_ledger_and_the_report_verifies(ai4i, tmp_path):
    # Sites h and l set budgets of their own that leave room for the local-only model; m has only the run's target.
    roomy = {"h": SitePrivacyPolicy(max_epsilon=12.0), "l": SitePrivacyPolicy(max_epsilon=12.0)}
    config, sites, results = _deploy(ai4i, tmp_path, policies=roomy, dp_epsilon=3.0, model="ple", hidden=(),
                                     batch_size=256)  # fmt: skip
    per_site = results["contribution"]["per_site"]
    manifest = read_manifest(config.out_dir)
    released = manifest["rounds"][-1]["per_site"]  # the last round's DP evaluations, noisy and charged
    assert all(per_site[s]["with_network"] == released[s]["roc_auc"] for s in per_site)
    # l (the largest line) trained and released its local-only model; its noisy ROC-AUC may read NaN (null) when
    # the noise leaves a class empty, so the release itself is checked. m refused: no model, no figure.
    assert per_site["m"]["alone"] is None and "m" not in manifest["local_only"]["per_site"]
    assert "l" in manifest["local_only"]["per_site"]
    assert "budget exhausted" in next(iter(manifest["local_only"]["problems"].values()))
    report = json.loads((config.out_dir / "privacy" / "report.json").read_text(encoding="utf-8"))
    for site in sites:
        entries = PrivacyLedger(site.ledger_file, site.name).load()["entries"]
        kinds = [e.get("mechanism") for e in entries]
        if site.name == "m":
            assert "local_only_training" not in kinds  # refused before anything was charged
            continue
        assert kinds[-2:] == ["local_only_training", "local_only_evaluation"]
        training, evaluation = entries[-2:]
        run = PrivacyLedger(site.ledger_file, site.name).load()["runs"][results["run_id"]]
        assert training["noise_multiplier"] == run["noise_multiplier"] and training["steps"] == run["planned_steps"]
        # "alone" is what the site's charged, noisy release says, and the signed report lists both releases.
        # (NaN, written as null, where the noise leaves a small line's few held-out positives unreadable.)
        expected = histogram_metrics(EvalHistogram.from_json(evaluation["histogram"]))["roc_auc"]
        got = per_site[site.name]["alone"]
        assert got is None if math.isnan(expected) else got == pytest.approx(expected, abs=1e-12)
        listed = [m["mechanism"] for m in report["sites"][site.name]["mechanisms"]]
        assert listed[-2:] == ["local_only_training", "local_only_evaluation"]
        assert report["sites"][site.name]["epsilon"] == pytest.approx(evaluation["epsilon"])
        assert evaluation["epsilon"] <= 12.0
    privacy = config.out_dir / "privacy"
    verify_report(privacy / "report.json", privacy / "coordinator.pub.pem")
    # A report that leaves the local-only training out no longer adds up.
    from privacy.errors import ReportInvalid
    from privacy.keys import PUBLIC_NAME, load_signing_key
    from privacy.report import write_signed_report

    forged = json.loads(json.dumps(report))
    forged["sites"]["h"]["mechanisms"] = [m for m in forged["sites"]["h"]["mechanisms"]
                                          if m["mechanism"] != "local_only_training"]  # fmt: skip
    path = write_signed_report(forged, tmp_path / "forged", load_signing_key(config.key_dir))
    with pytest.raises(ReportInvalid, match="local_only_evaluation"):
        verify_report(path, tmp_path / "forged" / PUBLIC_NAME)


def test_a_site_without_a_dp_round_refuses_the_local_only_model_under_dp_naming_why(ai4i, tmp_path):
    site_files, _ = write_site_files(ai4i.head(600), "Type", tmp_path, spec=PM)
    name, path = next(iter(site_files.items()))
    site = SiteConfig(name=name, data_path=path, privacy=SitePrivacyPolicy(max_epsilon=5.0, dp_required=True))
    frame = load_site_data(path, PM)
    scaler = FederatedScaler.fit_pooled(frame, PM)
    model = FederationConfig(task=PM).new_model(scaler.n_inputs, outputs=scaler.n_outputs, seed=0)
    config = {ConfigKey.PHASE: PHASE_LOCAL_ONLY, ConfigKey.TASK: PM.to_json(), ConfigKey.SCALER: scaler.to_json(),
              ConfigKey.HIDDEN: ",".join(str(h) for h in FederationConfig(task=PM).hidden)}  # fmt: skip
    with pytest.raises(BudgetExhausted, match="no DP round of run unnamed-run was trained here"):
        SiteClient(site).evaluate(get_weights(model), config)
    assert not any(e.get("mechanism") for e in PrivacyLedger(site.ledger_file, site.name).load()["entries"])


def test_a_site_that_gives_no_local_only_score_gets_null_and_the_run_completes(ai4i, tmp_path):
    # Site h requires DP: it spends its whole budget on the run's rounds, and cannot afford the local-only model.
    strict = {"h": SitePrivacyPolicy(max_epsilon=8.0, dp_required=True)}
    config, sites, results = _deploy(ai4i, tmp_path, policies=strict, model="ple", hidden=())
    assert results["status"] == "completed"
    per_site = results["contribution"]["per_site"]
    # h's "with network" is its noisy DP evaluation of the last round: released (h took part), though it may read
    # NaN (null) when the noise leaves a class empty, so the release itself is checked.
    assert per_site["h"]["alone"] is None and "h" in read_manifest(config.out_dir)["rounds"][-1]["per_site"]
    assert all(per_site[s]["alone"] is not None for s in ("l", "m"))
    [problem] = read_manifest(config.out_dir)["local_only"]["problems"].values()
    assert problem.startswith("site 'h': budget exhausted: a local-only model") and "budget of 8.000" in problem
