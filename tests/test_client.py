"""The supplier's ClientApp, called with real Flower messages (no network)."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Context, Message, RecordDict
from flwr.common import FitIns, GetPropertiesIns, MessageTypeLegacy, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat

from client.client_app import make_client_app
from client.protocol import PHASE_PROFILE, ConfigKey, ErrorCode
from client.site import SiteConfig
from models.nets import build_model, get_weights
from models.scaler import FederatedScaler, SiteProfile
from models.tasks import get_task

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
