"""The unmask stage of ``SurvivorCheckedSecAgg`` against a device that answers it wrongly.

Five in-process devices run flwr's SecAgg+ client mod over a loopback grid (one drops
after the key exchange, so the server rebuilds its pairwise masks too); device 44 then
tampers with its reply to the unmask stage. Flower 1.41's own stage would halt the
ServerApp on most of these replies (repeated shares, an owner it never sampled, uneven
lists); here the honest devices' shares still unmask the exact sum, and shares that do not
rebuild a secret fail the round cleanly.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState

from common.federation import prime_shamir
from common.federation.privacy_plan import PrivacyPlan
from server.federation.secure_aggregation import SurvivorCheckedSecAgg, checked_share_replies
from tests.common.federation.test_secure_masks_secaggplus import (
    SHAPES,
    LoopbackGrid,
    random_updates,
    run_secaggplus,
    stamp_server_identity,
    survivors_mean,
)

TAMPERER = 44


def tamper_repeat(owners: list[int], shares: list[bytes]) -> tuple[list[int], list[bytes]]:
    return owners + owners, shares + shares


def tamper_foreign(owners: list[int], shares: list[bytes]) -> tuple[list[int], list[bytes]]:
    return [999, *owners], [shares[0], *shares]


def tamper_uneven(owners: list[int], shares: list[bytes]) -> tuple[list[int], list[bytes]]:
    return owners, shares[:-1]


def tamper_alter(owners: list[int], shares: list[bytes]) -> tuple[list[int], list[bytes]]:
    altered = bytearray(shares[0])
    altered[-1] ^= 0xFF
    return owners, [bytes(altered), *shares[1:]]


class TamperingGrid(LoopbackGrid):
    """The loopback grid, with device ``TAMPERER`` rewriting its unmask-stage reply."""

    def __init__(self, updates: dict[int, list[np.ndarray]], tamper) -> None:
        super().__init__(updates)
        self.tamper = tamper
        self.tampered = 0

    def _deliver(self, msg: Message) -> Message:
        reply = super()._deliver(msg)
        stage = msg.content.config_records[RECORD_KEY_CONFIGS][Key.STAGE]
        if stage == Stage.UNMASK and msg.metadata.dst_node_id == TAMPERER:
            record = reply.content.config_records[RECORD_KEY_CONFIGS]
            owners, shares = self.tamper(
                list(record[Key.NODE_ID_LIST]), list(record[Key.SHARE_LIST])
            )
            record[Key.NODE_ID_LIST], record[Key.SHARE_LIST] = owners, shares
            self.tampered += 1
        return reply


@pytest.fixture(autouse=True)
def prime_shares_on_a_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both sides split and rebuild with ``prime_shamir``, as the project's apps install it;
    messages are stamped as in a ServerApp process."""
    stamp_server_identity(monkeypatch)
    for module_name, names in prime_shamir._BINDINGS.items():
        module = importlib.import_module(module_name)
        for name in names:
            monkeypatch.setattr(module, name, getattr(prime_shamir, name))


def workflow(threshold: float = 0.6) -> SurvivorCheckedSecAgg:
    plan = PrivacyPlan(
        dp=False,
        noise="devices",
        secagg=True,
        clipping_norm=1.0,
        stats_share=0.0,
        noise_multiplier=0.0,
        sample_rate=1.0,
        expected_devices=5,
        min_devices=1,
        delta=1e-5,
        epsilon_budget=8.0,
        adaptive=False,
        ceiling=1.0,
    )
    checked = SurvivorCheckedSecAgg(
        plan, neighbours=4, threshold=threshold, tolerance=0.0, timeout=None
    )
    checked.failed_rounds = []
    checked.unmask_failed = checked.failed_rounds.append
    return checked


def assert_survivors_mean(
    aggregate: list[np.ndarray], updates: dict[int, list[np.ndarray]]
) -> None:
    for got, want in zip(aggregate, survivors_mean(updates), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-4)


def test_honest_devices_unmask_the_sum():
    updates = random_updates()
    assert_survivors_mean(run_secaggplus(updates, workflow()), updates)


@pytest.mark.parametrize("tamper", [tamper_repeat, tamper_foreign, tamper_uneven])
def test_repeated_foreign_or_uneven_shares_do_not_stop_the_honest_sum(tamper):
    updates = random_updates()
    grid, checked = TamperingGrid(updates, tamper), workflow()
    aggregate = run_secaggplus(updates, checked, grid)
    assert grid.tampered == 1
    assert_survivors_mean(aggregate, updates)
    assert checked.failed_rounds == []


