import math

import numpy as np
import pytest
import torch

from common.data.searches import DeviceData, SearchExample
from common.evaluation.protocol import (
    MODES,
    device_bonus,
    evaluate_device,
    evaluate_searches,
    metrics_from_sums,
    search_ranks,
)
from common.model.adapter import QueryAdapter
from common.model.personalization import AttributeTable
from common.model.query_facets import QueryFacets

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# query [1, 0] scores items 0..4 as 1.0, 0.8, 0.0, -1.0, 0.6: base order 0, 1, 4, 2, 3
ITEMS = np.array([[1, 0], [0.8, 0.6], [0, 1], [-1, 0], [0.6, 0.8]], dtype=np.float32)
QUERY = np.array([1, 0], dtype=np.float32)


def search(clicked: int) -> SearchExample:
    return SearchExample(QUERY, np.array([0, 1, clicked]), clicked)


def test_hand_made_ranks_and_metric_sums():
    sums = evaluate_searches([search(0), search(4), search(3)], ITEMS, k=3)
    # ranks 0, 2, 4: HR@3 = 1 + 1 + 0; nDCG@3 = 1 + 1/log2(4) + 0; RR = 1 + 1/3 + 1/5
    assert sums == pytest.approx(
        {"count": 3, "hr_sum": 2.0, "ndcg_sum": 1.5, "rr_sum": 1 + 1 / 3 + 1 / 5}
    )
    means = metrics_from_sums(sums, k=3)
    assert means["HR@3"] == pytest.approx(2 / 3)
    assert means["nDCG@3"] == pytest.approx(0.5)
    assert means["MRR"] == pytest.approx((1 + 1 / 3 + 1 / 5) / 3)
    empty = dict.fromkeys(("count", "hr_sum", "ndcg_sum", "rr_sum"), 0.0)
    assert math.isnan(metrics_from_sums(empty)["MRR"])


def test_ties_count_against_the_relevant_item():
    items = np.vstack([ITEMS, ITEMS[0]])  # item 5 duplicates item 0
    assert list(search_ranks(QUERY[None], np.array([0]), items)) == [1]


def test_personal_rerank_of_the_top_candidates():
    user = np.array([0, 1], dtype=np.float32)
    relevant = np.array([4, 0, 2])
    # top 3 = items 0, 1, 4; + 0.6 * cos(user, item): 1.0, 1.16, 1.08 -> order 1, 4, 0
    ranks = search_ranks(
        np.tile(QUERY, (3, 1)), relevant, ITEMS, users=user, beta=0.6, candidates=3
    )
    assert list(ranks) == [1, 2, 3]  # item 2 is outside the candidates: it stays below them
    plain = search_ranks(np.tile(QUERY, (3, 1)), relevant, ITEMS, users=user, beta=0.0)
    assert list(plain) == [2, 0, 3]


def test_adapter_changes_the_query_and_the_ranking():
    adapter = QueryAdapter(2, rank=2)
    with torch.no_grad():
        adapter.up.bias.copy_(torch.tensor([-2.0, 2.0]))  # pushes queries toward [0, 1]
    base = evaluate_searches([search(2)], ITEMS, k=1)
    adapted = evaluate_searches([search(2)], ITEMS, adapter=adapter, k=1)
    assert base["hr_sum"] == 0.0 and adapted["hr_sum"] == 1.0


def test_device_modes():
    device = DeviceData("d", train=[search(2), search(4)], test=[search(4), search(0)])
    out = evaluate_device(device, ITEMS, beta=0.6, candidates=3, k=3)
    assert set(out) == set(MODES)
    assert out["adapter"] == out["base"]  # no adapter: same ranking
    assert out["personal"]["rr_sum"] != out["base"]["rr_sum"]
    empty = evaluate_device(DeviceData("e", [], []), ITEMS, beta=0.6, candidates=3)
    assert empty["base"]["count"] == 0


def test_attribute_preferences_rerank_among_the_candidates():
    # items 0..4 have colour codes; the device clicked colour 1 while shown colours 0 and 1
    table = AttributeTable.from_columns({"colour": np.array([0, 1, 0, 1, 0])})
    train = [SearchExample(QUERY, np.array([0, 1]), 1), SearchExample(QUERY, np.array([2, 3]), 3)]
    device = DeviceData("d", train=train, test=[search(4)])
    bonus = device_bonus(device, table, attribute_beta=1.0)
    assert bonus[1] > 0 > bonus[0] and bonus[1] == bonus[3]
    plain = evaluate_device(device, ITEMS, beta=0.0, candidates=5, k=5)
    # with beta 0 there is no user vector term, but the bonus still reranks: needs beta > 0
    boosted = evaluate_device(
        device, ITEMS, beta=1e-9, candidates=5, k=5, attributes=table, attribute_beta=1.0
    )
    assert boosted["personal"]["rr_sum"] < plain["personal"]["rr_sum"]  # item 4 (colour 0) sinks


def test_the_facet_gate_keeps_what_the_query_names_above_a_liked_item():
    # items 0, 1, 4 are the top 3; the query "red" names colour red: items 0 and 4
    facets = QueryFacets.build(
        ["a"] * 5, [{"colour": c} for c in ("red", "blue", "red", "x", "red")]
    )
    user = np.array([0, 1], dtype=np.float32)  # likes item 1 (blue) best among the top 3
    tests = [SearchExample(QUERY, np.array([0, 1]), clicked, "red") for clicked in (1, 4, 0)]
    device = DeviceData("d", train=[search(1)], test=tests)
    free = evaluate_searches(tests, ITEMS, user=user, beta=0.6, candidates=3, k=5)
    gated = evaluate_searches(tests, ITEMS, user=user, beta=0.6, candidates=3, k=5, facets=facets)
    # free: 1.16 (item 1), 1.08 (4), 1.0 (0): ranks 0, 1, 2
    # gated: red first, 4 then 0, then blue item 1: ranks 2, 0, 1
    ranks_free = [0, 1, 2]
    ranks_gated = [2, 0, 1]
    assert free["rr_sum"] == pytest.approx(sum(1 / (r + 1) for r in ranks_free))
    assert gated["rr_sum"] == pytest.approx(sum(1 / (r + 1) for r in ranks_gated))
    # the gate alone, without personal weights, still applies; a device without facets not
    alone = evaluate_searches(tests, ITEMS, user=user, beta=0.0, candidates=3, k=5, facets=facets)
    assert alone["rr_sum"] == pytest.approx(1 / 3 + 1 + 1 / 2)  # red 0, red 4, then 1
    by_device = evaluate_device(device, ITEMS, beta=0.6, candidates=3, k=5, facets=facets)
    assert by_device["personal"]["rr_sum"] == pytest.approx(gated["rr_sum"])
    assert (
        by_device["base"]["rr_sum"]
        == evaluate_device(device, ITEMS, beta=0.6, candidates=3)["base"]["rr_sum"]
    )
