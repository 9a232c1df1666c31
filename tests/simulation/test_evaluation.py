"""Whole-population evaluation agrees with the per-device protocol."""

import pytest
import torch

from common.evaluation.protocol import MODES, add_sums, evaluate_device, metrics_from_sums
from common.model.adapter import QueryAdapter
from simulation.evaluation import evaluate_population

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_population_evaluation_pools_the_per_device_sums(toy_population):
    population = toy_population(devices=6, train=5, test=4)
    population.devices[2].train = []  # no user vector: personal = plain ranking
    torch.manual_seed(0)
    adapter = QueryAdapter(population.item_vectors.shape[1], rank=4)
    torch.nn.init.normal_(adapter.up.weight, std=0.5)
    result = evaluate_population(population, adapter=adapter, beta=0.3, candidates=20, k=10)
    for device in population.devices:
        expected = evaluate_device(
            device, population.item_vectors, adapter=adapter, beta=0.3, candidates=20
        )
        for mode in MODES:
            assert result.per_device[device.device_id][mode] == pytest.approx(expected[mode])
    for mode in MODES:
        total = add_sums(s[mode] for s in result.per_device.values())
        assert result.overall[mode] == pytest.approx(metrics_from_sums(total))
    assert result.overall["base"]["count"] == 24
    no_user = result.per_device["toy-2"]
    assert no_user["personal"] == no_user["adapter"]
