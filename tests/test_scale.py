"""Large simulated federations: the seeded Dirichlet split, evaluation on a sample of sites, summarised tables."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays

from models.dirichlet import DirichletSplit, write_dirichlet_sites
from models.errors import TaskSpecError
from models.tasks import get_task
from tests.conftest import explain, sangsaeng


def _failure_share(split: DirichletSplit) -> np.ndarray:
    return split.mix[:, list(split.classes).index(1)]


def test_the_dirichlet_split_is_seeded_and_reproducible(tmp_path, ai4i):
    spec = get_task("predictive-maintenance")
    first, plan = write_dirichlet_sites(ai4i, spec, tmp_path / "a", n_sites=30, alpha=0.5, seed=3)
    again, _ = write_dirichlet_sites(ai4i, spec, tmp_path / "b", n_sites=30, alpha=0.5, seed=3)
    other, _ = write_dirichlet_sites(ai4i, spec, tmp_path / "c", n_sites=30, alpha=0.5, seed=4)
    assert list(first) == list(again) and len(first) == 30
    for name in first:
        assert first[name].read_bytes() == again[name].read_bytes()
    assert any(first[n].read_bytes() != other[n].read_bytes() for n in first)
    sizes = [len(pd.read_csv(p)) for p in first.values()]
    assert sizes == plan.sizes.tolist() and min(sizes) >= 20
    assert json.loads((tmp_path / "a" / "sites" / "dirichlet.json").read_text())["rows"] == sum(sizes)


def test_sizes_and_labels_follow_alpha(ai4i):
    labels = ai4i["Machine failure"]
    skewed = DirichletSplit.plan(labels, n_sites=2000, alpha=0.1, seed=0, rows_per_site=60)
    even = DirichletSplit.plan(labels, n_sites=2000, alpha=100.0, seed=0, rows_per_site=60)
    # Mean rows per site as asked; a small alpha spreads the sizes far more than a large one.
    assert skewed.sizes.mean() == pytest.approx(60) and even.sizes.mean() == pytest.approx(60)
    assert skewed.sizes.std() > 5 * even.sizes.std()
    # Class mixes: near the table's failure rate at a large alpha, scattered (many all-normal sites) at a small one.
    rate = labels.mean()
    assert abs(_failure_share(even).mean() - rate) < 0.01 and _failure_share(even).std() < 0.03
    assert _failure_share(skewed).std() > 3 * _failure_share(even).std()
    assert (_failure_share(skewed) < 1e-3).mean() > 0.5


def test_the_split_refuses_bad_settings(ai4i):
    with pytest.raises(TaskSpecError, match="alpha must be positive"):
        DirichletSplit.plan(ai4i["Machine failure"], n_sites=5, alpha=0.0)
    with pytest.raises(TaskSpecError, match="at least 1 site"):
        DirichletSplit.plan(ai4i["Machine failure"], n_sites=0, alpha=1.0)


@pytest.mark.slow  # about 100 s on 2 busy cores: 50 sites profiled, 2 rounds, 50 local-only baselines
def test_simulate_50_dirichlet_sites_evaluating_on_a_sample(tmp_path):
    out = tmp_path / "run"
    done = sangsaeng("simulate", "--task", "predictive-maintenance", "--sites", "50", "--dirichlet", "0.5",
                     "--fraction-fit", "0.2", "--fraction-evaluate", "0.2", "--rounds", "2", "--local-epochs", "1",
                     "--min-sites", "2", "--out", str(out))  # fmt: skip
    assert done.exit_code == 0, explain(done)
    assert "50 supplier sites drawn from ai4i2020.csv" in done.output
    results = json.loads((out / "results.json").read_text())
    assert len(results["sites"]) == 50
    for record in results["rounds"]:
        assert len(record["sites_trained"]) == 10
    summary = results["local_only_summary"]
    assert summary["sample"] == {"sites": 50, "of": 50, "seed": 0, "limit": 200}
    assert set(summary["quantiles"]) == {"0.1", "0.25", "0.5", "0.75", "0.9"}
    assert len(summary["worst_ten"]) == 10
    key = results["task"]["primary_metric"]
    worst = [e[key] for e in summary["worst_ten"]]
    assert worst == sorted(worst) and worst[0] <= summary["quantiles"]["0.1"]
    # The table summarises 50 sites: quantile and worst-ten rows, no row per site.
    assert "quantile of" in done.output and "local-only, worst:" in done.output
    assert "local-only: site-" not in done.output


def test_the_streaming_mean_equals_flowers_weighted_average():
    from flwr.server.strategy.aggregate import aggregate

    from coordinator.streaming import streaming_weighted_mean

    rng = np.random.default_rng(0)
    updates = [([rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32)], int(n))
               for n in rng.integers(1, 50, size=7)]  # fmt: skip
    mine = streaming_weighted_mean(iter([([a.copy() for a in arrays], n) for arrays, n in updates]))
    theirs = aggregate(updates)
    for a, b in zip(mine, theirs, strict=True):
        assert a.dtype == np.float32 and np.allclose(a, b, atol=1e-6)
    with pytest.raises(ValueError, match="at least one update"):
        streaming_weighted_mean(iter([]))


def test_streaming_fedavg_aggregates_as_flowers_fedavg():
    from flwr.server.strategy import FedAvg

    from coordinator.streaming import StreamingFedAvg

    rng = np.random.default_rng(1)
    updates = [(rng.normal(size=(5, 2)).astype(np.float32), int(n)) for n in rng.integers(1, 9, size=5)]

    def replies():  # fresh replies each time: the streaming mean releases each reply's bytes
        ok = Status(Code.OK, "")
        return [(None, FitRes(ok, ndarrays_to_parameters([a]), n, {"x": float(n)})) for a, n in updates]

    theirs, _ = FedAvg().aggregate_fit(1, replies(), [])
    mine, _ = StreamingFedAvg().aggregate_fit(1, replies(), [])
    assert mine is not None and theirs is not None
    assert np.allclose(parameters_to_ndarrays(mine)[0], parameters_to_ndarrays(theirs)[0], atol=1e-6)


def test_the_site_roster_pickles_as_its_path_and_reads_back_in_another_process(tmp_path):
    import pickle
    import subprocess
    import sys

    from client.site import SiteConfig, SiteRoster
    from privacy.policy import SitePrivacyPolicy

    sites = [SiteConfig(name=f"site-{i:05d}", data_path=tmp_path / f"site-{i:05d}.csv", holdout_seed=3,
                        privacy=SitePrivacyPolicy(max_epsilon=2.0) if i == 7 else SitePrivacyPolicy())
             for i in range(10_000)]  # fmt: skip
    roster = SiteRoster(sites, tmp_path / "roster.json")
    assert list(roster) == sites and roster[7] == sites[7] and len(roster) == 10_000
    # Flower pickles the ClientApp (and what it holds) with every message: the roster is its path, not 10,000 sites.
    assert len(pickle.dumps(roster)) < 500 < 100_000 < len(pickle.dumps(sites))
    (tmp_path / "roster.pickle").write_bytes(pickle.dumps(roster))
    code = ("import pickle, sys; r = pickle.loads(open(sys.argv[1], 'rb').read()); "
            "print(len(r), r[7].name, r[7].privacy.max_epsilon, r[7].holdout_seed, r[7].data_path)")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "roster.pickle")], capture_output=True,
                          text=True, check=True, cwd=Path(__file__).parents[1])  # fmt: skip
    assert done.stdout.split() == ["10000", "site-00007", "2.0", "3", str(tmp_path / "site-00007.csv")]
    # A roster written again at the same path (another simulation) is not mistaken for the one pickled earlier.
    SiteRoster(sites[:3], tmp_path / "roster.json")
    failed = subprocess.run([sys.executable, "-c", code, str(tmp_path / "roster.pickle")], capture_output=True,
                            text=True, cwd=Path(__file__).parents[1])  # fmt: skip
    assert failed.returncode != 0 and "site roster was rewritten" in failed.stderr


def _link_state(nodes: int, per_node: int, reach: int | None = None):
    """Flower's in-memory LinkState as `run_simulation` builds it, `per_node` instructions queued for each node
    (for the first `reach` nodes only, when given: a round's sample)."""
    from flwr.app import Message, RecordDict
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.proto.task_pb2 import Task
    from flwr.server.superlink.linkstate import LinkStateFactory
    from flwr.server.superlink.linkstate.in_memory_linkstate import RunRecord
    from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME, NOOP_FEDERATION_ID
    from flwr.supercore.object_store import ObjectStoreFactory
    from flwr.supercore.run import Run
    from flwr.supercore.task_identity import TaskIdentity
    from flwr.superlink.federation import NoOpFederationManager
    from flwr.superlink.grid import InMemoryGrid

    factory = LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory())
    state = factory.state()
    run = Run.create_empty(run_id=7)
    run.primary_task_id, run.federation_id = 11, NOOP_FEDERATION_ID
    state.run_ids[run.run_id] = RunRecord(run=run)
    state.task_store[11] = Task(task_id=11, run_id=run.run_id)
    node_ids = [state.create_node("aid", "name", i.to_bytes(32, "big"), heartbeat_interval=1e9) for i in range(nodes)]
    for node in node_ids:  # online, as the simulation engine registers its virtual nodes
        state.acknowledge_node_heartbeat(node_id=node, heartbeat_interval=1e9)
    grid = InMemoryGrid(state_factory=factory)
    grid.set_run(run)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 11, 7, SUPERLINK_NODE_ID  # as run_simulation
    messages = [Message(RecordDict(), node, "train", group_id=str(k)) for k in range(per_node)
                for node in node_ids[:reach]]  # fmt: skip
    ids = list(grid.push_messages(messages))
    return state, node_ids, ids


