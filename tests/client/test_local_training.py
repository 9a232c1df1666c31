"""Local DP training on a device, and the Flower client around it (no simulation)."""

from __future__ import annotations

import numpy as np
import pytest
from opacus.accountants import RDPAccountant

from client.app import AdapterClient, LocalDevice
from client.local_training import RECORD_RDP_ORDERS, plan, record_epsilon, train_local
from client.store import DeviceStore
from common.config import config_from_dict
from common.federation.run_spec import FIT_METRICS, RunSpec
from common.model.adapter import QueryAdapter
from simulation.synthetic import synthetic_population


@pytest.fixture(scope="module")
def population():
    return synthetic_population(3, n_items=120, dim=16, train_searches=10, test_searches=3)


def _config(**device):
    return config_from_dict(
        {
            "adapter": {"rank": 4, "shown_negatives": 4, "random_negatives": 4},
            "device": {"batch_size": 4, "epsilon_budget": 1000.0, **device},
            "evaluation": {"candidates": 20},
        }
    )


def _train(adapter, population, config, accountant, seed=0):
    return train_local(
        adapter,
        population.devices[0].train,
        population.item_vectors,
        config.device,
        config.adapter,
        accountant,
        seed,
    )


def test_accountant_persists_and_matches_an_independent_opacus_accountant(population):
    config = _config(noise_multiplier=1.0)
    adapter = QueryAdapter(16, 4)
    state: dict = {}
    epsilons = []
    for server_round in range(3):
        before = [w.copy() for w in adapter.get_weights()]
        result = _train(adapter, population, config, state, seed=server_round)
        state = result.accountant
        epsilons.append(result.metrics["epsilon_record"])
        assert not result.declined
        assert any(not np.array_equal(a, b) for a, b in zip(before, result.weights, strict=True))
    sample_rate, steps = plan(len(population.devices[0].train), config.device)
    reference = RDPAccountant()
    for _ in range(3 * steps):
        reference.step(noise_multiplier=1.0, sample_rate=sample_rate)
    assert epsilons[0] < epsilons[1] < epsilons[2]
    assert epsilons[-1] == pytest.approx(
        reference.get_epsilon(config.device.delta, alphas=RECORD_RDP_ORDERS)
    )
    assert record_epsilon(state, config.device.delta) == pytest.approx(epsilons[-1])
    # The coarse orders are a valid, slightly looser bound than Opacus's default grid.
    default = reference.get_epsilon(config.device.delta)
    assert default <= epsilons[-1] <= 1.02 * default


def test_a_device_whose_budget_is_spent_declines(population):
    config = _config(noise_multiplier=1.0)
    adapter = QueryAdapter(16, 4)
    first = _train(adapter, population, config, {})
    tight = _config(noise_multiplier=1.0, epsilon_budget=first.metrics["epsilon_record"] * 1.01)
    before = [w.copy() for w in adapter.get_weights()]
    second = _train(adapter, population, tight, first.accountant)
    assert second.declined and second.weights is None
    assert second.metrics["declined"] == 1.0 and second.metrics["steps"] == 0.0
    assert second.metrics["epsilon_record"] == pytest.approx(first.metrics["epsilon_record"])
    assert second.accountant == first.accountant
    for a, b in zip(before, adapter.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_without_record_level_dp_there_is_no_accountant(population):
    result = _train(QueryAdapter(16, 4), population, _config(dp=False), {})
    assert not result.declined and result.accountant == {}
    assert result.metrics["epsilon_record"] == float("inf")


def _client(tmp_path, population, config):
    spec = RunSpec(config, "marketplace", len(population.devices), tmp_path)
    store = DeviceStore(tmp_path / "store", b"k" * 32)
    device = LocalDevice(population.devices[0], population.item_vectors, store, 0)
    return AdapterClient(device, spec), store


def test_client_fit_keeps_its_private_state_and_declines_when_spent(tmp_path, population):
    config = _config(noise_multiplier=1.0)
    client, store = _client(tmp_path, population, config)
    weights = client.get_parameters({})
    sent, weight, metrics = client.fit(weights, {"round": 1})
    assert weight == 1
    assert set(metrics) == set(FIT_METRICS)
    assert all(isinstance(v, float) for v in metrics.values())
    assert [w.shape for w in sent] == [w.shape for w in weights]
    state = store.load_state()
    assert state.accountant["history"] and state.info["rounds_trained"] == 1
    assert state.user_vector is not None and state.user_vector.shape == (16,)

    spent = _config(noise_multiplier=1.0, epsilon_budget=metrics["epsilon_record"] * 1.01)
    client, _ = _client(tmp_path, population, spent)
    sent, weight, metrics = client.fit(weights, {"round": 2})
    assert metrics["declined"] == 1.0 and weight == 1
    for a, b in zip(sent, weights, strict=True):
        np.testing.assert_array_equal(a, b)  # a zero update
    assert store.load_state().info["rounds_trained"] == 1


def test_client_evaluate_reports_metric_sums_only(tmp_path, population):
    client, _ = _client(tmp_path, population, _config())
    loss, count, metrics = client.evaluate(client.get_parameters({}), {"round": 1})
    assert count == len(population.devices[0].test) and np.isfinite(loss)
    assert set(metrics) == {
        f"{m}.{k}"
        for m in ("base", "adapter", "personal")
        for k in ("count", "hr_sum", "ndcg_sum", "rr_sum")
    }
    # The identity adapter ranks exactly like the base encoder.
    for key in ("hr_sum", "ndcg_sum", "rr_sum"):
        assert metrics[f"adapter.{key}"] == pytest.approx(metrics[f"base.{key}"])
