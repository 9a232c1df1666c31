"""The server strategy without a simulation: sampling, aggregation, noise, statistics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.client_manager import SimpleClientManager
from flwr.server.client_proxy import ClientProxy

from common.config import config_from_dict
from common.federation.payload import PayloadCodec
from common.federation.privacy_plan import PrivacyPlan
from common.federation.run_spec import RunSpec
from common.privacy.keystream import KeystreamRandom
from server.federation.app import build_strategy
from server.federation.strategy import FederatedAdapterStrategy

OK = Status(Code.OK, "")
DIM, RANK = 32, 8


class FakeProxy(ClientProxy):
    def __init__(self, node_id: int) -> None:
        super().__init__(str(node_id))
        self.node_id = node_id

    def get_properties(self, ins, timeout, group_id):  # pragma: no cover - unused
        raise NotImplementedError

    get_parameters = fit = evaluate = reconnect = get_properties


def _spec(tmp_path: Path, devices: int = 40, **federation) -> RunSpec:
    config = config_from_dict(
        {
            "paths": {"work_dir": str(tmp_path)},
            "federation": {"clients_per_round": 10, "clipping_norm": 10.0, **federation},
        }
    )
    return RunSpec(config, "marketplace", devices, tmp_path / "run", embedding_dim=DIM)


def _initial() -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    shapes = ((RANK, DIM), (RANK,), (DIM, RANK), (DIM,))
    return [rng.normal(size=s).astype(np.float32) for s in shapes]


def _strategy(spec: RunSpec, seed="s") -> FederatedAdapterStrategy:
    plan = PrivacyPlan.from_spec(spec)
    return FederatedAdapterStrategy(spec, plan, _initial(), KeystreamRandom.from_seed(seed))


def _manager(devices: int) -> SimpleClientManager:
    manager = SimpleClientManager()
    for i in range(devices):
        manager.register(FakeProxy(i + 1))
    return manager


def test_poisson_sampling_has_rate_q_and_varies(tmp_path):
    spec = _spec(tmp_path)
    strategy, manager = _strategy(spec), _manager(spec.num_devices)
    params = ndarrays_to_parameters(_initial())
    counts, chosen = [], set()
    for server_round in range(1, 201):
        picked = strategy.configure_fit(server_round, params, manager)
        counts.append(len(picked))
        chosen.add(tuple(sorted(p.node_id for p, _ in picked)))
        assert all(ins.config == {"round": server_round} for _, ins in picked)
    assert np.mean(counts) == pytest.approx(spec.expected_devices, rel=0.1)
    assert len(set(counts)) > 3 and len(chosen) > 150
    assert strategy.configure_evaluate(1, params, manager) == []


def test_the_cohort_follows_registration_order_not_node_ids(tmp_path):
    """Flower draws node ids at random: the same seed picks the same devices (by the order
    they registered) whatever ids they got."""
    spec = _spec(tmp_path)
    params = ndarrays_to_parameters(_initial())

    def picked_ranks(node_ids: list[int]) -> list[int]:
        rank = {node: n for n, node in enumerate(node_ids)}
        stamps = {node: f"2026-12-06T12:00:00.{n:06d}" for node, n in rank.items()}
        strategy = FederatedAdapterStrategy(
            spec,
            PrivacyPlan.from_spec(spec),
            _initial(),
            KeystreamRandom.from_seed("s"),
            enrolment=lambda: stamps,
        )
        manager = SimpleClientManager()
        for node in node_ids:
            manager.register(FakeProxy(node))
        picked = strategy.configure_fit(1, params, manager)
        return sorted(rank[proxy.node_id] for proxy, _ in picked)

    ids = np.random.default_rng(7).permutation(np.arange(1, 10_000))
    first = picked_ranks([int(n) for n in ids[: spec.num_devices]])
    again = picked_ranks([int(n) for n in ids[-spec.num_devices :]])
    assert first and first == again


def _results(payloads) -> list:
    return [
        (FakeProxy(i + 1), FitRes(OK, ndarrays_to_parameters([p]), 1, {}))
        for i, p in enumerate(payloads)
    ]


def _payloads(spec, count, scale=0.01):
    plan = PrivacyPlan.from_spec(spec)
    codec = PayloadCodec.for_weights(_initial(), plan.clipping_norm, plan.stats_share)
    rng = np.random.default_rng(5)
    updates = [[scale * rng.normal(size=w.shape) for w in _initial()] for _ in range(count)]
    stats = {"trained": 1.0, "evaluated": 1.0, "base.ndcg": 0.4, "adapter.ndcg": 0.5}
    return codec, updates, [codec.encode(u, stats) for u in updates]


def test_the_average_uses_the_fixed_denominator_and_the_statistics_decode(tmp_path):
    spec = _spec(tmp_path, noise="server", secagg=False, noise_multiplier=0.0)
    strategy = _strategy(spec)
    strategy.configure_fit(1, ndarrays_to_parameters(_initial()), _manager(40))
    codec, updates, payloads = _payloads(spec, 7)
    params, figures = strategy.aggregate_fit(1, _results(payloads), [])
    got = parameters_to_ndarrays(params)
    for j, (g, w) in enumerate(zip(got, _initial(), strict=True)):
        want = w + sum(u[j] for u in updates) / spec.expected_devices
        np.testing.assert_allclose(g, want, atol=1e-5)
    assert figures["devices"] == 7 and figures["trained"] == pytest.approx(7)
    assert figures["base.nDCG@10"] == pytest.approx(0.4) and figures["adapter.nDCG@10"] == 0.5


def test_secagg_results_carry_the_cohorts_average(tmp_path):
    spec = _spec(tmp_path, noise_multiplier=0.0, dp=False)
    strategy = _strategy(spec)
    strategy.configure_fit(1, ndarrays_to_parameters(_initial()), _manager(40))
    _, updates, payloads = _payloads(spec, 4)
    mean = np.mean(payloads, axis=0)  # what Flower's SecAgg+ workflow hands each result
    params, figures = strategy.aggregate_fit(1, _results([mean] * 4), [])
    got = parameters_to_ndarrays(params)
    want = _initial()[0] + sum(u[0] for u in updates) / 4  # without DP: the cohort's mean
    np.testing.assert_allclose(got[0], want, atol=1e-5)
    assert figures["trained"] == pytest.approx(4)


def test_server_side_noise_has_the_planned_scale(tmp_path):
    spec = _spec(tmp_path, noise="server", secagg=False, noise_multiplier=1.5)
    plan = PrivacyPlan.from_spec(spec)
    quiet_spec = _spec(tmp_path, noise="server", secagg=False, noise_multiplier=0.0)
    _, _, payloads = _payloads(spec, 5)
    out = []
    for s in (spec, quiet_spec):
        strategy = _strategy(s)
        strategy.configure_fit(1, ndarrays_to_parameters(_initial()), _manager(40))
        out.append(parameters_to_ndarrays(strategy.aggregate_fit(1, _results(payloads), [])[0]))
    diff = np.concatenate([(a - b).ravel() for a, b in zip(*out, strict=True)])
    assert diff.std() == pytest.approx(plan.sigma_server / spec.expected_devices, rel=0.1)


def test_dp_ftrl_rounds_take_fixed_cohorts_and_the_trees_noise(tmp_path):
    """40 devices, 10 a round: epochs of 4 rounds, each device once an epoch; the model's
    noise after 4 rounds is one tree node (fresh noise each round would give 4)."""
    ftrl = {"mechanism": "dp-ftrl", "noise": "server", "secagg": False}
    spec = _spec(tmp_path, noise_multiplier=1.5, **ftrl)
    quiet = _spec(tmp_path, noise_multiplier=0.0, **ftrl)
    plan = PrivacyPlan.from_spec(spec)
    codec, _, payloads = _payloads(spec, 10)
    manager = _manager(40)
    runs, stds = [], []
    for s in (spec, quiet):
        strategy, params, joined = _strategy(s), ndarrays_to_parameters(_initial()), []
        for server_round in range(1, 9):
            picked = strategy.configure_fit(server_round, params, manager)
            joined.append([proxy.node_id for proxy, _ in picked])
            params, figures = strategy.aggregate_fit(server_round, _results(payloads), [])
            if s is spec:
                stds.append(figures["stats_noise_std"])
            if server_round == 4:
                runs.append(parameters_to_ndarrays(params))
        for epoch in (joined[:4], joined[4:]):
            assert sorted(n for cohort in epoch for n in cohort) == list(range(1, 41))
    noise = np.concatenate([(a - b).ravel() for a, b in zip(*runs, strict=True)])
    assert noise.std() == pytest.approx(plan.sigma_server / spec.expected_devices, rel=0.1)
    one = stds[0]
    assert one > 0 and stds[:4] == pytest.approx([one, one * 2**0.5, one, one * 3**0.5])


def test_no_replies_no_update(tmp_path):
    strategy = _strategy(_spec(tmp_path))
    assert strategy.aggregate_fit(1, [], [RuntimeError("gone")]) == (None, {})


def test_moving_average_wraps_the_strategy_when_asked(tmp_path):
    spec = _spec(tmp_path, average_decay=0.5)
    plan = PrivacyPlan.from_spec(spec)
    stack = build_strategy(spec, plan, _initial(), KeystreamRandom.from_seed(0))
    assert stack.average is not None and stack.outer is stack.average
    off = _spec(tmp_path, average_decay=0.0)
    stack = build_strategy(off, plan, _initial(), KeystreamRandom.from_seed(0))
    assert stack.average is None and stack.outer is stack.fedavg


def test_rounds_sample_the_connected_devices_once_the_first_wait_is_over(tmp_path, monkeypatch):
    import server.federation.strategy as strategy_module

    monkeypatch.setattr(strategy_module, "REGISTRATION_TIMEOUT_S", 0.2)
    spec = _spec(tmp_path, devices=40, clients_per_round=30)
    strategy, manager = _strategy(spec), _manager(12)  # 12 of 40 connected
    params = ndarrays_to_parameters(_initial())
    picked = [strategy.configure_fit(r, params, manager) for r in range(1, 21)]
    assert all({p.node_id for p, _ in cohort} <= set(range(1, 13)) for cohort in picked)
    assert sum(len(cohort) for cohort in picked) / 20 == pytest.approx(12 * 0.75, rel=0.2)
    assert not strategy.configure_fit(21, params, SimpleClientManager())  # nobody: no round


def test_registration_times_are_asked_again_only_when_a_device_is_new(tmp_path):
    spec = _spec(tmp_path)
    params = ndarrays_to_parameters(_initial())
    asked = []

    def enrolment():  # like grid.get_nodes(): the nodes registered so far
        asked.append(1)
        return {int(node): f"t{int(node):03d}" for node in manager.all()}

    strategy = FederatedAdapterStrategy(
        spec, PrivacyPlan.from_spec(spec), _initial(), KeystreamRandom.from_seed("s"),
        enrolment=enrolment,
    )  # fmt: skip
    manager = SimpleClientManager()
    for node in range(1, spec.num_devices + 1):
        manager.register(FakeProxy(node))
    for server_round in (1, 2, 3):
        strategy.configure_fit(server_round, params, manager)
    assert len(asked) == 1
    manager.register(FakeProxy(spec.num_devices + 1))
    strategy.configure_fit(4, params, manager)
    assert len(asked) == 2


def test_adaptive_clipping_sends_each_rounds_norm_and_moves_it_by_the_unclipped_count(tmp_path):
    spec = _spec(
        tmp_path, noise="server", secagg=False, noise_multiplier=0.0, adaptive_clipping=True,
        clipping_norm=1.0, clipping_ceiling=8.0,
    )  # fmt: skip
    strategy, params = _strategy(spec), ndarrays_to_parameters(_initial())
    for server_round, scale, unclipped in ((1, 1.0, 0.0), (2, 1e-3, 1.0)):
        picked = strategy.configure_fit(server_round, params, _manager(40))
        norm = strategy.plan_of_round(server_round).clipping_norm
        assert {ins.config["clipping_norm"] for _, ins in picked} == {norm}
        codec = PayloadCodec.for_plan(_initial(), strategy.plan_of_round(server_round))
        rng = np.random.default_rng(server_round)
        updates = [[scale * rng.normal(size=w.shape) for w in _initial()] for _ in range(6)]
        assert all(codec.unclipped(u) == bool(unclipped) for u in updates)
        stats = {"trained": 1.0, "unclipped": unclipped}
        _, figures = strategy.aggregate_fit(
            server_round, _results([codec.encode(u, stats) for u in updates]), []
        )
        share = 6 * unclipped / spec.expected_devices  # out of the expected cohort
        assert figures["clipping_norm"] == norm
        assert figures["unclipped_share"] == pytest.approx(share)
        step = np.exp(-0.2 * (share - 0.5))
        assert strategy.clipping.norm == pytest.approx(norm * step)
    assert strategy.plan_of_round(1).clipping_norm == 1.0
    assert strategy.plan_of_round(2).clipping_norm == pytest.approx(np.exp(0.1))
    assert strategy.clipping.norm == pytest.approx(np.exp(0.1) * np.exp(-0.2 * 0.1))
    assert strategy.state_dict()["clipping"] == {"norm": strategy.clipping.norm}
