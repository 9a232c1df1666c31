"""Deliver a simulated round's messages in time linear in the messages, not nodes × messages.

flwr 1.41's simulation runtime polls the SuperLink's in-memory link state for every virtual
node, ten times a second (``vce_api.add_messages_to_queue``), and each poll
(``InMemoryLinkState.get_message_ins``) scans every stored message. With N nodes and M
messages in flight a sweep costs N × M checks under the state's lock: about 2 million at
10,000 shoppers and 200 devices a round, 10 million at 1,000 a round, which keeps one of
the machine's cores busy and the devices waiting.

``install_message_index`` keeps, beside the state's messages, the ids of undelivered ones
by destination node (appended as they are stored), so one poll looks at that node's own
undelivered messages only, with the same checks on them (expiry, federation membership, by
Flower's ``_check_stored_messages``), in the same order, with the same delivery marks. It
changes the cost of delivering messages, never which messages a node gets. One difference:
Flower's scan also deletes expired messages that were delivered and never answered; here
they stay until the server pulls their replies or the run is cleaned up (a late reply is
refused either way, by ``store_message_res``). The simulation's ServerApp module installs
it (``simulation.apps``) before it sends any message; a deployed SuperLink is not touched.
"""

from __future__ import annotations

import threading

from flwr.app import Message
from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState
from flwr.supercore.date import now

_INSTALL_LOCK = threading.Lock()
_INDEX = "_fedsearch_pending"
_INSTALLED = "_fedsearch_indexed"
# Flower's own delivery, as imported (before any install), for comparison
FLOWER_STORE_MESSAGE_INS = InMemoryLinkState.store_message_ins
FLOWER_GET_MESSAGE_INS = InMemoryLinkState.get_message_ins


def install_message_index(cls: type[InMemoryLinkState] = InMemoryLinkState) -> None:
    """Swap the indexed delivery into ``cls`` (idempotent; a no-op where a base class of
    ``cls`` has it already)."""
    with _INSTALL_LOCK:
        if getattr(cls, _INSTALLED, False):
            return
        store = cls.store_message_ins

        def store_message_ins(self: InMemoryLinkState, message: Message) -> str | None:
            with self.lock:
                index = _pending(self)
                new = message.metadata.message_id not in self.message_ins_store
                message_id = store(self, message)
                if message_id and new and message_id in self.message_ins_store:
                    index.setdefault(message.metadata.dst_node_id, []).append(message_id)
                return message_id

        cls.store_message_ins = store_message_ins  # type: ignore[method-assign]
        cls.get_message_ins = indexed_get_message_ins  # type: ignore[method-assign]
        setattr(cls, _INSTALLED, True)


def indexed_get_message_ins(
    self: InMemoryLinkState, node_id: int, limit: int | None, *, run_id: int | None = None
) -> list[Message]:
    """``InMemoryLinkState.get_message_ins`` through the index (see the module doc)."""
    if limit is not None and limit < 1:
        raise AssertionError("`limit` must be >= 1")
    if not _pending(self).get(node_id):  # most nodes, most polls: nothing (read unlocked)
        return []
    with self.lock:
        index = _pending(self)
        found: list[Message] = []
        kept: list[str] = []
        for msg_id in dict.fromkeys(index.get(node_id, [])):  # an id stored, deleted, stored
            if limit and len(found) == limit:
                kept.append(msg_id)
                continue
            self._check_stored_messages({msg_id})  # may delete it (expired)
            message = self.message_ins_store.get(msg_id)
            if message is None or message.metadata.delivered_at != "":
                continue
            if run_id is None or message.metadata.run_id == run_id:
                found.append(message)
            else:
                kept.append(msg_id)
        delivered_at = now().isoformat()
        for message in found:
            message.metadata.delivered_at = delivered_at
        index[node_id] = kept
    return found


def _pending(state: InMemoryLinkState) -> dict[int, list[str]]:
    """The state's undelivered message ids by destination node, in storage order (built
    from its messages on first use)."""
    index: dict[int, list[str]] | None = state.__dict__.get(_INDEX)
    if index is not None:
        return index
    with state.lock:
        if _INDEX not in state.__dict__:
            built: dict[int, list[str]] = {}
            for msg_id, message in state.message_ins_store.items():
                if message.metadata.delivered_at == "":
                    built.setdefault(message.metadata.dst_node_id, []).append(msg_id)
            setattr(state, _INDEX, built)
        return state.__dict__[_INDEX]