def test_one_pass_delivery_takes_what_flowers_per_node_loop_takes_and_is_far_faster():
    from coordinator.engine import undelivered_per_node

    state, node_ids, ids = _link_state(300, 2)
    first_sweep = ids[:300]  # each node's older instruction
    start = time.perf_counter()
    mine = undelivered_per_node(state, set(node_ids))
    mine_s = time.perf_counter() - start
    assert sorted(m.metadata.message_id for m in mine) == sorted(first_sweep)
    assert all(m.metadata.delivered_at for m in mine)
    # The next sweep takes each node's second instruction; then nothing is left to deliver.
    assert sorted(m.metadata.message_id for m in undelivered_per_node(state, set(node_ids))) == sorted(ids[300:])
    assert undelivered_per_node(state, set(node_ids)) == []
    # Flower's own sweep (one scan of the store per node) on the same queue, as its delivery thread runs it.
    state, node_ids, ids = _link_state(300, 2)
    start = time.perf_counter()
    theirs = [m for node in node_ids for m in state.get_message_ins(node_id=node, limit=1)]
    theirs_s = time.perf_counter() - start
    assert sorted(m.metadata.message_id for m in theirs) == sorted(ids[:300])
    assert theirs_s > 10 * mine_s, (theirs_s, mine_s)  # measured: about 100 x at 300 nodes, growing with nodes


