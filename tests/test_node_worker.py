"""The site's warm worker (client/node.py) when its SuperNode refuses a task's token, or holds a task
whose message's content never arrives.

A SuperNode answers 401 for a task it no longer holds: one claimed longer than 30 s before it
started (the first task imports torch first), or one whose heartbeats stopped (a frozen
worker). Flower's own Runtime helpers assume a ``flwr-clientapp`` process per task and SIGINT
their own process then; in `client start`'s warm worker that is the operator's Ctrl-C and the
whole site stops (seen in the deployment tests on a loaded machine). Flower's SuperNode also
leaves a task behind when a run stops while it downloads the task's message; Flower's
`pull_task_input` waits 2 hours for that content, holding the site's later tasks back. Real
Flower HTTP clients here, against local servers that answer as that SuperNode does.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest


class _Refuse(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 (the name http.server calls)
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(401)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def refusing_runtime() -> Iterator[str]:
    """HOST:PORT of a Runtime API that answers 401 to everything."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


@pytest.fixture
def sigints() -> Iterator[list[int]]:
    """The SIGINTs this process receives meanwhile (recorded, not acted on)."""
    seen: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda *_: seen.append(1))
    try:
        yield seen
    finally:
        signal.signal(signal.SIGINT, previous)


def _client(address: str, retry_invoker: object) -> object:
    from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
    from flwr.supercore.runtime import RuntimeHttpClient

    return RuntimeHttpClient.from_server_address(
        server_address=address, insecure=True, root_certificates=None,
        interceptors=[RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
                      RuntimeTokenHttpInterceptor("a-dropped-task")],
        retry_invoker=retry_invoker,
    )  # fmt: skip


def test_flowers_own_retry_signals_its_process_on_a_refused_token(refusing_runtime: str, sigints: list[int]) -> None:
    # Why the worker has its own: the behaviour it must not inherit.
    from flwr.proto.runtime_pb2 import SendTaskHeartbeatRequest  # pylint: disable=E0611
    from flwr.supercore.retry import make_simple_http_retry_invoker

    client = _client(refusing_runtime, make_simple_http_retry_invoker())
    with pytest.raises(httpx.HTTPStatusError):
        client.SendTaskHeartbeat(SendTaskHeartbeatRequest())  # type: ignore[attr-defined]
    assert sigints == [1]


def test_a_refused_task_fails_at_once_and_the_site_is_not_signalled(refusing_runtime: str, sigints: list[int]) -> None:
    from client.node import _run_one_task

    started = time.monotonic()
    with pytest.raises(httpx.HTTPStatusError, match="401"):
        _run_one_task(refusing_runtime, "a-dropped-task", lambda: None)
    assert time.monotonic() - started < 5
    assert sigints == []


def test_a_refused_heartbeat_marks_the_task_lost_without_a_signal(refusing_runtime: str, sigints: list[int]) -> None:
    from client.node import _task_heartbeat, _task_retry_invoker

    lost = threading.Event()
    beat = _task_heartbeat(_client(refusing_runtime, _task_retry_invoker()), lost)
    assert beat() is True  # not retried: the task is gone
    assert lost.is_set() and sigints == []


def _stale_task_runtime() -> ThreadingHTTPServer:
    """A Runtime API holding one task whose message's content never arrives (Flower's left-behind task)."""
    from flwr.app import Context, Message, RecordDict
    from flwr.app.message import remove_content_from_message
    from flwr.common.serde import context_to_proto, fab_to_proto, message_to_proto, run_to_proto
    from flwr.proto import runtime_pb2  # pylint: disable=E0611
    from flwr.proto.message_pb2 import PullObjectResponse  # pylint: disable=E0611
    from flwr.supercore.fab import Fab
    from flwr.supercore.inflatable.inflatable_object import get_object_tree
    from flwr.supercore.run import Run
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 7, 0
    message = Message(RecordDict(), dst_node_id=5, message_type="train")
    message.metadata.__dict__["_message_id"] = message.object_id
    answers = {
        "/v1/runtime/pull-task-input": runtime_pb2.PullTaskInputResponse(
            context=context_to_proto(Context(run_id=7, node_id=5, node_config={}, state=RecordDict(), run_config={})),
            run=run_to_proto(Run.create_empty(7)), fab=fab_to_proto(Fab("0" * 64, b"", {})), task_id=1,
        ),
        "/v1/runtime/pull-messages": runtime_pb2.PullAppMessagesResponse(
            messages_list=[message_to_proto(remove_content_from_message(message))],
            message_object_trees=[get_object_tree(message)],
        ),
        "/v1/runtime/pull-object": PullObjectResponse(object_found=True, object_available=False),
        "/v1/runtime/send-task-heartbeat": runtime_pb2.SendTaskHeartbeatResponse(success=True),
    }  # fmt: skip

    class Stale(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (the name http.server calls)
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            answer = answers.get(self.path)
            body = answer.SerializeToString() if answer is not None else b""
            self.send_response(200)
            self.send_header("Content-Type", "application/protobuf")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    return ThreadingHTTPServer(("127.0.0.1", 0), Stale)


def test_a_task_whose_message_never_arrives_is_given_up(monkeypatch: pytest.MonkeyPatch) -> None:
    # Flower's own pull_task_input would wait 2 hours here, and the site's later tasks with it.
    from client import node
    from client.errors import NodeError

    monkeypatch.setattr(node, "TASK_INPUT_PULL_FOR", 2.0)
    server = _stale_task_runtime()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    started = time.monotonic()
    try:
        with pytest.raises(NodeError, match="did not reach the SuperNode within 2 s"):
            node._run_one_task(f"127.0.0.1:{server.server_address[1]}", "a-task", lambda: None)
    finally:
        server.shutdown()
    assert time.monotonic() - started < 30
