"""The Flower ServerApp: federated training of the shared query adapter (flwr 1.41).

One code path, Flower's workflow API (the one with SecAgg+ in 1.41)::

    DefaultWorkflow(fit = SurvivorCheckedSecAgg(...) or Flower's plain fit workflow)
    over LegacyContext(strategy = [MovingAverage](FederatedAdapterStrategy))

The run's ``PrivacyPlan`` (``common.federation.privacy_plan``) is derived once and drives
everything: the strategy's sampling, server-side noise and fixed denominator, SecAgg+'s
quantization and its survivor rule, and the population's ledger, which refuses a run
whose rounds would pass ``federation.epsilon_user``. After each round ``RunRecorder``
charges the ledger, publishes the version and appends the round to ``metrics.jsonl``, and
the server saves what the next round starts from (``server.federation.resume``): a server
restarted with the run config key ``resume`` = true on the same ``run-dir`` continues
after the last recorded round.

Randomness (cohorts, server-side noise, the initial adapter) comes from the operating
system on a deployed server; a simulation's server draws it from ``federation.seed``
(``build_server_app(seeded=True)``) and samples devices in the order they registered, so
its cohorts and noise repeat although Flower gives the devices random node ids.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

import flwr.compat.common.recorddict_compat as compat
import numpy as np
import torch
from flwr.app import Context
from flwr.common import parameters_to_ndarrays
from flwr.server import LegacyContext, ServerConfig
from flwr.server.strategy import Strategy
from flwr.server.workflow import DefaultWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key
from flwr.serverapp import Grid, ServerApp

from common.federation.payload import PayloadCodec
from common.federation.prime_shamir import install_prime_shamir
from common.federation.privacy_plan import PrivacyPlan
from common.federation.run_spec import RunSpec
from common.federation.secure_masks import install_secure_masks
from common.federation.x25519_keys import install_x25519_keys
from common.model.adapter import QueryAdapter
from common.model.encoder_files import embedding_dim
from common.privacy.keystream import KeystreamRandom
from common.security.signing import publisher
from server.federation.averaging import MovingAverage
from server.federation.ledger import PopulationLedger
from server.federation.recorder import RunRecorder
from server.federation.resume import (
    ServerState,
    check_resumable,
    resume_point,
    save_server_state,
)
from server.federation.secure_aggregation import SurvivorCheckedSecAgg, Workflow, fit_workflow
from server.federation.strategy import (
    CohortObserver,
    Enrolment,
    FederatedAdapterStrategy,
    SumObserver,
)

install_secure_masks()  # SecAgg+ masks keyed by the whole shared secret (devices do too)
install_prime_shamir()  # SecAgg+ secret shares over GF(2**521 - 1), fast (devices do too)
install_x25519_keys()  # SecAgg+ key agreement over X25519, fast (devices do too)

log = logging.getLogger(__name__)
# Hears each round's sampled node ids before its first message (simulated faults).
RunCohortObserver = Callable[[RunSpec, int, list[int]], None]


@dataclass(frozen=True)
class StrategyStack:
    """The strategy the workflow runs, and the layers the run reads back from."""

    outer: Strategy
    fedavg: FederatedAdapterStrategy
    average: MovingAverage | None


def build_strategy(
    spec: RunSpec,
    plan: PrivacyPlan,
    initial: list[np.ndarray],
    rng: KeystreamRandom,
    on_sample: CohortObserver | None = None,
    on_sum: SumObserver | None = None,
    enrolment: Enrolment | None = None,
) -> StrategyStack:
    """The aggregation strategy, in a moving average when ``average_decay`` > 0."""
    fedavg = FederatedAdapterStrategy(spec, plan, initial, rng, on_sample, on_sum, enrolment)
    decay = spec.config.federation.average_decay
    average = MovingAverage(fedavg, decay=decay) if decay > 0 else None
    return StrategyStack(average or fedavg, fedavg, average)


def initial_adapter(spec: RunSpec, rng: KeystreamRandom) -> list[np.ndarray]:
    """The run's starting adapter: the public warm start it names, else a new adapter (the
    identity: its up-projection starts at zero)."""
    if spec.initial_adapter:
        return QueryAdapter.load(Path(spec.initial_adapter)).get_weights()
    dim = spec.embedding_dim or embedding_dim(spec.config.encoder.model)
    torch.manual_seed(int(rng.uint64(1)[0] >> np.uint64(1)))
    return QueryAdapter(dim, spec.config.adapter.rank).get_weights()


def open_ledger(spec: RunSpec, plan: PrivacyPlan) -> PopulationLedger | None:
    """The population's ledger (None without user-level DP)."""
    if not plan.dp:
        return None
    federation = spec.config.federation
    folder = Path(federation.ledger_dir) if federation.ledger_dir else spec.config.paths.work
    folder = folder if federation.ledger_dir else folder / "ledgers"
    return PopulationLedger.for_population(
        folder, spec.ledger_name, delta=plan.delta, epsilon_budget=plan.epsilon_budget
    )