def test_a_large_simulation_reads_a_sample_of_site_files_and_asks_a_sample_of_sites_per_round(
    tmp_path, ai4i, monkeypatch
):
    import flwr.simulation

    import coordinator.simulation as simulation
    import tests.loopback as loopback
    from coordinator.config import FederationConfig

    spec = get_task("predictive-maintenance")
    site_files, plan = write_dirichlet_sites(ai4i, spec, tmp_path, n_sites=12, alpha=5.0, seed=0, rows_per_site=60)
    read: list[str] = []
    load = simulation.load_site_data
    monkeypatch.setattr(simulation, "load_site_data", lambda path, s: read.append(Path(path).name) or load(path, s))
    sent = _counting_pushes(monkeypatch)
    monkeypatch.setattr(flwr.simulation, "run_simulation", loopback.run_in_process)
    config = FederationConfig(task=spec, num_rounds=2, local_epochs=1, out_dir=tmp_path / "run", min_sites=2,
                              fraction_fit=0.25, fraction_evaluate=0.25)  # fmt: skip
    results = simulation.run_experiment(spec, site_files, config, baseline_sites=4)
    # The coordinator read its sample of 4 files, once each; the federation had all 12 sites.
    assert len(read) == 4 == len(set(read)) and set(results["local_only"]) == {n.removesuffix(".csv") for n in read}
    assert results["local_only_summary"]["sample"] == {"sites": 4, "of": 12, "seed": 0, "limit": 4}
    assert results["sites"] == plan.names and len(results["site_rows"]) == 12
    assert results["held_out_rows"] == sum(results["site_rows"][n.removesuffix(".csv")]["held_out"] for n in read)
    # Every site profiled once; then each round trains, evaluates and scores coalitions on 3 sites, not 12.
    assert sent == {"profile": 12, "round": 2 * 3 + 2 * 3, "contribution": 2 * 3, "membership": 3}, sent
    assert len(results["membership_inference"]) == 3
    # The federated model's held-out score is the last round's centralised evaluation (NaN equal to NaN:
    # 4 sites' held-out rows may hold no failure).
    last = {k: v for k, v in results["rounds"][-1]["metrics"].items() if k != "train_loss"}
    np.testing.assert_equal(results["federated"]["global"], last)


