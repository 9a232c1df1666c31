"""The round's fit workflow: Flower's SecAgg+ with the plan's quantization, or plain.

``SurvivorCheckedSecAgg`` is Flower's ``SecAggPlusWorkflow`` set to the plan's quantization
(``common.federation.privacy_plan``: the devices size their noise shares in its integer
units and refuse a setup that differs) with one more rule: when devices add the noise, a
round in which fewer than ``min_devices`` devices sent their masked vectors stops before
the unmask stage, so the server never unmasks a sum carrying less noise than planned. The
masked vectors it drops are uniformly random to the server: nothing was released.

SecAgg+ takes the number of key shares as a fraction of the round's devices; the strategy
reports each round's sample size and ``size_neighbourhoods`` sets that fraction to
(neighbours + 1) / sampled, which keeps every device's work constant as rounds grow.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from flwr.app import Context
from flwr.server import LegacyContext
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.default_workflows import default_fit_workflow
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState
from flwr.serverapp import Grid

from common.config import ConfigError
from common.federation.privacy_plan import MODULUS, QUANTIZATION_RANGE, PrivacyPlan
from common.federation.run_spec import RunSpec

log = logging.getLogger(__name__)
Workflow = Callable[[Grid, Context], None]
MAX_COHORT = MODULUS // (2 * QUANTIZATION_RANGE)  # payload sums that cannot wrap around


class SurvivorCheckedSecAgg(SecAggPlusWorkflow):
    """SecAgg+ that will not unmask fewer than ``min_devices`` noised vectors."""

    def __init__(self, plan: PrivacyPlan, *, neighbours: int, threshold: float) -> None:
        super().__init__(
            num_shares=1.0,
            reconstruction_threshold=threshold,
            max_weight=1.0,
            clipping_range=plan.clip_range,
            quantization_range=QUANTIZATION_RANGE,
            modulus_range=MODULUS,
        )
        self.min_devices = plan.min_devices if plan.devices_add_noise else 1
        self.neighbours = neighbours

    def size_neighbourhoods(self, sampled: int) -> None:
        self.num_shares = min(1.0, (self.neighbours + 1) / max(sampled, 1))

    def collect_masked_vectors_stage(
        self, grid: Grid, context: LegacyContext, state: WorkflowState
    ) -> bool:
        if not super().collect_masked_vectors_stage(grid, context, state):
            return False
        if len(state.active_node_ids) < self.min_devices:
            log.warning(
                "round dropped unseen: %d devices sent masked vectors, the noise plan needs "
                "%d; the sum is not unmasked",
                len(state.active_node_ids),
                self.min_devices,
            )
            return False
        return True


def fit_workflow(spec: RunSpec, plan: PrivacyPlan) -> tuple[Workflow, Callable[[int], None] | None]:
    """The round's fit workflow and the hook that hears each round's sample size."""
    federation = spec.config.federation
    if not plan.secagg:
        return default_fit_workflow, None
    expected = plan.expected_devices
    if expected > MAX_COHORT / 2:
        raise ConfigError(
            f"federation.clients_per_round: {expected} expected devices per round; SecAgg+ "
            f"sums at most {MAX_COHORT // 2} payloads here without wrapping"
        )
    workflow = SurvivorCheckedSecAgg(
        plan, neighbours=federation.secagg_neighbours, threshold=federation.secagg_threshold
    )
    return workflow, workflow.size_neighbourhoods
