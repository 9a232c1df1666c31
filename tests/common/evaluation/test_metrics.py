import math

import numpy as np
import pytest

from common.evaluation.metrics import (
    hit_rate_at_k,
    mrr,
    ndcg_at_k,
    precision_at_k,
    rank_of,
    ranks_from_scores,
    recall_at_k,
    sampled_ranks,
    summarize_ranks,
)


def test_rank_of_counts_higher_scores():
    # scores 0.1 0.9 0.5 0.3: item 2 (0.5) is beaten only by item 1 (0.9) -> rank 1
    assert rank_of(np.array([0.1, 0.9, 0.5, 0.3]), 2) == 1
    assert rank_of(np.array([0.1, 0.9, 0.5, 0.3]), 1) == 0
    assert rank_of(np.array([0.1, 0.9, 0.5, 0.3]), 0) == 3


def test_rank_of_breaks_ties_pessimistically():
    # item 0 ties with items 2 and 3 (all 0.5), item 1 is higher: 1 + 2 ties = rank 3
    assert rank_of(np.array([0.5, 0.7, 0.5, 0.5]), 0) == 3
    # all equal: the relevant item goes last among 4 -> rank 3
    assert rank_of(np.zeros(4), 1) == 3


def test_ranks_from_scores_batch():
    scores = np.array([[0.1, 0.9, 0.5], [3.0, 2.0, 1.0]])
    # row 0: item 2 (0.5) below 0.9 -> 1; row 1: item 2 (1.0) below 3.0 and 2.0 -> 2
    np.testing.assert_array_equal(ranks_from_scores(scores, np.array([2, 2])), [1, 2])
    with pytest.raises(ValueError):
        ranks_from_scores(scores, np.array([0]))


def test_per_rank_metrics_by_hand():
    assert hit_rate_at_k(0, 1) == 1.0
    assert hit_rate_at_k(1, 1) == 0.0
    assert hit_rate_at_k(9, 10) == 1.0
    assert hit_rate_at_k(10, 10) == 0.0
    # rank 0: 1/log2(2) = 1; rank 2: 1/log2(4) = 0.5; rank 6: 1/log2(8) = 1/3
    assert ndcg_at_k(0, 10) == 1.0
    assert ndcg_at_k(2, 10) == 0.5
    assert ndcg_at_k(6, 10) == pytest.approx(1 / 3)
    assert ndcg_at_k(6, 5) == 0.0
    # 1/(0+1) = 1; 1/(3+1) = 0.25
    assert mrr(0) == 1.0
    assert mrr(3) == 0.25
    np.testing.assert_allclose(mrr(np.array([0, 1])), [1.0, 0.5])


def test_recall_and_precision_by_hand():
    ranked = ["a", "b", "c", "d", "e"]
    # top-3 = a b c; relevant {b, e}: 1 of 2 found -> recall 0.5, precision 1/3
    assert recall_at_k(ranked, ["b", "e"], 3) == 0.5
    assert precision_at_k(ranked, ["b", "e"], 3) == pytest.approx(1 / 3)
    # top-5 holds both -> recall 1, precision 2/5
    assert recall_at_k(ranked, ["b", "e"], 5) == 1.0
    assert precision_at_k(ranked, ["b", "e"], 5) == 0.4
    with pytest.raises(ValueError):
        recall_at_k(ranked, [], 3)


def test_summarize_ranks_by_hand():
    ranks = np.array([0, 2, 9, 20])
    out = summarize_ranks(ranks, ks=(1, 10))
    # HR@1: only rank 0 -> 1/4; HR@10: ranks 0, 2, 9 -> 3/4
    assert out["HR@1"] == 0.25
    assert out["HR@10"] == 0.75
    # nDCG@1 = 1/4; nDCG@10 = (1 + 1/log2(4) + 1/log2(11)) / 4 = (1 + 0.5 + 0.28906) / 4
    assert out["nDCG@1"] == 0.25
    assert out["nDCG@10"] == pytest.approx((1 + 0.5 + 1 / math.log2(11)) / 4)
    # MRR = (1 + 1/3 + 1/10 + 1/21) / 4
    assert out["MRR"] == pytest.approx((1 + 1 / 3 + 1 / 10 + 1 / 21) / 4)
    assert set(out) == {"HR@1", "nDCG@1", "HR@10", "nDCG@10", "MRR"}


def test_sampled_ranks_excludes_relevant_and_counts_beaters():
    rng = np.random.default_rng(0)
    # item i scores i; relevant item 5 is beaten by items 6..9 only
    scores = np.arange(10, dtype=float)[None, :].repeat(200, axis=0)
    relevant = np.full(200, 5)
    # sampling all 9 negatives: exactly the 4 beaters -> rank 4 every time
    np.testing.assert_array_equal(sampled_ranks(scores, relevant, 9, rng), 4)
    # 3 of the 9 negatives: the rank counts beaters drawn, 0..3, mean 3 * 4/9 = 1.33
    ranks = sampled_ranks(scores, relevant, 3, rng)
    assert ranks.min() >= 0 and ranks.max() <= 3
    assert ranks.mean() == pytest.approx(4 / 3, abs=0.2)
    with pytest.raises(ValueError):
        sampled_ranks(scores, relevant, 10, rng)
