"""The server strategy without a simulation: sampling, aggregation, DP noise, publishing."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from flwr.common import (
    Code,
    EvaluateRes,
    FitRes,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_manager import SimpleClientManager
from flwr.server.client_proxy import ClientProxy

from common.config import ConfigError, config_from_dict
from common.federation.privacy_plan import UserLevelDP
from common.federation.run_spec import RunSpec
from common.model.adapter import ADAPTER_FILE, QueryAdapter
from common.security.versions import verify_files
from server.federation.app import RunRecorder, build_strategy, fit_workflow
from server.federation.averaging import MovingAverage
from server.federation.publish import publish_adapter
from server.federation.strategy import RoundLog, pooled_metrics

OK = Status(Code.OK, "")


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
            "federation": {"clients_per_round": 10, **federation},
        }
    )
    return RunSpec(config, "marketplace", devices, tmp_path / "run")


def _manager(devices: int) -> SimpleClientManager:
    manager = SimpleClientManager()
    for i in range(devices):
        manager.register(FakeProxy(i + 1))
    return manager


def _weights(seed: int, scale: float = 1.0, dim: int = 64, rank: int = 16) -> list[np.ndarray]:
    """Adapter-shaped arrays (3,152 values by default)."""
    rng = np.random.default_rng(seed)
    shapes = ((rank, dim), (rank,), (dim, rank), (dim,))
    return [scale * rng.normal(size=s).astype(np.float32) for s in shapes]


def test_poisson_sampling_has_rate_q_and_varies(tmp_path):
    spec = _spec(tmp_path)
    strategy = build_strategy(spec, UserLevelDP.from_spec(spec)).outer
    manager = _manager(spec.num_devices)
    params = ndarrays_to_parameters(_weights(0))
    counts, chosen_sets = [], set()
    for server_round in range(1, 201):
        chosen = strategy.configure_fit(server_round, params, manager)
        counts.append(len(chosen))
        chosen_sets.add(tuple(sorted(p.node_id for p, _ in chosen)))
        assert all(ins.config["round"] == server_round for _, ins in chosen)
    assert np.mean(counts) == pytest.approx(spec.sample_rate * spec.num_devices, rel=0.1)
    assert len(set(counts)) > 3 and len(chosen_sets) > 150


def _fit_results(global_weights, deltas) -> list:
    return [
        (
            FakeProxy(i + 1),
            FitRes(
                OK,
                ndarrays_to_parameters([g + d for g, d in zip(global_weights, delta, strict=True)]),
                1,
                {
                    "num_examples": 5.0,
                    "loss": 1.0,
                    "steps": 1.0,
                    "epsilon_record": 2.0,
                    "declined": 0.0,
                    "train_seconds": 0.1,
                },
            ),
        )
        for i, delta in enumerate(deltas)
    ]


def _aggregate(spec, global_weights, deltas):
    stack = build_strategy(spec, UserLevelDP.from_spec(spec))
    strategy = stack.outer
    manager = _manager(spec.num_devices)
    strategy.configure_fit(1, ndarrays_to_parameters(global_weights), manager)
    params, metrics = strategy.aggregate_fit(1, _fit_results(global_weights, deltas), [])
    return parameters_to_ndarrays(params), metrics


def test_dp_average_uses_the_fixed_denominator_and_noise_sigma_c_over_m(tmp_path):
    global_weights = _weights(1)
    deltas = [_weights(10 + i, 0.001) for i in range(7)]
    m = _spec(tmp_path).expected_devices
    exact = [g + sum(d[j] for d in deltas) / m for j, g in enumerate(global_weights)]

    quiet, metrics = _aggregate(_spec(tmp_path, noise_multiplier=0.0), global_weights, deltas)
    for got, want in zip(quiet, exact, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-6)
    assert metrics["participants"] == 7 and metrics["declined"] == 0

    sigma, clip = 2.0, 0.5
    noisy, _ = _aggregate(
        _spec(tmp_path, noise_multiplier=sigma, clipping_norm=clip), global_weights, deltas
    )
    noise = np.concatenate([(n - e).ravel() for n, e in zip(noisy, exact, strict=True)])
    assert noise.std() == pytest.approx(sigma * clip / m, rel=0.08)


def test_without_dp_the_average_is_the_plain_mean(tmp_path):
    global_weights = _weights(1)
    deltas = [_weights(10 + i, 0.01) for i in range(3)]
    got, _ = _aggregate(_spec(tmp_path, dp=False), global_weights, deltas)
    for j, g in enumerate(global_weights):
        np.testing.assert_allclose(got[j], g + sum(d[j] for d in deltas) / 3, atol=1e-6)
    assert UserLevelDP.from_spec(_spec(tmp_path, dp=False)) is None


def test_evaluation_samples_devices_and_the_last_round_takes_all(tmp_path):
    spec = _spec(tmp_path, rounds=3, eval_devices=5)
    strategy = build_strategy(spec, UserLevelDP.from_spec(spec)).outer
    manager = _manager(spec.num_devices)
    params = ndarrays_to_parameters(_weights(0))
    assert len(strategy.configure_evaluate(1, params, manager)) == 5
    assert len(strategy.configure_evaluate(3, params, manager)) == spec.num_devices


def test_evaluation_metrics_are_pooled_over_searches(tmp_path):
    def reply(count, hits):
        sums = {"count": count, "hr_sum": hits, "ndcg_sum": hits / 2, "rr_sum": hits / 3}
        return {
            f"{mode}.{k}": float(v)
            for mode in ("base", "adapter", "personal")
            for k, v in sums.items()
        }

    pooled = pooled_metrics([reply(2, 1), reply(6, 6)], k=10)
    assert pooled["base.HR@10"] == pytest.approx(7 / 8)
    assert pooled["personal.nDCG@10"] == pytest.approx(3.5 / 8)
    assert pooled["adapter.count"] == 8

    spec = _spec(tmp_path)
    stack = build_strategy(spec, UserLevelDP.from_spec(spec))
    strategy, inner = stack.outer, stack.fedavg
    results = [(FakeProxy(i), EvaluateRes(OK, 0.5, 2, reply(2, i))) for i in (1, 2)]
    loss, metrics = strategy.aggregate_evaluate(4, results, [])
    assert loss == pytest.approx(0.5) and metrics["devices"] == 2
    assert inner.log.evaluate[4]["base.MRR"] == pytest.approx(1 / 4)


def test_published_version_loads_and_verifies(tmp_path):
    torch_adapter = QueryAdapter(8, 4)
    weights = [w + 0.01 for w in torch_adapter.get_weights()]
    folder = publish_adapter(tmp_path / "registry", weights, {"round": 3, "base_model": "x"})
    manifest = verify_files(folder)
    assert manifest["round"] == 3 and manifest["kind"] == "query-adapter"
    assert manifest["dim"] == 8 and manifest["rank"] == 4
    loaded = QueryAdapter.load(folder / ADAPTER_FILE)
    for got, want in zip(loaded.get_weights(), weights, strict=True):
        np.testing.assert_array_equal(got, want)


def test_secagg_refuses_rounds_that_would_overflow(tmp_path):
    with pytest.raises(ConfigError, match="federation.clients_per_round"):
        fit_workflow(_spec(tmp_path, devices=5000, clients_per_round=1000))
    workflow, size = fit_workflow(_spec(tmp_path, devices=5000, clients_per_round=500))
    size(250)
    assert workflow.num_shares == pytest.approx(11 / 250)
    size(4)
    assert workflow.num_shares == 1.0


def test_moving_average_is_evaluated_and_published_while_training_follows_the_aggregate(
    tmp_path, monkeypatch
):
    spec = _spec(tmp_path, dp=False, average_decay=0.75)
    strategy = build_strategy(spec, UserLevelDP.from_spec(spec)).outer
    assert isinstance(strategy, MovingAverage)
    manager = _manager(spec.num_devices)
    current = _weights(1)
    aggregates = []
    for server_round in (1, 2):
        strategy.configure_fit(server_round, ndarrays_to_parameters(current), manager)
        deltas = [_weights(10 * server_round + i, 0.01) for i in range(3)]
        params, _ = strategy.aggregate_fit(server_round, _fit_results(current, deltas), [])
        current = parameters_to_ndarrays(params)
        for j, g in enumerate(aggregates[-1] if aggregates else _weights(1)):
            np.testing.assert_allclose(current[j], g + sum(d[j] for d in deltas) / 3, atol=1e-6)
        aggregates.append(current)
    average = [0.75 * a + 0.25 * b for a, b in zip(*aggregates, strict=True)]
    for got, want in zip(strategy.average, average, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-6)

    evaluate_ins = strategy.configure_evaluate(2, ndarrays_to_parameters(current), manager)
    for _, ins in evaluate_ins:
        for got, want in zip(parameters_to_ndarrays(ins.parameters), average, strict=True):
            np.testing.assert_allclose(got, want, atol=1e-6)

    published = {}
    recorder = RunRecorder(spec, RoundLog(), None)
    monkeypatch.setattr(recorder, "record", lambda r, w: published.update({r: w}))
    monkeypatch.setattr("server.federation.app._current_round", lambda context: 2)
    monkeypatch.setattr("server.federation.app._global_weights", lambda context: current)
    recorder.recorded(lambda grid, context: None, strategy)(None, None)
    for got, want in zip(published[2], average, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_moving_average_off_and_bad_decay(tmp_path):
    spec = _spec(tmp_path, average_decay=0.0)
    stack = build_strategy(spec, UserLevelDP.from_spec(spec))
    strategy, inner = stack.outer, stack.fedavg
    assert stack.average is None and not isinstance(strategy, MovingAverage)
    with pytest.raises(ValueError, match="decay"):
        MovingAverage(inner, decay=1.0)
    with pytest.raises(ConfigError, match="federation.average_decay"):
        _spec(tmp_path, average_decay=1.5)


def test_dp_wrapper_cohort_size_warning_is_dropped_and_other_warnings_kept(tmp_path, caplog):
    strategy = build_strategy(_spec(tmp_path), UserLevelDP.from_spec(_spec(tmp_path))).outer
    manager = _manager(40)
    global_weights = _weights(1)
    strategy.configure_fit(1, ndarrays_to_parameters(global_weights), manager)
    deltas = [_weights(10 + i, 0.001) for i in range(7)]  # 7 devices joined, 10 expected
    with caplog.at_level(logging.WARNING, logger="flwr"):
        strategy.aggregate_fit(1, _fit_results(global_weights, deltas), [])
        logging.getLogger("flwr").warning("another warning")
    messages = [r.getMessage() for r in caplog.records]
    assert "another warning" in messages
    assert not [m for m in messages if m.startswith("The number of clients returning")]