def run_federation(
    grid: Grid,
    context: Context,
    spec: RunSpec,
    rng: KeystreamRandom,
    finalize: Callable[[Path], None] | None = None,
    on_sum: SumObserver | None = None,
    *,
    on_cohort: RunCohortObserver | None = None,
    resume: bool = False,
    promote: Literal["if-not-worse", "always"] = "if-not-worse",
) -> FederatedAdapterStrategy:
    """Run ``federation.rounds`` rounds (``resume``: those after the last one recorded in
    ``spec.run_dir``) under the ``promote`` rule (``server.federation.promotion``); refuse
    to start if the ledger's budget is short."""
    plan = PrivacyPlan.from_spec(spec)
    if resume:
        check_resumable(plan.tree)
    ledger = open_ledger(spec, plan)
    state = resume_point(spec.run_dir, spec.run_dir.name, ledger) if resume else None
    if state is not None:
        rng.seek(state.rng_position)
    initial = state.weights if state is not None else initial_adapter(spec, rng)
    done = state.round if state is not None else 0
    codec = PayloadCodec.for_plan(initial, plan)
    rounds = max(0, spec.config.federation.rounds - done)
    if ledger is not None:
        ledger.check_plan(plan.planned_rdp(codec.size, first=done + 1), rounds)
    fit = fit_workflow(spec, plan)
    stack = build_strategy(
        spec, plan, initial, rng, _on_sample(spec, fit, on_cohort), on_sum, _enrolment(grid)
    )
    if state is not None:
        _restore(stack, state)
    recorder = RunRecorder(
        spec,
        plan,
        stack.fedavg.log,
        ledger,
        payload_size=codec.size,
        average=stack.average,
        finalize=finalize,
        resume=resume,
        promote=promote,
        round_plan=stack.fedavg.plan_of_round,
    )
    if state is not None:
        recorder.pending, recorder.standing = state.pending, state.standing
        recorder.evaluating = stack.fedavg.to_evaluate = state.evaluating
    if isinstance(fit, SurvivorCheckedSecAgg):
        fit.before_unmask, fit.unmask_failed = recorder.charge, recorder.refund
    workflow = DefaultWorkflow(
        fit_workflow=_recorded(fit, recorder, stack, done),
        evaluate_workflow=lambda grid, context: None,
    )
    config = ServerConfig(num_rounds=rounds)
    workflow(grid, LegacyContext(context, config=config, strategy=stack.outer))
    return stack.fedavg


def _on_sample(
    spec: RunSpec, fit: Workflow, on_cohort: RunCohortObserver | None
) -> CohortObserver | None:
    """The strategy's hook: SecAgg+ sizes its neighbourhoods, then ``on_cohort`` hears."""
    hooks: list[CohortObserver] = []
    if isinstance(fit, SurvivorCheckedSecAgg):
        hooks.append(fit.size_neighbourhoods)
    if on_cohort is not None:
        hooks.append(lambda server_round, nodes: on_cohort(spec, server_round, nodes))
    if not hooks:
        return None

    def hear(server_round: int, nodes: list[int]) -> None:
        for hook in hooks:
            hook(server_round, nodes)

    return hear


