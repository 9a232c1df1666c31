"""Whole-population evaluation agrees with the per-device protocol."""

import numpy as np
import pytest
import torch

from common.evaluation.protocol import MODES, SUM_KEYS, evaluate_device, metrics_from_sums
from common.model.adapter import QueryAdapter
from common.model.personalization import AttributeTable
from simulation.evaluation import evaluate_population

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_population_evaluation_pools_the_per_device_sums(toy_population):
    population = toy_population(devices=6, train=5, test=4)
    population.devices[2].train = []  # no user vector: personal = plain ranking
    torch.manual_seed(0)
    adapter = QueryAdapter(population.item_vectors.shape[1], rank=4)
    torch.nn.init.normal_(adapter.up.weight, std=0.5)
    rng = np.random.default_rng(0)
    population.attributes = AttributeTable.from_columns(
        {
            "colour": rng.integers(0, 4, population.n_items),
            "size": rng.integers(0, 3, population.n_items),
        }
    )
    result = evaluate_population(
        population, adapter=adapter, beta=0.3, candidates=20, k=10, attribute_beta=0.05
    )
    for device in population.devices:
        expected = evaluate_device(
            device,
            population.item_vectors,
            adapter=adapter,
            beta=0.3,
            candidates=20,
            attributes=population.attributes,
            attribute_beta=0.05,
        )
        for mode in MODES:
            assert result.per_device[device.device_id][mode] == pytest.approx(expected[mode])
    for mode in MODES:
        total = {key: sum(s[mode][key] for s in result.per_device.values()) for key in SUM_KEYS}
        assert result.overall[mode] == pytest.approx(metrics_from_sums(total))
    assert result.overall["base"]["count"] == 24
    no_user = result.per_device["toy-2"]
    assert no_user["personal"] == no_user["adapter"]