def _counting_pushes(monkeypatch) -> dict[str, int]:
    """Messages the in-process grid (tests/loopback.py) pushes, by group ("profile", "round", ...)."""
    import tests.loopback as loopback

    sent: dict[str, int] = {}
    push = loopback.LoopbackGrid.push_messages

    def counted(self, messages):
        messages = list(messages)
        for m in messages:
            group = m.metadata.group_id.rstrip("0123456789-") or "round"
            sent[group] = sent.get(group, 0) + 1
        return push(self, messages)

    monkeypatch.setattr(loopback.LoopbackGrid, "push_messages", counted)
    return sent


def test_a_sampled_profile_asks_some_sites_and_learns_the_others_rows_from_their_replies(tmp_path, ai4i, monkeypatch):
    import flwr.simulation

    import coordinator.simulation as simulation
    import tests.loopback as loopback
    from coordinator.config import FederationConfig
    from models.datasets import holdout_split
    from models.schema import load_site_data

    spec = get_task("predictive-maintenance")
    site_files, plan = write_dirichlet_sites(ai4i, spec, tmp_path, n_sites=12, alpha=5.0, seed=0, rows_per_site=60)
    sent = _counting_pushes(monkeypatch)
    monkeypatch.setattr(flwr.simulation, "run_simulation", loopback.run_in_process)
    config = FederationConfig(task=spec, num_rounds=2, local_epochs=1, out_dir=tmp_path / "run", min_sites=2,
                              fraction_fit=0.25, fraction_evaluate=0.25, profile_sites=5)  # fmt: skip
    results = simulation.run_experiment(spec, site_files, config, baseline_sites=4)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    # 5 of the 12 sites profiled; every round still samples from all 12 (3 a round at 25 %).
    assert sent["profile"] == 5 and manifest["profile_sample"] == {"asked": 5, "of": 12, "seed": 0}
    assert all(len(r["sites_trained"]) == 3 for r in results["rounds"])
    assert results["sites"] == plan.names and results["local_only_summary"]["sample"]["of"] == 12
    profiled = {n for n, s in manifest["sites"].items() if "rows_from" not in s}
    learned = {n: s for n, s in manifest["sites"].items() if s.get("rows_from") == "replies"}
    assert len(profiled) == 5 and learned and not profiled & set(learned)
    trained = {n for r in manifest["rounds"] for n in r["sites_trained"]}
    evaluated = {n for r in manifest["rounds"] for n in r.get("per_site", {})}
    assert set(learned) == (trained | evaluated) - profiled
    for name, site in {**learned, **{n: manifest["sites"][n] for n in profiled}}.items():
        train, test = holdout_split(load_site_data(site_files[name], spec), spec, seed=0, source=name)
        # Each count as the site's own split gives it: from its profile, or from its first replies (None before).
        assert site["n_train"] == (len(train) if name in profiled or name in trained else None), name
        assert site["n_test"] == (len(test) if name in profiled or name in evaluated else None), name
        assert results["site_rows"][name] == {"train": site["n_train"], "held_out": site["n_test"]}


