"""The Flower ServerApp: federated training of the shared query adapter (flwr 1.41).

One code path, the legacy workflow API (the one that supports SecAgg+ in 1.41)::

    DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(...) or default_fit_workflow)
    with LegacyContext(strategy = MovingAverage(DP wrapper(FederatedAdapterStrategy)))

- ``federation.dp``: ``DifferentialPrivacyClientSideFixedClipping`` (devices clip their
  update to C with ``fixedclipping_mod``; the server adds N(0, (sigma C)^2) to the sum) and a
  user-level ``PrivacyLedger``; the run refuses to start when ``federation.rounds`` would
  pass ``federation.epsilon_user``.
- ``federation.average_decay``: ``server.federation.averaging.MovingAverage``; devices evaluate, and
  the registry publishes, a moving average of the global adapter (post-processing: no
  privacy cost).
- ``federation.secagg``: SecAgg+ (devices run ``secaggplus_mod``); the server only ever
  sees the sum of the (clipped, quantized) updates.

After each round's evaluation the global adapter is published as a registry version
(``server.federation.publish``) and the round's metrics are appended to ``<run_dir>/metrics.jsonl``;
the ledger is kept in ``<run_dir>/privacy_ledger.json``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import flwr.compat.common.recorddict_compat as compat
from flwr.app import Context
from flwr.common import parameters_to_ndarrays
from flwr.server import LegacyContext, ServerConfig
from flwr.server.strategy import DifferentialPrivacyClientSideFixedClipping, Strategy
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key
from flwr.server.workflow.default_workflows import (
    default_evaluate_workflow,
    default_fit_workflow,
)
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.differential_privacy import CLIENTS_DISCREPANCY_WARNING

from common.config import ConfigError
from common.federation.privacy_plan import UserLevelDP
from common.federation.run_spec import RunSpec
from common.federation.secure_masks import install_secure_masks
from common.security.signing import publisher
from server.federation.averaging import MovingAverage
from server.federation.ledger import PrivacyLedger
from server.federation.publish import publish_adapter
from server.federation.strategy import FederatedAdapterStrategy, RoundLog

# SecAgg+ masks from the full agreed secret, as the devices' (Flower issue #7522).
install_secure_masks()

log = logging.getLogger(__name__)
METRICS_FILE = "metrics.jsonl"
# flwr's SecAgg+ quantizes to 2**22 levels and sums modulo 2**32 (its defaults, kept here).
SECAGG_MAX_DEVICES = 2**32 // 2**22
LEDGER_FILE = "privacy_ledger.json"
Workflow = Callable[[Grid, Context], None]


class PoissonCohortFilter(logging.Filter):
    """Drops flwr's DP-wrapper warning that a round's cohort differs from the expected size.

    Cohorts are Poisson-sampled, so their size varies by design; under DP the strategy
    averages over the fixed expected size, which is the sensitivity the wrapper's noise is
    calibrated to (``server.federation.strategy``), so the warning is a false alarm here.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != CLIENTS_DISCREPANCY_WARNING


logging.getLogger("flwr").addFilter(PoissonCohortFilter())


@dataclass(frozen=True)
class StrategyStack:
    """The strategy the workflow runs, and the layers the run reads back from."""

    outer: Strategy
    fedavg: FederatedAdapterStrategy
    average: MovingAverage | None


def build_strategy(
    spec: RunSpec, dp: UserLevelDP | None, on_sample: Callable[[int], None] | None = None
) -> StrategyStack:
    """FedAvg, wrapped in Flower's client-side-clipping DP strategy when ``dp`` is set and
    in the moving average when ``federation.average_decay`` > 0."""
    fedavg = FederatedAdapterStrategy(spec, dp, on_sample)
    strategy: Strategy = fedavg
    if dp is not None:
        strategy = DifferentialPrivacyClientSideFixedClipping(
            fedavg,
            noise_multiplier=dp.noise_multiplier,
            clipping_norm=dp.clipping_norm,
            num_sampled_clients=dp.expected_devices,
        )
    decay = spec.config.federation.average_decay
    average = MovingAverage(strategy, decay=decay) if decay > 0 else None
    return StrategyStack(average or strategy, fedavg, average)


def fit_workflow(spec: RunSpec) -> tuple[Workflow, Callable[[int], None] | None]:
    """The fit workflow, and the hook that sizes SecAgg+ neighbourhoods to the round.

    flwr's SecAgg+ takes the number of key shares as a fraction of the round's devices;
    setting it each round to (neighbours + 1) / sampled keeps every device's work constant
    (SecAgg+'s point) instead of growing with the round's size.
    """
    federation = spec.config.federation
    if not federation.secagg:
        return default_fit_workflow, None
    expected = spec.expected_devices
    if expected + 6 * math.sqrt(expected) >= SECAGG_MAX_DEVICES:
        raise ConfigError(
            f"federation.clients_per_round: {expected} expected devices per round; SecAgg+ "
            f"sums fewer than {SECAGG_MAX_DEVICES} quantized updates without overflow"
        )
    secagg = SecAggPlusWorkflow(
        num_shares=1.0,
        reconstruction_threshold=federation.secagg_threshold,
        max_weight=1.0,  # every device has weight 1
        clipping_range=federation.secagg_range,
    )

    def size_neighbourhoods(sampled: int) -> None:
        secagg.num_shares = min(1.0, (federation.secagg_neighbours + 1) / max(sampled, 1))

    return secagg, size_neighbourhoods