def test_flowers_own_stage_halts_on_a_foreign_owner():
    updates = random_updates()
    with pytest.raises(KeyError):
        run_secaggplus(updates, grid=TamperingGrid(updates, tamper_foreign))


def test_a_device_whose_shares_disagree_is_singled_out_and_the_sum_unmasked():
    updates = random_updates()
    # threshold 2 of 5: each owner gets 4 shares back, two spares, so one liar stands out
    grid, checked = TamperingGrid(updates, tamper_alter), workflow(threshold=0.4)
    aggregate = run_secaggplus(updates, checked, grid)
    assert grid.tampered == 1
    assert_survivors_mean(aggregate, updates)
    assert checked.failed_rounds == []


def test_disagreeing_shares_no_one_device_explains_fail_the_round_unmasked_nothing():
    updates = random_updates()
    # threshold 3 of 5: 4 shares, one spare: the disagreement is seen, not who caused it
    grid, checked = TamperingGrid(updates, tamper_alter), workflow(threshold=0.6)
    aggregate = run_secaggplus(updates, checked, grid)
    assert grid.tampered == 1
    assert checked.failed_rounds == [1]
    for got, shape in zip(aggregate, SHAPES, strict=True):
        assert got.shape == shape and not got.any()  # the start parameters: nothing applied


def share_reply(sender: int, owners: list[int], shares: list[bytes]) -> Message:
    ask = Message(
        RecordDict({RECORD_KEY_CONFIGS: ConfigRecord({Key.STAGE: Stage.UNMASK})}),
        dst_node_id=sender,
        message_type=MessageType.TRAIN,
    )
    answer = ConfigRecord({Key.NODE_ID_LIST: owners, Key.SHARE_LIST: shares})
    return Message(RecordDict({RECORD_KEY_CONFIGS: answer}), reply_to=ask)


def eight_devices() -> WorkflowState:
    """Devices 1-8 in one round, threshold 3; device 8 is nobody's neighbour but its own."""
    state = WorkflowState()
    state.threshold = 3
    state.sampled_node_ids = set(range(1, 9))
    state.nid_to_neighbours = {nid: set(range(1, 8)) for nid in range(1, 8)} | {8: {8}}
    return state


def kept_shares(replies: list[Message], owner: int) -> dict[int, bytes]:
    kept = {}
    for reply in replies:
        record = reply.content.config_records[RECORD_KEY_CONFIGS]
        for nid, share in zip(record[Key.NODE_ID_LIST], record[Key.SHARE_LIST], strict=True):
            if nid == owner:
                kept[reply.metadata.src_node_id] = share
    return kept


def test_each_owner_keeps_threshold_plus_spare_shares_from_its_neighbours():
    state, secret = eight_devices(), b"seed" * 8
    shares = prime_shamir.create_shares(secret, 3, 7)
    replies = [share_reply(sender, [1], [shares[sender - 1]]) for sender in range(1, 8)]
    replies[1] = share_reply(2, [1, 8], [shares[1], shares[1]])  # 8 is not 2's neighbour
    checked = checked_share_replies(replies, state)
    kept = kept_shares(checked, 1)
    assert sorted(kept) == [1, 2, 3, 4, 5]  # threshold 3 + SPARE_SHARES 2, by node id
    assert kept_shares(checked, 8) == {}
    assert prime_shamir.combine_shares(list(kept.values())) == secret
    assert state.failures == []


def test_the_one_sender_whose_share_disagrees_is_dropped_and_counted():
    state, secret = eight_devices(), b"seed" * 8
    shares = prime_shamir.create_shares(secret, 3, 7)
    shares[2] = tamper_alter([1], [shares[2]])[1][0]
    replies = [share_reply(sender, [1], [shares[sender - 1]]) for sender in range(1, 8)]
    checked = checked_share_replies(replies, state)
    assert [reply.metadata.src_node_id for reply in checked] == [1, 2, 4, 5, 6, 7]
    assert prime_shamir.combine_shares(list(kept_shares(checked, 1).values())) == secret
    assert len(state.failures) == 1 and "device 3" in str(state.failures[0])


def test_a_malformed_reply_is_dropped_and_counted():
    state = eight_devices()
    checked = checked_share_replies([share_reply(1, [1, 2], [b"x"])], state)
    assert checked == []
    assert len(state.failures) == 1 and "malformed" in str(state.failures[0])
