"""The server's strategy: Poisson-sampled rounds over the devices' payloads.

- Sampling: each round every device joins independently with probability q (the sampling
  the user-level accountant assumes), drawn from ``rng`` (unpredictable outside a
  simulation) over the devices in the order they registered (``enrolment``: node id to
  sort key; Flower draws node ids at random, so a seeded simulation picks the same
  devices each run only in that order); ``on_sample`` hears the round and the node ids
  that joined, in that order (SecAgg+ sizes its neighbourhoods). The first round waits up to
  ``REGISTRATION_TIMEOUT_S`` for the whole population to connect; after that (or once it
  passed) rounds sample the devices connected at the time: a device offline is never
  sampled, which only lowers its chance of joining below q.
  Under DP-FTRL (``federation.mechanism``) a device joins instead at the round of each
  epoch it drew, and the server's noise is the tree's (``server.federation.tree_noise``).
- Aggregation: the devices' payloads (``common.federation.payload``) arrive summed by
  SecAgg+ (Flower hands each result the average; the sum is that times the count) or one
  by one. Server-side noise, when the plan places it there, is added to the sum; then the
  sum splits into the update and the statistics. The average update divides by the
  plan's fixed ``expected_devices`` under DP (one device moves it by at most C / that),
  by the cohort's size otherwise, and ``ServerOptimizer`` applies it.
- Statistics: counts of devices that trained and declined, and the mean over evaluated
  devices of each ranking metric of the published version they verified, all carrying the
  round's noise (their standard deviation is recorded). No evaluation messages are sent.
- Evaluation: the weights in ``to_evaluate`` (set after each round: the candidate version,
  ``server.federation.promotion``) travel in the fit config; devices rank with them.
- Clipping: under ``federation.adaptive_clipping`` each round's norm travels in the fit
  config and moves after the round (``server.federation.adaptive_clipping``); the round's
  noise, statistics and checks use the plan at that norm.
- Poisoning check (``federation.sum_bound``): a sum heavier than any honest cohort's
  (``server.federation.sum_bound``) refuses the round: no update, recorded as refused.

``RoundLog`` keeps each aggregated round's figures for the run's records.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
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

from common.evaluation.metrics import MODES
from common.federation.candidate import CANDIDATE_KEY, encode_candidate
from common.federation.payload import COUNTS, UNCLIPPED, PayloadCodec
from common.federation.privacy_plan import CEILING_RATIO, CLIPPING_KEY, PrivacyPlan
from common.federation.run_spec import RunSpec
from common.privacy.keystream import KeystreamRandom
from server.federation.adaptive_clipping import AdaptiveClipping
from server.federation.server_update import ServerOptimizer
from server.federation.sum_bound import SumBound
from server.federation.tree_noise import EpochCohorts, TreeNoise

log = logging.getLogger(__name__)
REGISTRATION_TIMEOUT_S = 600
# Sees the noised payload sum of each round, exactly what the server holds (audits, tests).
SumObserver = Callable[[RunSpec, int, np.ndarray], None]
# Hears each round's number and the node ids sampled for it (in registration order).
CohortObserver = Callable[[int, list[int]], None]
# Node id -> the key devices are ordered by before sampling (their registration time).
Enrolment = Callable[[], Mapping[int, str]]


@dataclass
class RoundLog:
    """Per-round figures of the aggregated rounds."""

    fit: dict[int, dict[str, float]] = field(default_factory=dict)


class FederatedAdapterStrategy(FedAvg):
    """Sampling and aggregation of the adapter's payloads (see the module doc)."""

    def __init__(
        self,
        spec: RunSpec,
        plan: PrivacyPlan,
        initial: list[np.ndarray],
        rng: KeystreamRandom,
        on_sample: CohortObserver | None = None,
        on_sum: SumObserver | None = None,
        enrolment: Enrolment | None = None,
    ) -> None:
        super().__init__(
            min_fit_clients=1,
            min_available_clients=spec.num_devices,
            accept_failures=True,
            initial_parameters=ndarrays_to_parameters(initial),
        )
        self.spec = spec
        self.plan = plan
        self.rng = rng
        self.on_sample = on_sample
        self.on_sum = on_sum
        self.enrolment = enrolment
        self.optimizer = ServerOptimizer(
            spec.config.federation.server_lr, spec.config.federation.server_momentum
        )
        self.clipping = _adaptive_clipping(plan, spec)
        self.cohorts = EpochCohorts(plan.epoch_rounds, rng) if plan.tree else None
        self.tree = TreeNoise(plan.epoch_rounds, plan.sigma_server, rng) if plan.tree else None
        self._norms: dict[int, float] = {}  # each round's clipping norm, as sent
        self.current: list[np.ndarray] = list(initial)
        self.to_evaluate: list[np.ndarray] | None = None
        self.log = RoundLog()
        self._waited = False
        self._enrolled: dict[int, str] = {}
        self.bounded = spec.config.federation.sum_bound

    def plan_of_round(self, server_round: int) -> PrivacyPlan:
        """The plan at the norm round ``server_round`` was sent."""
        norm = self._norms.get(server_round)
        return self.plan if norm is None else self.plan.at_clipping(norm)

    def __repr__(self) -> str:
        return f"FederatedAdapterStrategy(q={self.plan.sample_rate:.4g})"

    def _devices(self, client_manager: ClientManager) -> list[ClientProxy]:
        if not self._waited:
            self._waited = True
            if not client_manager.wait_for(self.spec.num_devices, REGISTRATION_TIMEOUT_S):
                log.warning(
                    "only %d of %d devices connected within %d s: rounds sample the connected",
                    client_manager.num_available(),
                    self.spec.num_devices,
                    REGISTRATION_TIMEOUT_S,
                )
        devices = {int(cid): proxy for cid, proxy in client_manager.all().items()}
        if self.enrolment is not None and not devices.keys() <= self._enrolled.keys():
            self._enrolled = dict(self.enrolment())  # asked again only when a node is new
        keys = self._enrolled
        order = sorted(devices, key=lambda node: (keys.get(node, ""), node))
        return [devices[node] for node in order]

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        self.current = parameters_to_ndarrays(parameters)
        cohort = self._cohort(server_round, self._devices(client_manager))
        if self.on_sample is not None:
            self.on_sample(server_round, [proxy.node_id for proxy in cohort])
        config: dict[str, Scalar] = {"round": server_round}
        if self.clipping is not None:
            config[CLIPPING_KEY] = self._norms[server_round] = self.clipping.norm
        if self.to_evaluate is not None:
            config[CANDIDATE_KEY] = encode_candidate(self.to_evaluate)
        fit_ins = FitIns(parameters, config)
        return [(proxy, fit_ins) for proxy in cohort]

    def _cohort(self, server_round: int, devices: list[ClientProxy]) -> list[ClientProxy]:
        if self.cohorts is not None:
            members = set(self.cohorts.cohort(server_round, [p.node_id for p in devices]))
            return [proxy for proxy in devices if proxy.node_id in members]
        joined = self.rng.bernoulli(self.plan.sample_rate, len(devices))
        return [proxy for proxy, ok in zip(devices, joined, strict=True) if ok]

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: Sequence[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        if not results:
            log.warning("round %d: no device replied (%d failures)", server_round, len(failures))
            return None, {}
        plan = self.plan_of_round(server_round)
        codec = PayloadCodec.for_plan(self.current, plan)
        total = self._payload_sum(results)
        noise_variance = 1  # in node variances (sigma_server**2)
        if self.tree is not None:
            noise, noise_variance = self.tree.increment(server_round, total.size)
            total = total + noise
        elif plan.server_adds_noise:
            total = total + plan.sigma_server * self.rng.normal(total.size)
        if self.on_sum is not None:
            self.on_sum(self.spec, server_round, total)
        bound = SumBound(plan, codec.size) if self.bounded else None
        if bound is not None and not bound.admits(total, len(results)):
            log.warning(
                "round %d refused: the sum is heavier than honest devices send", server_round
            )
            figures = {"devices": float(len(results)), "failures": float(len(failures))}
            self.log.fit[server_round] = figures | {"refused": 1.0}
            return None, dict(self.log.fit[server_round])
        update_sum, stats = codec.decode(total)
        denominator = plan.expected_devices if plan.dp else len(results)
        average = [u / denominator for u in update_sum]
        weights = self.optimizer.step(self.current, average)
        figures = self._round_figures(len(results), len(failures), stats)
        if stats:
            figures["stats_noise_std"] = stats_noise_std(plan, codec, noise_variance)
        if self.clipping is not None:
            figures["clipping_norm"] = plan.clipping_norm
            share = self.clipping.step(stats[UNCLIPPED], plan.expected_devices)
            figures["unclipped_share"] = share
        self.log.fit[server_round] = figures
        return ndarrays_to_parameters(weights), dict(figures)

    def _payload_sum(self, results: list[tuple[ClientProxy, FitRes]]) -> np.ndarray:
        payloads = [parameters_to_ndarrays(res.parameters)[0] for _, res in results]
        if self.plan.secagg:  # SecAgg+ put the cohort's average in every result
            return np.asarray(payloads[0], dtype=np.float64) * len(results)
        return np.sum([np.asarray(p, dtype=np.float64) for p in payloads], axis=0)

    def _round_figures(self, replies: int, failures: int, stats: dict[str, float]) -> dict:
        figures: dict[str, float] = {"devices": float(replies), "failures": float(failures)}
        if not stats:
            return figures
        k = self.spec.config.evaluation.k
        evaluated = stats["evaluated"]
        figures |= {name: stats[name] for name in COUNTS}
        for mode in MODES:
            for stat, name in (("hr", f"HR@{k}"), ("ndcg", f"nDCG@{k}"), ("rr", "MRR")):
                mean = stats[f"{mode}.{stat}"] / evaluated if evaluated >= 1 else math.nan
                figures[f"{mode}.{name}"] = mean
        return figures

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        return []  # devices report evaluation through their noised payload

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: Sequence[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, dict[str, Scalar]]:
        return None, {}

    def state_dict(self) -> dict[str, Any]:
        clipping = self.clipping.state_dict() if self.clipping is not None else None
        return {
            "current": self.current,
            "optimizer": self.optimizer.state_dict(),
            "clipping": clipping,
        }


def stats_noise_std(plan: PrivacyPlan, codec: PayloadCodec, variance: int = 1) -> float:
    """Standard deviation of the round's noise on each summed statistic (in counts);
    ``variance``: the server noise's, in units of sigma_server**2 (above 1 under DP-FTRL)."""
    if not plan.dp or not codec.stats_size:
        return 0.0
    if plan.server_adds_noise:
        noise = plan.sigma_server * math.sqrt(variance)
    else:  # the devices' shares, at the fewest survivors, in payload units
        noise = plan.noise_multiplier * plan.l2_sensitivity_units(codec.size) / plan.scale
    return noise / codec.gamma


def _adaptive_clipping(plan: PrivacyPlan, spec: RunSpec) -> AdaptiveClipping | None:
    if not plan.adaptive:
        return None
    federation = spec.config.federation
    return AdaptiveClipping(
        plan.clipping_norm,
        quantile=federation.clipping_quantile,
        lr=federation.clipping_lr,
        floor=plan.ceiling / CEILING_RATIO,
        ceiling=plan.ceiling,
    )
