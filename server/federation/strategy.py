"""The server's strategy: FedAvg over Poisson-sampled devices, with pooled metrics.

- Fit: each round every device joins independently with probability q = clients per round
  / population (the sampling the user-level RDP accountant assumes); ``on_sample`` hears
  how many joined (SecAgg+ sizes its neighbourhoods with it). Every device has
  weight 1. Under DP the average uses the fixed denominator q * population (the expected
  number of devices), so one device moves the average by at most C / (q * population),
  which is the sensitivity Flower's DP wrapper calibrates its noise to.
- Evaluate: ``eval_devices`` devices drawn at random each round (all of them in the last
  round); the devices' metric sums are pooled into HR@k, nDCG@k and MRR per model (base
  encoder, base + global adapter, + personal rerank).

``RoundLog`` keeps each round's fit and evaluation metrics for the run report.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg

from common.evaluation.protocol import MODES, SUM_KEYS, add_sums, metrics_from_sums
from common.federation.privacy_plan import UserLevelDP
from common.federation.run_spec import ROUND_KEY, RunSpec

log = logging.getLogger(__name__)
REGISTRATION_TIMEOUT_S = 600


@dataclass
class RoundLog:
    """Per-round metrics as the strategy saw them."""

    fit: dict[int, dict[str, float]] = field(default_factory=dict)
    evaluate: dict[int, dict[str, Any]] = field(default_factory=dict)


class FederatedAdapterStrategy(FedAvg):
    """FedAvg with Poisson device sampling and uniform weights (see the module doc)."""

    def __init__(
        self,
        spec: RunSpec,
        dp: UserLevelDP | None,
        on_sample: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__(
            min_fit_clients=1,
            min_evaluate_clients=1,
            min_available_clients=spec.num_devices,
            accept_failures=False,
            fit_metrics_aggregation_fn=lambda replies: fit_summary([m for _, m in replies]),
            evaluate_metrics_aggregation_fn=lambda replies: pooled_metrics(
                [m for _, m in replies], spec.config.evaluation.k
            ),
        )
        self.spec = spec
        federation = spec.config.federation
        self.rounds = federation.rounds
        self.eval_devices = federation.eval_devices
        self.fixed_denominator = dp.expected_devices if dp is not None else None
        self.rng = np.random.default_rng(federation.seed)
        self.on_sample = on_sample
        self.current: list[np.ndarray] = []
        self.log = RoundLog()

    def __repr__(self) -> str:
        return f"FederatedAdapterStrategy(q={self.spec.sample_rate:.4g})"

    def _devices(self, client_manager: ClientManager) -> list[ClientProxy]:
        if not client_manager.wait_for(self.spec.num_devices, REGISTRATION_TIMEOUT_S):
            raise RuntimeError(
                f"only {client_manager.num_available()} of {self.spec.num_devices} devices joined"
            )
        return [proxy for _, proxy in sorted(client_manager.all().items())]

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        self.current = parameters_to_ndarrays(parameters)
        if not self.current:
            raise RuntimeError(
                "no initial adapter: the device asked for it failed (see the ClientApp error)"
            )
        devices = self._devices(client_manager)
        joined = self.rng.random(len(devices)) < self.spec.sample_rate
        if self.on_sample is not None:
            self.on_sample(int(joined.sum()))
        fit_ins = FitIns(parameters, {ROUND_KEY: server_round})
        return [(proxy, fit_ins) for proxy, ok in zip(devices, joined, strict=True) if ok]

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: Sequence[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        if not results or failures:
            log.warning(
                "round %d: %d results, %d failures: no update",
                server_round,
                len(results),
                len(failures),
            )
            return None, {}
        parameters, metrics = super().aggregate_fit(server_round, results, list(failures))
        if parameters is None:
            return None, {}
        if self.fixed_denominator is not None:
            mean = parameters_to_ndarrays(parameters)
            scale = len(results) / self.fixed_denominator
            fixed = [g + scale * (m - g) for g, m in zip(self.current, mean, strict=True)]
            parameters = ndarrays_to_parameters([a.astype(np.float32) for a in fixed])
        self.log.fit[server_round] = metrics
        return parameters, metrics

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        devices = self._devices(client_manager)
        count = len(devices)
        if self.eval_devices and server_round < self.rounds:
            count = min(count, self.eval_devices)
        chosen = self.rng.choice(len(devices), size=count, replace=False)
        evaluate_ins = EvaluateIns(parameters, {ROUND_KEY: server_round})
        return [(devices[i], evaluate_ins) for i in sorted(chosen)]

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: Sequence[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, dict[str, Scalar]]:
        if not results:
            return None, {}
        loss, metrics = super().aggregate_evaluate(server_round, results, list(failures))
        metrics["devices"] = float(len(results))
        self.log.evaluate[server_round] = {"loss": loss, **metrics}
        return loss, metrics


def fit_summary(replies: list[dict[str, Scalar]]) -> dict[str, float]:
    """Pool the devices' fit metrics: who took part, who declined, loss, record epsilon."""
    trained = [m for m in replies if not m.get("declined")]
    losses = [float(m["loss"]) for m in trained if math.isfinite(float(m["loss"]))]
    epsilons = [float(m["epsilon_record"]) for m in replies]
    return {
        "participants": float(len(replies)),
        "declined": float(len(replies) - len(trained)),
        "examples": float(sum(float(m["num_examples"]) for m in trained)),
        "loss": float(np.mean(losses)) if losses else float("nan"),
        "epsilon_record_max": max(epsilons) if epsilons else 0.0,
        "train_seconds_mean": float(np.mean([float(m["train_seconds"]) for m in trained]))
        if trained
        else 0.0,
    }


def pooled_metrics(replies: list[dict[str, Scalar]], k: int) -> dict[str, float]:
    """Sum the devices' per-model metric sums; return ``{"<model>.<metric>": mean}``."""
    out: dict[str, float] = {}
    for mode in MODES:
        sums = add_sums({key: float(m[f"{mode}.{key}"]) for key in SUM_KEYS} for m in replies)
        for name, value in metrics_from_sums(sums, k).items():
            out[f"{mode}.{name}"] = value
    return out
