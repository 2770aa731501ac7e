"""Flower 1.42's simulation engine at 10,000 virtual sites: message delivery in one pass over the queue.

The engine's delivery thread (`flwr.server.superlink.fleet.vce.vce_api.add_messages_to_queue`)
asks the in-memory LinkState, ten times a second, for one message *per node*; each ask scans
every stored instruction and re-checks its expiry and federation. A sweep is nodes x stored
messages under the state's lock: at 10,000 sites and 100 instructions in flight, a million
checks (seconds of a core, holding the lock the replies wait on) ten times a second; in a
10,000-site profile phase, 10^8. `delivering_in_one_pass` swaps in a thread that takes the same
messages (the oldest undelivered one of each node, checked and marked delivered as Flower's
`get_message_ins` does) in one pass over the stored instructions, for the length of a run.
Any other LinkState keeps Flower's own loop.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from queue import Queue
from typing import Any

from flwr.app import Message
from flwr.server.superlink.fleet.vce import vce_api
from flwr.server.superlink.linkstate import InMemoryLinkState
from flwr.supercore.date import now

__all__ = ["undelivered_per_node", "delivering_in_one_pass"]

_FLOWER_LOOP = vce_api.add_messages_to_queue
_PATCHED = threading.Lock()


def undelivered_per_node(state: InMemoryLinkState, nodes: dict[int, int] | set[int]) -> list[Message]:
    """The oldest undelivered, unexpired instruction of each node in `nodes`, marked delivered.

    What ``[m for n in nodes for m in state.get_message_ins(node_id=n, limit=1)]`` returns,
    in one pass over the stored instructions instead of one per node.
    """
    taken: dict[int, Message] = {}
    with state.lock:
        for message_id in list(state.message_ins_store):
            message = state.message_ins_store.get(message_id)
            if message is None or message.metadata.delivered_at != "":
                continue
            node = message.metadata.dst_node_id
            if node in taken or node not in nodes:
                continue
            state._check_stored_messages({message_id})  # expiry and federation, as get_message_ins checks
            message = state.message_ins_store.get(message_id)
            if message is not None:
                taken[node] = message
        delivered_at = now().isoformat()
        for message in taken.values():
            message.metadata.delivered_at = delivered_at
    return list(taken.values())


def _one_pass_loop(state: Any, queue: Queue[Message], nodes_mapping: dict[int, int], f_stop: threading.Event) -> None:
    """`add_messages_to_queue` with one pass per sweep (Flower's own for a LinkState other than the in-memory one)."""
    if not isinstance(state, InMemoryLinkState) or not hasattr(state, "message_ins_store"):
        return _FLOWER_LOOP(state, queue, nodes_mapping, f_stop)
    while not f_stop.is_set():
        for message in undelivered_per_node(state, nodes_mapping):
            queue.put(message)
        f_stop.wait(0.1)
    return None


@contextmanager
def delivering_in_one_pass() -> Iterator[None]:
    """Within the block, Flower's simulation engine delivers messages by `undelivered_per_node`."""
    with _PATCHED:  # one simulation at a time swaps the loop (Flower runs one per process anyway)
        vce_api.add_messages_to_queue = _one_pass_loop
        try:
            yield
        finally:
            vce_api.add_messages_to_queue = _FLOWER_LOOP
