"""Plain Flower FedAvg on the same workload: the reference `bench/deploy.py` measures against.

Stock pieces only: `DefaultWorkflow` + `FedAvg` (optionally `SecAggPlusWorkflow`), a NumPyClient
that trains the same MLP with the same local training on the site's export. No profile phase,
no checkpoints or manifest, no privacy ledger. Each round's end time goes to `times-path`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from flwr.app import Context
from flwr.client import NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common import ndarrays_to_parameters
from flwr.server import LegacyContext, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.serverapp import Grid, ServerApp

from models.nets import build_model, get_weights, set_weights
from models.scaler import FederatedScaler
from models.schema import load_site_data
from models.tasks import get_task
from models.training import TrainConfig, evaluate_model, prepare, train_local

TASK = get_task("predictive-maintenance")
HIDDEN = (64, 32)


class PlainClient(NumPyClient):
    def __init__(self, data_path: str) -> None:
        frame = load_site_data(Path(data_path), TASK)
        self.scaler = FederatedScaler.fit_pooled(frame, TASK)  # the site's own scaler
        self.x, self.y = prepare(frame, TASK, self.scaler)
        self.model = build_model(self.scaler.n_inputs, hidden=HIDDEN, seed=0)

    def fit(self, parameters, config):  # type: ignore[no-untyped-def]
        set_weights(self.model, parameters)
        loss = train_local(self.model, self.x, self.y, spec=TASK, scaler=self.scaler,
                           config=TrainConfig(epochs=2, batch_size=64, lr=3e-3))  # fmt: skip
        return get_weights(self.model), len(self.y), {"train_loss": float(loss)}

    def evaluate(self, parameters, config):  # type: ignore[no-untyped-def]
        set_weights(self.model, parameters)
        loss, metrics = evaluate_model(self.model, self.x, self.y, spec=TASK, scaler=self.scaler)
        return float(loss), len(self.y), {k: float(v) for k, v in metrics.items()}


def _client_fn(context: Context):  # type: ignore[no-untyped-def]
    return PlainClient(str(context.node_config["data-path"])).to_client()


def _secagg_when_asked(msg, context, call_next):  # type: ignore[no-untyped-def]
    if "secaggplus_configs" in msg.content.config_records:
        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


client_app = ClientApp(client_fn=_client_fn, mods=[_secagg_when_asked])
server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    config = context.run_config
    times = Path(str(config["times-path"]))
    sites = int(config["sites"])

    def round_done(metrics):  # type: ignore[no-untyped-def]
        with times.open("a") as handle:
            handle.write(json.dumps(time.time()) + "\n")
        return {}

    n_inputs = int(config["n-inputs"])
    strategy = FedAvg(
        fraction_fit=1.0, fraction_evaluate=1.0, min_fit_clients=sites, min_evaluate_clients=sites,
        min_available_clients=sites, evaluate_metrics_aggregation_fn=round_done,
        initial_parameters=ndarrays_to_parameters(get_weights(build_model(n_inputs, hidden=HIDDEN, seed=0))),
    )  # fmt: skip
    legacy = LegacyContext(context, config=ServerConfig(num_rounds=int(config["num-rounds"])), strategy=strategy)
    fit = (
        SecAggPlusWorkflow(num_shares=sites, reconstruction_threshold=2, max_weight=10000.0)
        if config["secagg"]
        else None
    )
    (DefaultWorkflow(fit_workflow=fit) if fit else DefaultWorkflow())(grid, legacy)
