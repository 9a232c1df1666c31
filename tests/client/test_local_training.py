"""Local training on a device, with and without record-level DP-SGD (no Flower)."""

from __future__ import annotations

import numpy as np
import pytest
from opacus.accountants import RDPAccountant

from client.local_training import RECORD_RDP_ORDERS, plan, record_epsilon, train_local
from common.config import config_from_dict
from common.model.adapter import QueryAdapter
from simulation.synthetic import synthetic_population


@pytest.fixture(scope="module")
def population():
    return synthetic_population(3, n_items=120, dim=16, train_searches=10, test_searches=3)


def _config(**device):
    return config_from_dict(
        {
            "adapter": {"rank": 4, "shown_negatives": 4, "random_negatives": 4},
            "device": {"batch_size": 4, "epsilon_budget": 1000.0, "dp": True, **device},
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
