"""The round's fit workflow: Flower's SecAgg+ with the plan's quantization, or plain.

``SurvivorCheckedSecAgg`` is Flower's ``SecAggPlusWorkflow`` set to the plan's quantization
(``common.federation.privacy_plan``: the devices size their noise shares in its integer
units and refuse a setup that differs) with these rules:

- When devices add the noise, a round in which fewer than ``min_devices`` devices sent
  their masked vectors stops before the unmask stage, so the server never unmasks a sum
  carrying less noise than planned. The masked vectors it drops are uniformly random to
  the server: nothing was released.
- ``before_unmask`` hears the round just before the server asks for the shares that unmask
  its sum (the ledger charges it there), ``unmask_failed`` when too few came back (the sum
  stays masked: nothing was released).
- Devices may drop at any stage: those that dropped before sharing their keys never
  masked anyone's vector, so they leave the round's graph (Flower 1.41 would ask for their
  missing shares and halt the round); each stage waits at most ``timeout`` seconds, and
  devices that stayed silent until then count as failures (those silent at the unmask
  stage excepted: Flower aggregates before the stage returns; their vectors are in the sum).
- At the unmask stage the replies are checked before Flower combines their shares
  (``checked_share_replies``; Flower 1.41 takes every share a reply lists, for any owner,
  and a malformed reply halts the ServerApp): one share per owner from each of the owner's
  neighbours, and ``SPARE_SHARES`` more than the threshold per owner, which must agree
  (an altered share otherwise shifts the rebuilt secret unnoticed, and the sum unmasks to
  noise the size of the modulus). One device whose shares disagree is dropped; a
  disagreement that no single device explains fails the round like too few shares: the
  sum stays masked and the ledger refunds it.
- SecAgg+ takes the number of key shares as a fraction of the round's devices; the strategy
  reports each round's cohort and ``size_neighbourhoods`` picks the smallest odd
  neighbourhood of at least ``neighbours`` + 1 devices in which, when a ``tolerance``
  fraction of the cohort drops at random, ``threshold`` of it still answer (every
  neighbourhood of the round at once, failing with probability under ``NEIGHBOURHOOD_RISK``
  by the union bound), else the whole cohort: there any ``1 - threshold`` fraction may
  drop. A device's work grows with its neighbourhood.

The plain workflow (no SecAgg+) waits at most ``timeout`` seconds for the devices' updates.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from typing import cast

from flwr.app import Context, Message
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.common.secure_aggregation.secaggplus_constants import Key as SecAggKey
from flwr.server import LegacyContext
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, Key
from flwr.server.workflow.default_workflows import default_fit_workflow
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState
from flwr.serverapp import Grid

from common.config import ConfigError
from common.federation.prime_shamir import ShareError, shares_agree
from common.federation.privacy_plan import MODULUS, QUANTIZATION_RANGE, PrivacyPlan
from common.federation.run_spec import RunSpec

log = logging.getLogger(__name__)
Workflow = Callable[[Grid, Context], None]
RoundHook = Callable[[int], object]
MAX_COHORT = MODULUS // (2 * QUANTIZATION_RANGE)  # payload sums that cannot wrap around
NEIGHBOURHOOD_RISK = 1e-3  # chance that a round at the tolerated dropout cannot unmask
SPARE_SHARES = 2  # shares kept per owner beyond the threshold: enough to single out one liar


class SurvivorCheckedSecAgg(SecAggPlusWorkflow):
    """SecAgg+ that tolerates dropouts at every stage and will not unmask fewer than
    ``min_devices`` noised vectors (see the module doc)."""

    def __init__(
        self,
        plan: PrivacyPlan,
        *,
        neighbours: int,
        threshold: float,
        tolerance: float,
        timeout: float | None,
    ) -> None:
        super().__init__(
            num_shares=1.0,
            reconstruction_threshold=threshold,
            max_weight=1.0,
            clipping_range=plan.clip_range,
            quantization_range=QUANTIZATION_RANGE,
            modulus_range=MODULUS,
            timeout=timeout,
        )
        self.min_devices = plan.min_devices if plan.devices_add_noise else 1
        self.neighbours = neighbours
        self.tolerance = tolerance
        self.before_unmask: RoundHook | None = None
        self.unmask_failed: RoundHook | None = None

    def size_neighbourhoods(self, server_round: int, nodes: list[int]) -> None:
        sampled = max(len(nodes), 1)
        size = neighbourhood_size(
            sampled,
            least=self.neighbours + 1,
            threshold=float(self.reconstruction_threshold),
            tolerance=self.tolerance,
        )
        self.num_shares = size / sampled

    def setup_stage(self, grid: Grid, context: LegacyContext, state: WorkflowState) -> bool:
        before = len(state.failures)
        passed = super().setup_stage(grid, context, state)
        _count_silent(state, set(state.nid_to_proxies), before)
        return passed

    def share_keys_stage(self, grid: Grid, context: LegacyContext, state: WorkflowState) -> bool:
        sent, before = set(state.active_node_ids), len(state.failures)
        passed = super().share_keys_stage(grid, context, state)
        _count_silent(state, sent, before)
        if not passed:
            return False
        shared = set(state.active_node_ids)
        state.sampled_node_ids = shared
        state.nid_to_neighbours = {
            node: neighbours & shared
            for node, neighbours in state.nid_to_neighbours.items()
            if node in shared
        }
        return True

    def collect_masked_vectors_stage(
        self, grid: Grid, context: LegacyContext, state: WorkflowState
    ) -> bool:
        sent, before = set(state.active_node_ids), len(state.failures)
        passed = super().collect_masked_vectors_stage(grid, context, state)
        _count_once(state, before)
        _count_silent(state, sent, before)
        if not passed:
            return False
        if len(state.active_node_ids) < self.min_devices:
            log.warning(
                "round dropped unseen: %d devices sent masked vectors, the noise plan needs "
                "%d; the sum is not unmasked",
                len(state.active_node_ids),
                self.min_devices,
            )
            return False
        if self.before_unmask is not None:
            self.before_unmask(_round(context))
        return True

    def unmask_stage(self, grid: Grid, context: LegacyContext, state: WorkflowState) -> bool:
        checked = cast(
            Grid, _WrappedGrid(grid, check=lambda replies: checked_share_replies(replies, state))
        )
        try:
            if super().unmask_stage(checked, context, state):
                return True
            log.warning("round %d: too few shares came back to unmask its sum", _round(context))
        except ShareError as error:
            log.warning("round %d: the shares did not unmask its sum (%s)", _round(context), error)
        if self.unmask_failed is not None:
            self.unmask_failed(_round(context))
        return False


def checked_share_replies(replies: list[Message], state: WorkflowState) -> list[Message]:
    """The unmask stage's replies, checked:

    - each keeps one share per owner, for owners in its sender's neighbourhood; a reply of
      the wrong shape is dropped and counted as a failure;
    - each owner keeps the shares of its first ``threshold`` + ``SPARE_SHARES`` senders (by
      node id), which must agree (``shares_agree``); when they do not and exactly one
      sender's shares explain it, that sender's reply is dropped (a failure), otherwise
      ``ShareError`` (the round is not unmasked).
    """
    limit = state.threshold + SPARE_SHARES
    by_owner: dict[int, dict[int, bytes]] = {}  # owner -> sender -> share
    kept: list[Message] = []
    for reply in sorted(replies, key=lambda r: r.metadata.src_node_id):
        if reply.has_error():  # Flower counts it as a failure
            kept.append(reply)
            continue
        sender = reply.metadata.src_node_id
        shares = _neighbours_shares(reply, state)
        if shares is None:
            state.failures.append(ValueError(f"device {sender}: malformed share reply"))
            continue
        for owner, share in shares.items():
            senders = by_owner.setdefault(owner, {})
            if len(senders) < limit:
                senders[sender] = share
        owners = [owner for owner in shares if sender in by_owner[owner]]
        record = reply.content.config_records[RECORD_KEY_CONFIGS]
        record[SecAggKey.NODE_ID_LIST] = owners
        record[SecAggKey.SHARE_LIST] = [shares[owner] for owner in owners]
        kept.append(reply)
    culprit = _disagreeing_sender(by_owner, state.threshold)
    if culprit is None:
        return kept
    log.warning("device %d: its shares disagree with its neighbours'; reply dropped", culprit)
    state.failures.append(ValueError(f"device {culprit}: shares that disagree"))
    return [reply for reply in kept if reply.metadata.src_node_id != culprit]


def _neighbours_shares(reply: Message, state: WorkflowState) -> dict[int, bytes] | None:
    """The reply's shares, owner -> share: one per owner in its sender's neighbourhood (the
    first it lists); None if it is not a reply of the unmask stage's shape."""
    record = reply.content.config_records.get(RECORD_KEY_CONFIGS)
    if record is None:
        return None
    owners, shares = record.get(SecAggKey.NODE_ID_LIST), record.get(SecAggKey.SHARE_LIST)
    if not isinstance(owners, list) or not isinstance(shares, list) or len(owners) != len(shares):
        return None
    sender = reply.metadata.src_node_id
    allowed = state.nid_to_neighbours.get(sender, set()) & state.sampled_node_ids
    kept: dict[int, bytes] = {}
    for owner, share in zip(owners, shares, strict=True):
        if owner in allowed and isinstance(share, bytes):
            kept.setdefault(owner, share)
    if len(kept) < len(owners):
        dropped = len(owners) - len(kept)
        log.warning("device %d: %d shares repeated or for non-neighbours, dropped", sender, dropped)
    return kept


