import dataclasses

import numpy as np
import pytest

from common.data.searches import DeviceData, SearchExample
from common.evaluation.protocol import evaluate_searches
from common.model.query_facets import QueryFacets
from simulation.baselines import (
    baseline_table,
    popularity_prior,
    popularity_ranks,
    run_baselines,
    train_centralized,
    tune_beta,
    tune_popularity_weight,
    validation_split,
)
from simulation.evaluation import evaluate_population
from simulation.population import train_popularity
from tests.simulation.conftest import make_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TRAINING = {"epochs": 12, "patience": 0, "batch_size": 64, "lr": 0.01}
LOSS = {"rank": 8, "shown_negatives": 10, "random_negatives": 10, "temperature": 0.1}


def test_popularity_ranks_count_ties_against_the_relevant_item():
    popularity = np.array([5, 3, 3, 0])
    assert list(popularity_ranks(popularity, np.array([0, 1, 2, 3]))) == [0, 2, 2, 3]
    prior = popularity_prior(popularity)
    assert prior.max() == pytest.approx(1.0) and prior.min() == 0.0
    assert not popularity_prior(np.zeros(3)).any()


def test_popularity_weight_is_tuned_on_train_with_own_click_left_out(toy_population):
    population = toy_population(devices=20, train=10, test=2)  # clicks on a popular quarter
    weight, curve = tune_popularity_weight(population)
    assert weight > 0 and curve[weight] > curve[0.0]
    # every train click on a different item: popularity, own click left out, says nothing
    # of the clicked item, so it must not be rewarded (counting it would pick a big weight)
    device = population.devices[0]
    searches = [SearchExample(s.query_vector, s.shown, i) for i, s in enumerate(device.train * 3)]
    population.devices = [DeviceData("once", searches, device.test)]
    population.popularity = train_popularity(population.devices, population.n_items)
    assert population.popularity.max() == 1
    weight, _ = tune_popularity_weight(population)
    assert weight == 0.0


def test_centralized_training_improves_a_toy_population(tmp_path, toy_population):
    population = toy_population()
    config = make_config(tmp_path, centralized=TRAINING, adapter=LOSS)
    adapter, history = train_centralized(population, config, progress=False)
    assert len(history) == 12 and history[-1]["loss"] < history[0]["loss"]
    result = evaluate_population(population, adapter=adapter, beta=0.0, candidates=20)
    base, trained = result.overall["base"], result.overall["adapter"]
    assert trained["nDCG@10"] > base["nDCG@10"] + 0.1
    best, curve = tune_beta(population, adapter, candidates=20)
    assert set(curve) >= {0.0, best}


def test_validation_split_holds_out_each_devices_last_train_search(toy_population):
    population = toy_population(devices=5, train=4, test=1)
    population.devices[0].train = population.devices[0].train[:1]  # too short to hold out
    train, validation = validation_split(population, True)
    assert [id(s) for s in validation] == [id(d.train[-1]) for d in population.devices[1:]]
    assert len(train) == 1 + 4 * 3 and not {id(s) for s in train} & {id(s) for s in validation}
    assert validation_split(population, False) == (
        [s for d in population.devices for s in d.train],
        [],
    )


def test_early_stopping_keeps_the_best_validation_epoch(tmp_path, toy_population):
    population = toy_population()
    training = {**TRAINING, "epochs": 40, "patience": 2, "lr": 0.03}
    config = make_config(tmp_path, centralized=training, adapter=LOSS)
    adapter, history = train_centralized(population, config, progress=False)
    scores = [h["val_ndcg"] for h in history]
    best = int(np.argmax(scores))
    assert len(history) == 40 or len(history) - 1 - best == 2  # stopped 2 epochs after best
    _, validation = validation_split(population, True)
    sums = evaluate_searches(validation, population.item_vectors, adapter=adapter)
    assert sums["ndcg_sum"] / sums["count"] == pytest.approx(scores[best])


def test_run_baselines_reports_every_method(tmp_path, toy_population):
    population = toy_population(devices=20)
    config = make_config(tmp_path, centralized=TRAINING, adapter=LOSS)
    report = run_baselines(population, config, progress=False)
    names = [
        "popularity",
        "base",
        "base+popularity",
        "base+personal",
        "centralized",
        "centralized+personal",
    ]
    assert list(report.metrics) == names
    assert all(m["count"] == 100 for m in report.metrics.values())
    assert report.metrics["centralized"]["nDCG@10"] > report.metrics["base"]["nDCG@10"]
    assert report.details["popularity_weight"] in report.details["popularity_weight_curve"]
    table = baseline_table(report.metrics)
    assert all(name in table for name in names) and "nDCG@10" in table


def test_the_facet_gate_row_shows_what_the_gate_alone_gives(tmp_path, toy_population):
    population = toy_population(devices=20)
    kinds = [("alpha", "beta", "gamma")[i % 3] for i in range(population.n_items)]
    population.facets = QueryFacets.build(kinds, [{}] * population.n_items)
    for device in population.devices:  # each held-out query names its item's kind
        device.test = [dataclasses.replace(s, query=kinds[s.clicked]) for s in device.test]
    gated = make_config(tmp_path, centralized=TRAINING, adapter=LOSS)
    report = run_baselines(population, gated, progress=False)
    gate, base = report.metrics["base+facet gate"]["nDCG@10"], report.metrics["base"]["nDCG@10"]
    assert gate > base
    free = make_config(tmp_path, adapter=LOSS, evaluation={"facet_gate": False})
    off = run_baselines(population, free, adapter=report.adapter, progress=False)
    assert "base+facet gate" not in off.metrics
    for row in ("base+personal", "centralized+personal"):
        assert report.metrics[row]["nDCG@10"] > off.metrics[row]["nDCG@10"]
