"""The supplier's ClientApp, called with real Flower messages (no network)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import Context, Message, RecordDict
from flwr.common import FitIns, GetPropertiesIns, MessageTypeLegacy, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat

from client.client_app import make_client_app
from client.site import SiteConfig
from models.nets import build_model, get_weights
from models.scaler import FederatedScaler, SiteProfile
from models.tasks import get_task
from sangsaeng.protocol import PHASE_PROFILE, ConfigKey, ErrorCode

PM = get_task("predictive-maintenance")


@pytest.fixture(autouse=True)
def task_identity():
    """Messages carry the sender's task identity; Flower's runtimes set it, so do we."""
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID


def context(site: SiteConfig) -> Context:
    node_config = {"site": site.name, "data-path": str(site.data_path)}
    return Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config={})


def profile_message() -> Message:
    ins = GetPropertiesIns({ConfigKey.PHASE: PHASE_PROFILE, ConfigKey.TASK: PM.to_json()})
    return Message(
        compat.getpropertiesins_to_recorddict(ins), dst_node_id=7, message_type=MessageTypeLegacy.GET_PROPERTIES
    )


def test_profile_then_fit_on_the_sites_own_rows(ai4i, tmp_path):
    path = tmp_path / "l.csv"
    ai4i[ai4i["Type"] == "L"].head(400).to_csv(path, index=False)
    site = SiteConfig("plant-l", path)
    app = make_client_app()

    reply = app(profile_message(), context(site))
    props = compat.recorddict_to_getpropertiesres(reply.content).properties
    assert props["site"] == "plant-l" and props["n_train"] == 280 and props["n_test"] == 120
    profile = SiteProfile.from_json(props["profile"])
    assert profile.count == 280 and profile.categories == {"Type": {"L": 280}}

    scaler = FederatedScaler.combine([profile], PM)
    initial = get_weights(build_model(scaler.n_inputs))
    config = {ConfigKey.TASK: PM.to_json(), ConfigKey.SCALER: scaler.to_json(), ConfigKey.EPOCHS: 1, ConfigKey.ROUND: 1}
    fit = Message(
        compat.fitins_to_recorddict(FitIns(ndarrays_to_parameters(initial), config), True),
        dst_node_id=7,
        message_type="train",
    )
    res = compat.recorddict_to_fitres(app(fit, context(site)).content, False)
    assert res.num_examples == 280 and res.metrics["site"] == "plant-l"
    updated = parameters_to_ndarrays(res.parameters)
    assert any(not np.allclose(a, b) for a, b in zip(updated, initial, strict=True))


def test_bad_export_becomes_an_error_reply_naming_site_file_and_column(ai4i, tmp_path):
    path = tmp_path / "broken.csv"
    frame = ai4i.head(100).copy()
    frame.loc[10, "Torque [Nm]"] = float("inf")
    frame.to_csv(path, index=False)

    reply = make_client_app()(profile_message(), context(SiteConfig("plant-x", path)))

    assert reply.has_error()
    assert reply.error.code == ErrorCode.SITE_DATA
    assert reply.error.reason.startswith("site 'plant-x': ")
    assert str(path) in reply.error.reason and "column 'Torque [Nm]'" in reply.error.reason


def test_supernode_without_site_config_gets_a_clear_reply():
    ctx = Context(run_id=1, node_id=9, node_config={}, state=RecordDict(), run_config={})
    reply = make_client_app()(profile_message(), ctx)
    assert reply.has_error() and "missing node-config key(s) ['site', 'data-path']" in reply.error.reason


def test_a_restarted_client_keeps_its_spent_budget(ai4i, tmp_path):
    """The ledger lives on-site: a new process (a new app) continues from what was spent."""
    path = tmp_path / "h.csv"
    ai4i[ai4i["Type"] == "H"].to_csv(path, index=False)
    site = SiteConfig("plant-h", path)

    def dp_round(run_id: str, server_round: int, epsilon: float) -> dict:
        app = make_client_app()  # a fresh app each time, as after a restart
        props = compat.recorddict_to_getpropertiesres(app(profile_message(), context(site)).content).properties
        scaler = FederatedScaler.combine([SiteProfile.from_json(props["profile"])], PM)
        config = {
            ConfigKey.TASK: PM.to_json(), ConfigKey.SCALER: scaler.to_json(), ConfigKey.EPOCHS: 1,
            ConfigKey.BATCH_SIZE: 128, ConfigKey.ROUND: server_round, ConfigKey.RUN_ID: run_id,
            ConfigKey.NUM_ROUNDS: 2, ConfigKey.DP_EPSILON: epsilon, ConfigKey.DP_MAX_GRAD_NORM: 1.0,
        }  # fmt: skip
        initial = get_weights(build_model(scaler.n_inputs))
        ins = compat.fitins_to_recorddict(FitIns(ndarrays_to_parameters(initial), config), True)
        reply = app(Message(ins, dst_node_id=7, message_type="train"), context(site))
        assert not reply.has_error(), reply.error
        return compat.recorddict_to_fitres(reply.content, False).metrics

    first = [dp_round("run-1", r, 1.0) for r in (1, 2)]
    assert 0.95 < first[-1]["dp_epsilon"] <= 1.0
    second = dp_round("run-2", 1, 3.0)  # a later run, after a restart
    assert (
        json.loads(second["dp_prior_history"])
        == [[first[0]["dp_noise_multiplier"], first[0]["dp_sample_rate"], first[0]["dp_steps"]]] * 2
    )
    assert second["dp_epsilon"] > first[-1]["dp_epsilon"]
    ledger = json.loads(site.ledger_file.read_text())
    assert [e["run_id"] for e in ledger["entries"]] == ["run-1", "run-1", "run-2"]