def test_under_dp_a_site_not_asked_for_its_profile_is_charged_nothing_for_one(tmp_path, ai4i, monkeypatch):
    import flwr.simulation

    import coordinator.simulation as simulation
    import tests.loopback as loopback
    from coordinator.config import FederationConfig
    from privacy.ledger import PrivacyLedger
    from privacy.report import verify_report

    spec = get_task("predictive-maintenance")
    site_files, _ = write_dirichlet_sites(ai4i, spec, tmp_path, n_sites=8, alpha=5.0, seed=1, rows_per_site=80)
    sent = _counting_pushes(monkeypatch)
    monkeypatch.setattr(flwr.simulation, "run_simulation", loopback.run_in_process)
    out = tmp_path / "run"
    config = FederationConfig.with_defaults(task=spec, num_rounds=1, out_dir=out, min_sites=2, fraction_fit=0.5,
                                            fraction_evaluate=0.5, profile_sites=3, dp_epsilon=3.0, local_epochs=1,
                                            key_dir=tmp_path / "keys")  # fmt: skip
    simulation.run_experiment(spec, site_files, config, baseline_sites=4)
    manifest = json.loads((out / "manifest.json").read_text())
    asked = {n for n, s in manifest["sites"].items() if "rows_from" not in s}
    assert sent["profile"] == 3 and set(manifest["profile_dp"]) == asked
    report = verify_report(out / "privacy" / "report.json", out / "privacy" / "coordinator.pub.pem")
    assert report["not_covered"] == ""
    for name, path in site_files.items():
        ledger = PrivacyLedger(path.parent / ".sangsaeng-privacy" / f"{name}.ledger.json", name)
        entries = ledger.load()["entries"] if ledger.path.exists() else []
        profiles = [e for e in entries if e.get("mechanism") == "profile"]
        assert len(profiles) == (name in asked), name  # one profile charged to each asked site, none to the others
        if name in report["sites"]:
            kinds = [m["mechanism"] for m in report["sites"][name]["mechanisms"]]
            assert ("profile" in kinds) == (name in asked), (name, kinds)
    verified = sangsaeng("privacy", "verify", str(out / "privacy" / "report.json"),
                         "--public-key", str(out / "privacy" / "coordinator.pub.pem"))  # fmt: skip
    assert verified.exit_code == 0, explain(verified)


def test_the_profiled_sample_is_seeded_and_every_site_under_secagg_or_at_0():
    from coordinator.config import FederationConfig
    from coordinator.server_app import profile_sample

    spec = get_task("predictive-maintenance")
    nodes = list(range(100, 1100))
    config = FederationConfig(task=spec, profile_sites=50, seed=3)
    asked = profile_sample(nodes, config)
    assert len(asked) == 50 == len(set(asked)) and asked == sorted(asked) and set(asked) <= set(nodes)
    assert profile_sample(nodes, config) == asked != profile_sample(nodes, config.replace(seed=4))
    assert profile_sample(nodes[:50], config) == nodes[:50]  # no more sites than the sample: every one
    assert profile_sample(nodes, config.replace(profile_sites=0)) == nodes
    assert profile_sample(nodes, config.replace(secagg=True)) == nodes  # SecAgg+ needs the largest site's rows
    with pytest.raises(ValueError, match="profile_sites must be 0 \\(every site\\) or the size"):
        FederationConfig(task=spec, profile_sites=-1)
