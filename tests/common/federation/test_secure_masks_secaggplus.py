"""flwr's own SecAgg+ (server workflow + client mod), in process, with our mask generator.

A loopback grid hands each of the workflow's messages to a device running flwr's
``secaggplus_mod``; one device drops after the key exchange, so the server also has to
rebuild that device's pairwise masks from its reconstructed key.
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Iterable

import flwr.compat.common.recorddict_compat as compat
import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.server import LegacyContext, ServerConfig
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.strategy import FedAvg
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from common.federation.secure_masks import secure_pseudo_rand_gen

from .test_secure_masks import FLWR_GEN, USERS

NODES = [11, 22, 33, 44, 55]
DROPPED = 33  # answers the key exchange, then goes silent
SHAPES = [(3, 4), (5,)]


class LoopbackGrid(Grid):
    """Delivers messages to in-process devices that run flwr's SecAgg+ client mod."""

    def __init__(self, updates: dict[int, list[np.ndarray]]) -> None:
        self.updates = updates
        self.contexts = {nid: Context(1, nid, {}, RecordDict(), {}) for nid in updates}

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        return [self._deliver(msg) for msg in messages if not self._silent(msg)]

    def _silent(self, msg: Message) -> bool:
        stage = msg.content.config_records[RECORD_KEY_CONFIGS][Key.STAGE]
        late = stage in (Stage.COLLECT_MASKED_VECTORS, Stage.UNMASK)
        return late and msg.metadata.dst_node_id == DROPPED

    def _deliver(self, msg: Message) -> Message:
        # A copy, as if serialized: the mod edits the configs the server shares across nodes.
        ctxt = self.contexts[msg.metadata.dst_node_id]
        return secaggplus_mod(copy.deepcopy(msg), ctxt, self._fit)

    def _fit(self, msg: Message, ctxt: Context) -> Message:
        update = ndarrays_to_parameters(self.updates[ctxt.node_id])
        fitres = FitRes(Status(Code.OK, ""), update, num_examples=1, metrics={})
        return Message(compat.fitres_to_recorddict(fitres, keep_input=True), reply_to=msg)

    def set_run(self, run: Run) -> None:
        raise NotImplementedError

    @property
    def run(self) -> Run:
        raise NotImplementedError

    def create_message(self, *args: object, **kwargs: object) -> Message:
        raise NotImplementedError

    def get_node_ids(self) -> list[int]:
        return list(self.updates)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        raise NotImplementedError

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        raise NotImplementedError


def run_secaggplus(
    updates: dict[int, list[np.ndarray]],
    workflow: SecAggPlusWorkflow | None = None,
    grid: LoopbackGrid | None = None,
) -> list[np.ndarray]:
    """One SecAgg+ round over the loopback grid; the aggregate (zeros if it halted). By
    default flwr's workflow as the project configures it: every device has weight 1, default
    2**32 modulus."""
    grid = grid or LoopbackGrid(updates)
    workflow = workflow or SecAggPlusWorkflow(
        num_shares=5, reconstruction_threshold=3, max_weight=1.0
    )
    strategy = FedAvg(
        fraction_fit=1.0, min_fit_clients=len(NODES), min_available_clients=len(NODES)
    )
    context = LegacyContext(
        Context(0, 0, {}, RecordDict(), {}), config=ServerConfig(num_rounds=1), strategy=strategy
    )
    for nid in NODES:
        context.client_manager.register(GridClientProxy(nid, grid, run_id=1))
    start = ndarrays_to_parameters([np.zeros(s, dtype=np.float32) for s in SHAPES])
    context.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
        start, keep_input=True
    )
    context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: 1})
    workflow(grid, context)
    record = context.state.array_records[MAIN_PARAMS_RECORD]
    return parameters_to_ndarrays(compat.arrayrecord_to_parameters(record, keep_input=True))


def stamp_server_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """What flwr sets in a ServerApp process; its messages are stamped with it."""
    for name, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", SUPERLINK_NODE_ID)):
        monkeypatch.setattr(TaskIdentity, name, value)


def random_updates() -> dict[int, list[np.ndarray]]:
    rng = np.random.default_rng(7)
    return {nid: [rng.uniform(-1, 1, s).astype(np.float32) for s in SHAPES] for nid in NODES}


@pytest.fixture(autouse=True)
def server_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    stamp_server_identity(monkeypatch)


@pytest.fixture
def updates() -> dict[int, list[np.ndarray]]:
    return random_updates()


def survivors_mean(updates: dict[int, list[np.ndarray]]) -> list[np.ndarray]:
    kept = [u for nid, u in updates.items() if nid != DROPPED]
    return [np.mean(arrays, axis=0) for arrays in zip(*kept, strict=True)]


def use_generators(monkeypatch: pytest.MonkeyPatch, client: object, server: object) -> None:
    """Bind ``client`` in flwr's client mod and ``server`` in its server workflow."""
    for name, generator in zip(USERS, (client, server), strict=True):
        monkeypatch.setattr(importlib.import_module(name), "pseudo_rand_gen", generator)


@pytest.mark.parametrize("generator", [secure_pseudo_rand_gen, FLWR_GEN], ids=["ours", "flwr"])
def test_secaggplus_unmasks_the_sum_when_both_sides_share_a_generator(
    monkeypatch: pytest.MonkeyPatch, updates: dict[int, list[np.ndarray]], generator: object
) -> None:
    use_generators(monkeypatch, generator, generator)
    aggregate = run_secaggplus(updates)
    for got, want in zip(aggregate, survivors_mean(updates), strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_secaggplus_fails_to_unmask_when_only_the_devices_install(
    monkeypatch: pytest.MonkeyPatch, updates: dict[int, list[np.ndarray]]
) -> None:
    use_generators(monkeypatch, secure_pseudo_rand_gen, FLWR_GEN)
    aggregate = run_secaggplus(updates)
    wrong = [np.abs(g - w).max() for g, w in zip(aggregate, survivors_mean(updates), strict=True)]
    assert max(wrong) > 1.0
