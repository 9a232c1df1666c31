import numpy as np
import pytest

from common.evaluation.protocol import evaluate_searches, metrics_from_sums
from simulation import marketplace
from simulation.baselines import run_baselines
from simulation.loader import load_population
from simulation.oracle import EXACT_MATCH, ORACLE, ORACLE_RERANK, oracle_metrics, oracle_ranks
from simulation.population import HeldOutTruth
from tests.simulation.conftest import make_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# item i scores SCORES[i] against the query (1, 0): base order 0, 1, ..., 5
SCORES = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4], dtype=np.float32)
ITEMS = np.stack([SCORES, np.sqrt(1 - SCORES**2)], axis=1).astype(np.float32)
QUERY = np.array([1.0, 0.0], dtype=np.float32)


def test_oracle_ranks_on_a_hand_built_case():
    relevant = np.array([3, 2, 5, 1])
    preferred = [np.array([0, 4]), np.array([0, 4]), np.array([], dtype=np.int64), np.array([3])]
    ranks = oracle_ranks(
        np.tile(QUERY, (4, 1)),
        relevant,
        ITEMS,
        preferred=preferred,
        match_ranks=np.array([1, 1, 0, 0]),
        candidates=3,
    )
    assert list(ranks[ORACLE]) == [2, 2, 0, 1]
    # 3 and 5 lie outside the base top 3 (keep their base rank); for 2, only 0 of its
    # preferred items is in the top 3; for 1, its preferred 3 is just outside
    assert list(ranks[ORACLE_RERANK]) == [3, 1, 5, 0]
    assert list(ranks[EXACT_MATCH]) == [1, 1, 0, 0]
    with pytest.raises(ValueError, match="candidates"):
        oracle_ranks(
            QUERY[None],
            relevant[:1],
            ITEMS,
            preferred=preferred[:1],
            match_ranks=np.zeros(1),
            candidates=0,
        )
    with pytest.raises(ValueError, match="preferred lists"):
        oracle_ranks(
            QUERY[None],
            relevant[:1],
            ITEMS,
            preferred=preferred,
            match_ranks=np.zeros(1),
            candidates=3,
        )


def test_marketplace_truth_of_a_search():
    utility = np.array([0.0, 5.0, 1.0, 4.0, 9.0, 2.0])
    shopper = marketplace.Shopper("Men", np.ones(1), np.ones(1), utility)
    query = marketplace.ShopperQuery("q", np.array([1, 3, 5]))
    assert list(marketplace.preferred_items(query, shopper, 3)) == [1]
    assert list(marketplace.preferred_items(query, shopper, 1)) == []
    # among matching items 1, 3, 5 (scores 0.8, 0.6, 0.4), item 5 comes third
    assert marketplace.match_rank(query, 5, QUERY, ITEMS) == 2
    assert marketplace.match_rank(query, 1, QUERY, ITEMS) == 0
    with pytest.raises(ValueError, match="preferred lists"):
        HeldOutTruth((np.array([1]),), np.zeros(2, dtype=np.int64))


def market(tmp_path, encoder):
    population = {"shoppers": 8, "train_searches": 6, "test_searches": 3, "impression_size": 5}
    config = make_config(
        tmp_path,
        population=population,
        evaluation={"candidates": 10},
        centralized={"epochs": 1, "patience": 0},
        federation={"warm_start": False},
    )
    return config, load_population("marketplace", config, encoder=encoder, progress=False)


def test_oracles_beat_base_on_a_small_marketplace(tmp_path, fashion_folder, encoder):
    config, population = market(tmp_path, encoder)
    tests = [s for d in population.devices for s in d.test]
    base = metrics_from_sums(evaluate_searches(tests, population.item_vectors, k=10), 10)
    rows = oracle_metrics(population, k=10, candidates=10)
    assert list(rows) == [ORACLE, ORACLE_RERANK, EXACT_MATCH]
    assert all(m["count"] == len(tests) == 24 for m in rows.values())
    assert rows[ORACLE]["nDCG@10"] > base["nDCG@10"]
    assert rows[EXACT_MATCH]["MRR"] >= base["MRR"]
    for device in population.devices:
        truth = population.truth[device.device_id]
        for search, better in zip(device.test, truth.preferred, strict=True):
            # only the shopper's other test targets can be preferred to a test target
            assert set(better) <= {s.clicked for s in device.test} - {search.clicked}
    report = run_baselines(population, config, progress=False)
    assert {name: report.metrics[name] for name in rows} == rows
    population.truth.pop(population.devices[0].device_id)  # e.g. a canary copy of a device
    assert oracle_metrics(population, k=10, candidates=10) == {}


def test_online_retail_gets_no_oracle_rows(tmp_path, retail_files, encoder):
    population = load_population("retail", make_config(tmp_path), encoder=encoder, progress=False)
    assert population.truth is None
    assert oracle_metrics(population, k=10, candidates=100) == {}