def _restore(stack: StrategyStack, state: ServerState) -> None:
    if state.velocity is not None:
        optimizer = stack.fedavg.optimizer
        optimizer.load_state_dict(
            {"lr": optimizer.lr, "momentum": optimizer.momentum, "velocity": state.velocity}
        )
    if stack.average is not None:
        stack.average.average = state.average
    clipping = stack.fedavg.clipping
    if clipping is not None and state.clipping_norm is not None:
        clipping.load_state_dict({"norm": state.clipping_norm})


def _enrolment(grid: Grid) -> Enrolment:
    """Each node's registration time (ISO 8601 sorts in time order)."""
    return lambda: {node.node_id: node.registered_at for node in grid.get_nodes()}


def _recorded(fit: Workflow, recorder: RunRecorder, stack: StrategyStack, done: int) -> Workflow:
    """Each round numbered after the ``done`` rounds already recorded, then recorded and
    its server state saved."""

    def run(grid: Grid, context: Context) -> None:
        config = context.state.config_records[MAIN_CONFIGS_RECORD]
        server_round = _current_round(context) + done
        config[Key.CURRENT_ROUND] = server_round
        fit(grid, context)
        weights = _global_weights(context)
        recorder.record(server_round, weights)
        stack.fedavg.to_evaluate = recorder.evaluating
        velocity = stack.fedavg.optimizer.state_dict()["velocity"]
        state = ServerState(
            round=server_round,
            weights=weights,
            velocity=list(velocity) if isinstance(velocity, list) and velocity else None,
            average=stack.average.average if stack.average is not None else None,
            rng_position=stack.fedavg.rng.position,
            evaluating=recorder.evaluating,
            pending=recorder.pending,
            standing=recorder.standing,
            clipping_norm=clipping.norm if (clipping := stack.fedavg.clipping) else None,
        )
        save_server_state(recorder.spec.run_dir, state)

    return run


def _current_round(context: Context) -> int:
    return int(cast(int, context.state.config_records[MAIN_CONFIGS_RECORD][Key.CURRENT_ROUND]))


def _global_weights(context: Context) -> list[np.ndarray]:
    record = context.state.array_records[MAIN_PARAMS_RECORD]
    return parameters_to_ndarrays(compat.arrayrecord_to_parameters(record, keep_input=True))


def build_server_app(
    spec: RunSpec | None = None,
    finalize: Callable[[Path], None] | None = None,
    *,
    seeded: bool = False,
    on_sum: SumObserver | None = None,
    on_cohort: RunCohortObserver | None = None,
) -> ServerApp:
    """The ServerApp; ``spec`` None reads it from the Flower run config (``flwr run``),
    where ``resume`` = true continues the run in ``run-dir`` (``server.federation.resume``).

    Published versions are signed with ``finalize``, else with the key named by
    ``$FEDSEARCH_SIGNING_KEY`` (``common.security.signing.publisher``); unsigned if neither.
    ``seeded``: a simulation: draw randomness from ``federation.seed``, and publish every
    round under ``federation.promote = "auto"``; ``on_sum``
    sees each round's noised payload sum (``server.federation.strategy.SumObserver``);
    ``on_cohort`` each round's sampled node ids (simulated faults).
    """
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        if spec is None:
            show_rounds_on_flower_console()
        run = spec or RunSpec.from_run_config(context.run_config, context.run_id)
        rng = (
            KeystreamRandom.from_seed(run.config.federation.seed, "server")
            if seeded
            else KeystreamRandom.from_os()
        )
        resume = str(context.run_config.get("resume", "")).lower() in ("true", "1")
        promote = run.config.federation.promotion_rule(simulated=seeded)
        run_federation(
            grid, context, run, rng, finalize or publisher(), on_sum,
            on_cohort=on_cohort, resume=resume, promote=promote,
        )  # fmt: skip

    return app


def show_rounds_on_flower_console() -> None:
    """On the Deployment Engine, send the per-round lines (devices that trained, declined
    and failed; what was published) to Flower's console, which ``flwr run --stream``
    shows the operator. Simulations log through the fedsearch CLI instead."""
    from flwr.common.logger import console_handler

    ours = logging.getLogger("server.federation")
    ours.setLevel(logging.INFO)
    if console_handler not in ours.handlers:
        ours.addHandler(console_handler)
    ours.propagate = False


app = build_server_app()