def _disagreeing_sender(by_owner: dict[int, dict[int, bytes]], threshold: int) -> int | None:
    """None if every owner's shares agree; else the one sender without whose shares they
    all do (ShareError if no single sender explains the disagreement)."""
    disagreeing = [
        senders for senders in by_owner.values() if not _agree(list(senders.values()), threshold)
    ]
    if not disagreeing:
        return None
    suspects = set.intersection(*(set(senders) for senders in disagreeing))
    culprits = [
        suspect
        for suspect in sorted(suspects)
        if all(
            _agree([share for sender, share in senders.items() if sender != suspect], threshold)
            for senders in disagreeing
        )
    ]
    if len(culprits) != 1:
        raise ShareError(
            f"the shares of {len(disagreeing)} devices' secrets disagree, and no single "
            "sender's shares explain it"
        )
    return culprits[0]


def _agree(shares: list[bytes], threshold: int) -> bool:
    try:
        return shares_agree(shares, threshold)
    except ShareError:
        return False


def _count_once(state: WorkflowState, before: int) -> None:
    """Flower 1.41 lists each failed reply of the masked-vector stage twice: keep one."""
    added = [str(failure) for failure in state.failures[before:]]
    half = len(added) // 2
    if len(added) % 2 == 0 and added[:half] == added[half:]:
        del state.failures[before + half :]


