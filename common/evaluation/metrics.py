"""Ranking metrics. Ranks are 0-based (0 = top) and ties are broken pessimistically.

The per-rank metrics (``hit_rate_at_k``, ``ndcg_at_k``, ``mrr``) assume one relevant item
and accept an int (giving a float) or an array of ranks (giving an array).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# What a search is ranked with: the base encoder, + the global adapter, + the personal rerank.
MODES = ("base", "adapter", "personal")

Rank = int | np.ndarray


def rank_of(scores: np.ndarray, relevant_index: int) -> int:
    """0-based rank of item ``relevant_index`` under ``scores`` (n_items,); ties count above."""
    return int(ranks_from_scores(np.asarray(scores)[None, :], np.array([relevant_index]))[0])


def ranks_from_scores(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """Ranks of ``relevant`` (n_queries,) in ``scores`` (n_queries, n_items): #others >= it."""
    scores = np.asarray(scores)
    relevant = np.asarray(relevant, dtype=np.int64)
    if scores.ndim != 2 or relevant.shape != (scores.shape[0],):
        raise ValueError(f"scores {scores.shape} and relevant {relevant.shape} do not match")
    target = scores[np.arange(len(relevant)), relevant][:, None]
    ranks: np.ndarray = (scores >= target).sum(axis=1) - 1
    return ranks


def sampled_ranks(
    scores: np.ndarray, relevant: np.ndarray, n_negatives: int, rng: np.random.Generator
) -> np.ndarray:
    """Ranks of ``relevant`` among ``n_negatives`` items sampled per query (without
    replacement, never the relevant item): the "with sampled negatives" protocol."""
    scores = np.asarray(scores)
    relevant = np.asarray(relevant, dtype=np.int64)
    n_items = scores.shape[1]
    if not 0 < n_negatives < n_items:
        raise ValueError(f"n_negatives must be in [1, {n_items - 1}], got {n_negatives}")
    ranks = np.empty(len(relevant), dtype=np.int64)
    for q, rel in enumerate(relevant):
        negatives = rng.choice(n_items - 1, size=n_negatives, replace=False)
        negatives += negatives >= rel  # skip over the relevant index
        ranks[q] = int((scores[q, negatives] >= scores[q, rel]).sum())
    return ranks


def hit_rate_at_k(rank: Rank, k: int) -> float | np.ndarray:
    """1 if the relevant item is in the top ``k`` (rank < k), else 0."""
    return _as_output(np.asarray(rank) < k)


def ndcg_at_k(rank: Rank, k: int) -> float | np.ndarray:
    """nDCG@k with one relevant item: 1 / log2(rank + 2) if rank < k, else 0."""
    rank = np.asarray(rank)
    return _as_output(np.where(rank < k, 1.0 / np.log2(rank + 2.0), 0.0))


def mrr(rank: Rank) -> float | np.ndarray:
    """Reciprocal rank 1 / (rank + 1); its mean over queries is the MRR."""
    return _as_output(1.0 / (np.asarray(rank) + 1.0))


def recall_at_k(ranked_ids: Sequence[str], relevant_ids: Sequence[str], k: int) -> float:
    """Fraction of the relevant ids found in the first ``k`` ranked ids."""
    relevant = set(relevant_ids)
    if not relevant:
        raise ValueError("recall_at_k needs at least one relevant id")
    return len(relevant.intersection(ranked_ids[:k])) / len(relevant)


def precision_at_k(ranked_ids: Sequence[str], relevant_ids: Sequence[str], k: int) -> float:
    """Fraction of the first ``k`` ranked ids that are relevant (the divisor is ``k``)."""
    if k <= 0:
        raise ValueError(f"k must be > 0, got {k}")
    return len(set(relevant_ids).intersection(ranked_ids[:k])) / k


def summarize_ranks(ranks: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Mean ``HR@k`` (= Recall@k with one relevant item) and ``nDCG@k`` for each k, and MRR."""
    ranks = np.asarray(ranks)
    if ranks.size == 0:
        raise ValueError("summarize_ranks needs at least one rank")
    out: dict[str, float] = {}
    for k in ks:
        out[f"HR@{k}"] = float(np.mean(hit_rate_at_k(ranks, k)))
        out[f"nDCG@{k}"] = float(np.mean(ndcg_at_k(ranks, k)))
    out["MRR"] = float(np.mean(mrr(ranks)))
    return out


def _as_output(values: np.ndarray) -> float | np.ndarray:
    values = values.astype(np.float64)
    return values if values.ndim else float(values)