class RunRecorder:
    """Charges the ledger each round, then records metrics and publishes the adapter."""

    def __init__(
        self,
        spec: RunSpec,
        round_log: RoundLog,
        ledger: PrivacyLedger | None,
        finalize: Callable[[Path], None] | None = None,
    ) -> None:
        self.spec = spec
        self.round_log = round_log
        self.ledger = ledger
        self.finalize = finalize
        self.start = time.perf_counter()
        spec.run_dir.mkdir(parents=True, exist_ok=True)
        (spec.run_dir / METRICS_FILE).write_text("", encoding="utf-8")

    def charged(self, fit: Workflow) -> Workflow:
        def run(grid: Grid, context: Context) -> None:
            if self.ledger is not None:
                self.ledger.record_round(_current_round(context))
                self._write_ledger()
            fit(grid, context)

        return run

    def recorded(self, evaluate: Workflow, average: MovingAverage | None) -> Workflow:
        """Evaluate, then record and publish what was evaluated (the moving average if
        the run keeps one, else the global adapter)."""

        def run(grid: Grid, context: Context) -> None:
            evaluate(grid, context)
            averaged = average.average if average is not None else None
            weights = averaged if averaged is not None else _global_weights(context)
            self.record(_current_round(context), weights)

        return run

    def record(self, server_round: int, weights: list) -> None:
        evaluation = self.round_log.evaluate.get(server_round, {})
        entry = {
            "round": server_round,
            "elapsed_s": round(time.perf_counter() - self.start, 3),
            "fit": self.round_log.fit.get(server_round, {}),
            "evaluate": evaluation,
            "epsilon_user": self.ledger.epsilon() if self.ledger else None,
        }
        if self.spec.config.federation.publish:
            folder = publish_adapter(
                self.spec.config.paths.registry,
                weights,
                self._manifest(server_round, evaluation),
                finalize=self.finalize,
            )
            entry["published"] = str(folder)
        with (self.spec.run_dir / METRICS_FILE).open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(_finite(entry)) + "\n")
        log.info(
            "round %d recorded: personal nDCG@10 %s, epsilon_user %s",
            server_round,
            evaluation.get("personal.nDCG@10"),
            entry["epsilon_user"],
        )

    def _manifest(self, server_round: int, evaluation: dict[str, Any]) -> dict[str, Any]:
        federation = self.spec.config.federation
        return _finite(
            {
                "round": server_round,
                "run": self.spec.run_dir.name,
                "population": self.spec.population,
                "base_model": self.spec.base_model,
                "metrics": evaluation,
                "privacy": self.ledger.summary() if self.ledger else {"user_level_dp": False},
                "secure_aggregation": federation.secagg,
                "federation": federation.model_dump(),
            }
        )

    def _write_ledger(self) -> None:
        state = {"summary": self.ledger.summary(), **self.ledger.state_dict()}
        (self.spec.run_dir / LEDGER_FILE).write_text(json.dumps(state, indent=2), "utf-8")


def run_federation(
    grid: Grid,
    context: Context,
    spec: RunSpec,
    finalize: Callable[[Path], None] | None = None,
) -> RoundLog:
    """Run ``federation.rounds`` rounds; refuse to start if the privacy budget is too small."""
    dp = UserLevelDP.from_spec(spec)
    ledger = PrivacyLedger.for_plan(dp) if dp is not None else None
    if ledger is not None:
        ledger.check_plan(spec.config.federation.rounds)
    fit, on_sample = fit_workflow(spec)
    stack = build_strategy(spec, dp, on_sample)
    recorder = RunRecorder(spec, stack.fedavg.log, ledger, finalize)
    workflow = DefaultWorkflow(
        fit_workflow=recorder.charged(fit),
        evaluate_workflow=recorder.recorded(default_evaluate_workflow, stack.average),
    )
    rounds = ServerConfig(num_rounds=spec.config.federation.rounds)
    legacy = LegacyContext(context, config=rounds, strategy=stack.outer)
    workflow(grid, legacy)
    return stack.fedavg.log


def _current_round(context: Context) -> int:
    return int(cast(int, context.state.config_records[MAIN_CONFIGS_RECORD][Key.CURRENT_ROUND]))


def _global_weights(context: Context) -> list:
    record = context.state.array_records[MAIN_PARAMS_RECORD]
    return parameters_to_ndarrays(compat.arrayrecord_to_parameters(record, keep_input=True))


def _finite(value: Any) -> Any:
    """JSON-safe copy: NaN and infinities become None."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def build_server_app(
    spec: RunSpec | None = None, finalize: Callable[[Path], None] | None = None
) -> ServerApp:
    """The ServerApp; ``spec`` None reads it from the Flower run config (``flwr run``).

    Published versions are signed with ``finalize``, else with the key named by
    ``$FEDSEARCH_SIGNING_KEY`` (``common.security.signing.publisher``); unsigned if neither.
    """
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_federation(
            grid,
            context,
            spec or RunSpec.from_run_config(context.run_config, context.run_id),
            finalize or publisher(),
        )

    return app


app = build_server_app()
