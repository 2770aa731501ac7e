"""Flower's message loop in this process: the real ServerApp and ClientApps, without Ray.

`LoopbackGrid` is a Flower `Grid` whose nodes are ClientApps called directly, one message at a
time; `run_in_process` stands in for `flwr.simulation.run_simulation` with it. Tests use it to
run whole federations in seconds (the Ray-backed runtime is tested in tests/test_federation.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.serverapp import ServerApp
from flwr.serverapp.grid import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

__all__ = ["LoopbackGrid", "run_in_process"]


class LoopbackGrid(Grid):
    """`num_nodes` SuperNodes, node i running `client_app` with ``partition-id`` i - 1."""

    def __init__(self, client_app: ClientApp, num_nodes: int) -> None:
        self._client_app = client_app
        self._run = Run.create_empty(run_id=1)
        self._contexts = {
            i + 1: Context(
                run_id=1,
                node_id=i + 1,
                node_config={"partition-id": i, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config={},
            )  # fmt: skip
            for i in range(num_nodes)
        }
        self._replies: dict[str, Message] = {}

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):  # type: ignore[no-untyped-def]
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = uuid.uuid4().hex  # as Flower's grids do on push
            reply = self._client_app(_over_the_wire(message), self._contexts[message.metadata.dst_node_id])
            self._replies[message.metadata.message_id] = _over_the_wire(reply)
            ids.append(message.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))


def _over_the_wire(message: Message) -> Message:
    """The message as its receiver gets it from a real grid: serialised and read back, nothing shared.

    Flower's SecAgg+ workflow sends every node the same content and its client mod pops the
    stage from it: delivered as one object, the second node would find no stage.
    """
    return message_from_proto(message_to_proto(message))


def run_in_process(
    server_app: ServerApp, client_app: ClientApp, num_supernodes: int, run_config: dict | None = None, **_: object
) -> None:
    """`flwr.simulation.run_simulation`'s part that matters here: run `server_app` against the nodes."""
    # The identity Flower's runtimes give the ServerApp's messages (as run_simulation does).
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config or {})
    server_app(LoopbackGrid(client_app, num_supernodes), context)
