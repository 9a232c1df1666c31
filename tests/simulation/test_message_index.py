"""The indexed message delivery gives every node the messages Flower's own scan gives it,
in the same order, at a cost that grows with the messages, not with nodes × messages."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.proto.task_pb2 import Task  # pylint: disable=no-name-in-module
from flwr.server.superlink.fleet.vce.vce_api import _register_nodes
from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState, RunRecord
from flwr.supercore.constant import NOOP_FEDERATION_ID
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity
from flwr.superlink.federation import NoOpFederationManager

from simulation.message_index import (
    FLOWER_GET_MESSAGE_INS,
    FLOWER_STORE_MESSAGE_INS,
    install_message_index,
)

RUN_ID, TASK_ID = 7, 11


class FlowerScan(InMemoryLinkState):
    """Flower's own delivery, for comparison (whatever was installed on its base class)."""

    store_message_ins = FLOWER_STORE_MESSAGE_INS
    get_message_ins = FLOWER_GET_MESSAGE_INS
    _fedsearch_indexed = False


class Indexed(FlowerScan):
    """The same state with the index installed (on this subclass only)."""


install_message_index(Indexed)


@pytest.fixture(autouse=True)
def server_identity() -> Iterator[None]:
    """Messages take their run from the process's task identity, as in the ServerApp."""
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = (
        RUN_ID,
        SUPERLINK_NODE_ID,
        1,
    )
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


def link_state(cls: type[InMemoryLinkState], nodes: int) -> tuple[InMemoryLinkState, list[int]]:
    """A state of ``cls`` with ``nodes`` simulated nodes and one run, as the runtime sets up."""
    state = cls(NoOpFederationManager(), ObjectStoreFactory().store())

    class Factory:
        def state(self) -> InMemoryLinkState:
            return state

    node_ids = list(_register_nodes(nodes, Factory()))  # type: ignore[arg-type]
    run = Run.create_empty(run_id=RUN_ID)
    run.primary_task_id, run.federation_id = TASK_ID, NOOP_FEDERATION_ID
    state.run_ids[RUN_ID] = RunRecord(run=run)
    state.task_store[TASK_ID] = Task(task_id=TASK_ID, run_id=RUN_ID)
    return state, node_ids


def push(state: InMemoryLinkState, node: int, tag: int, ttl: float = 600.0) -> str:
    message = Message(RecordDict({"c": ConfigRecord({"tag": tag})}), node, "train", ttl=ttl)
    message.metadata.__dict__["_message_id"] = str(uuid.uuid4())
    message_id = state.store_message_ins(message)
    assert message_id
    return message_id


def sweep(state: InMemoryLinkState, nodes: list[int]) -> list[tuple[int, int]]:
    """One poll of every node (limit 1), as the runtime does: (node position, tag) pairs."""
    out = []
    for position, node in enumerate(nodes):
        for message in state.get_message_ins(node_id=node, limit=1):
            tag = message.content.config_records["c"]["tag"]
            assert isinstance(tag, int)
            out.append((position, tag))
    return out


def scenario(cls: type[InMemoryLinkState]) -> list[list[tuple[int, int]]]:
    """Several messages per node, one stored between sweeps, one deleted, one expired."""
    state, nodes = link_state(cls, 4)
    push(state, nodes[0], 1)
    push(state, nodes[0], 2)
    push(state, nodes[2], 3)
    deleted = push(state, nodes[1], 4)
    push(state, nodes[3], 5, ttl=0.05)
    state.delete_messages({deleted})
    time.sleep(0.1)  # the message of ttl 0.05 expired
    sweeps = [sweep(state, nodes)]
    push(state, nodes[1], 6)
    sweeps += [sweep(state, nodes), sweep(state, nodes)]
    return sweeps


def test_nodes_get_the_same_messages_in_the_same_order_as_flowers_scan() -> None:
    indexed = scenario(Indexed)
    assert indexed == scenario(FlowerScan)
    assert indexed == [[(0, 1), (2, 3)], [(0, 2), (1, 6)], []]


def edge_cases(cls: type[InMemoryLinkState]) -> list[list[int]]:
    """Another run's message, a poll without limit, a message stored before the index was
    built, and a message id stored, deleted and stored again."""
    state, nodes = link_state(cls, 2)
    other = Run.create_empty(run_id=RUN_ID + 1)
    other.primary_task_id, other.federation_id = TASK_ID + 1, NOOP_FEDERATION_ID
    state.run_ids[RUN_ID + 1] = RunRecord(run=other)
    state.task_store[TASK_ID + 1] = Task(task_id=TASK_ID + 1, run_id=RUN_ID + 1)
    early = Message(RecordDict({"c": ConfigRecord({"tag": 0})}), nodes[1], "train", ttl=600)
    early.metadata.__dict__["_message_id"] = str(uuid.uuid4())
    FLOWER_STORE_MESSAGE_INS(state, early)  # stored before any indexed call
    push(state, nodes[0], 1)
    TaskIdentity.run_id = RUN_ID + 1
    push(state, nodes[0], 2)
    TaskIdentity.run_id = RUN_ID
    push(state, nodes[0], 3)
    reused = Message(RecordDict({"c": ConfigRecord({"tag": 4})}), nodes[1], "train", ttl=600)
    reused.metadata.__dict__["_message_id"] = str(uuid.uuid4())
    state.store_message_ins(reused)
    state.delete_messages({reused.metadata.message_id})
    state.store_message_ins(reused)

    def tags(node: int, run_id: int | None) -> list[int]:
        found = state.get_message_ins(node_id=node, limit=None, run_id=run_id)
        return [int(str(m.content.config_records["c"]["tag"])) for m in found]

    return [tags(nodes[0], RUN_ID), tags(nodes[0], None), tags(nodes[1], None)]


def test_run_filter_no_limit_early_and_reused_messages_as_flowers_scan() -> None:
    indexed = edge_cases(Indexed)
    assert indexed == edge_cases(FlowerScan)
    assert indexed == [[1, 3], [2], [0, 4]]


def test_a_sweep_checks_each_message_once_not_once_per_node() -> None:
    checks = {FlowerScan: 0, Indexed: 0}
    for cls in checks:
        state, nodes = link_state(cls, 50)
        for tag, node in enumerate(nodes[:10]):
            push(state, node, tag)
        original = state._check_stored_messages

        def counted(
            message_ids: set[str], run_id: int | None = None, cls=cls, original=original
        ) -> None:
            checks[cls] += 1
            original(message_ids, run_id)

        state._check_stored_messages = counted  # type: ignore[method-assign]
        assert len(sweep(state, nodes)) == 10
    assert checks[FlowerScan] >= 40 * 10  # every node scans every stored message
    assert checks[Indexed] == 10


def test_installing_twice_keeps_one_index() -> None:
    install_message_index(Indexed)
    state, nodes = link_state(Indexed, 2)
    push(state, nodes[1], 9)
    assert sweep(state, nodes) == [(1, 9)]
    assert sweep(state, nodes) == []


def test_the_simulation_apps_install_it_on_flowers_link_state() -> None:
    import simulation.apps  # noqa: F401

    assert getattr(InMemoryLinkState, "_fedsearch_indexed", False)