def _count_silent(state: WorkflowState, sent: set[int], before: int) -> None:
    """Count the devices that never replied within the timeout as failures too."""
    silent = len(sent) - len(state.active_node_ids) - (len(state.failures) - before)
    state.failures.extend(TimeoutError("no reply within the stage timeout") for _ in range(silent))


def neighbourhood_size(sampled: int, *, least: int, threshold: float, tolerance: float) -> int:
    """The SecAgg+ neighbourhood for a cohort of ``sampled`` (see the module doc)."""
    for size in range(least | 1, sampled, 2):
        needed = max(2, round(threshold * size))
        short = sum(
            math.comb(size, alive) * (1 - tolerance) ** alive * tolerance ** (size - alive)
            for alive in range(needed)
        )
        if sampled * short <= NEIGHBOURHOOD_RISK:
            return size
    return sampled


def timed(workflow: Workflow, timeout: float) -> Workflow:
    """``workflow`` with every wait for replies capped at ``timeout`` seconds."""
    return lambda grid, context: workflow(cast(Grid, _WrappedGrid(grid, timeout=timeout)), context)


class _WrappedGrid:
    """A grid whose ``send_and_receive`` waits at most ``timeout`` seconds unless told
    otherwise, and hands the replies through ``check``."""

    def __init__(
        self,
        grid: Grid,
        *,
        timeout: float | None = None,
        check: Callable[[list[Message]], list[Message]] | None = None,
    ) -> None:
        self._grid = grid
        self._timeout = timeout
        self._check = check

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        replies = list(self._grid.send_and_receive(messages, timeout=timeout or self._timeout))
        return self._check(replies) if self._check is not None else replies

    def __getattr__(self, name: str) -> object:
        return getattr(self._grid, name)


def _round(context: Context) -> int:
    return int(cast(int, context.state.config_records[MAIN_CONFIGS_RECORD][Key.CURRENT_ROUND]))


def fit_workflow(spec: RunSpec, plan: PrivacyPlan) -> Workflow:
    """The round's fit workflow: ``SurvivorCheckedSecAgg`` (its ``size_neighbourhoods``
    must hear each round's cohort) or Flower's plain one, with the stage timeout."""
    federation = spec.config.federation
    if not plan.secagg:
        return timed(default_fit_workflow, federation.stage_timeout_s)
    expected = plan.expected_devices
    if expected > MAX_COHORT / 2:
        raise ConfigError(
            f"federation.clients_per_round: {expected} expected devices per round; SecAgg+ "
            f"sums at most {MAX_COHORT // 2} payloads here without wrapping"
        )
    return SurvivorCheckedSecAgg(
        plan,
        neighbours=federation.secagg_neighbours,
        threshold=federation.secagg_threshold,
        tolerance=federation.dropout_tolerance,
        timeout=federation.stage_timeout_s,
    )
