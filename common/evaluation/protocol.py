"""Held-out evaluation of searches over the full catalog: HR@k, nDCG@k and MRR.

The evaluation protocol every party shares: devices evaluate their held-out searches with
it, the server pools the sums, simulations evaluate whole populations with it::

    evaluate_searches(searches, item_vectors, *, adapter=None, user=None, beta=0.0,
                      candidates=100, k=10, item_prior=None) -> dict
        sums over the searches: {"count", "hr_sum", "ndcg_sum", "rr_sum"} (floats), so
        sums from many devices add up; ``metrics_from_sums`` turns them into means.
    evaluate_device(device, item_vectors, *, adapter=None, beta, candidates, k,
                    attributes=None, attribute_beta=0.0, facets=None)
        -> {mode: sums} for ``common.evaluation.metrics.MODES`` ("base", "adapter", "personal")

Ranking: score = (adapted) query . item (+ ``item_prior``, a per-item bonus) over every
catalog item. With a user vector and beta > 0 (or a facet gate), the top ``candidates``
items are reordered by ``common.model.personalization.rerank`` (score + beta * cos(user,
item) + the device's attribute-preference bonus; the items that have the facets the query
names first: ``common.model.query_facets``), and the rest keep the base order below them.
Ranks are 0-based with ties counted against the relevant item.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from common.data.searches import DeviceData, SearchExample
from common.evaluation.metrics import (
    MODES,
    hit_rate_at_k,
    mrr,
    ndcg_at_k,
    ranks_from_scores,
)
from common.model.adapter import QueryAdapter
from common.model.personalization import (
    AttributeTable,
    attribute_preferences,
    rerank,
    user_vector,
)
from common.model.query_facets import QueryFacets

SUM_KEYS = ("count", "hr_sum", "ndcg_sum", "rr_sum")
_CHUNK = 1024
# The personal rerank's per-item bonus: none, one (n_items,) row for every query, or
# rows(start, stop) -> (stop - start, n_items) for a batch of queries.
Bonus = np.ndarray | Callable[[int, int], np.ndarray] | None
# The facet gate of the personal rerank: rows(start, stop) -> (stop - start, n_items) bool,
# the items that have each query's facets (None: no query in the batch names any).
Gate = Callable[[int, int], np.ndarray | None] | None


def search_ranks(
    queries: np.ndarray,
    relevant: np.ndarray,
    item_vectors: np.ndarray,
    *,
    users: np.ndarray | None = None,
    beta: float = 0.0,
    candidates: int = 100,
    item_prior: np.ndarray | None = None,
    bonus: Bonus = None,
    gate: Gate = None,
) -> np.ndarray:
    """0-based full-catalog rank of each relevant item (see the module doc).

    ``users``: None, one user vector (d,) for all queries, or one per query (n, d).
    """
    plain, personal = _ranks(
        queries, relevant, item_vectors, users, beta, candidates, item_prior, bonus, gate
    )
    return plain if personal is None else personal


def ranks_by_mode(
    base_queries: np.ndarray,
    adapted_queries: np.ndarray | None,
    relevant: np.ndarray,
    item_vectors: np.ndarray,
    *,
    users: np.ndarray | None,
    beta: float,
    candidates: int,
    bonus: Bonus = None,
    gate: Gate = None,
) -> dict[str, np.ndarray]:
    """Ranks for MODES from one scoring pass per query set; without adapted queries,
    "adapter" is "base" and "personal" reranks the base ranking."""
    adapted = adapted_queries is not None
    base, base_personal = _ranks(
        base_queries,
        relevant,
        item_vectors,
        None if adapted else users,
        beta,
        candidates,
        None,
        bonus,
        gate,
    )
    if adapted_queries is None:
        return {"base": base, "adapter": base, "personal": _or(base_personal, base)}
    plain, personal = _ranks(
        adapted_queries, relevant, item_vectors, users, beta, candidates, None, bonus, gate
    )
    return {"base": base, "adapter": plain, "personal": _or(personal, plain)}


def _or(ranks: np.ndarray | None, default: np.ndarray) -> np.ndarray:
    return default if ranks is None else ranks


def _ranks(
    queries: np.ndarray,
    relevant: np.ndarray,
    item_vectors: np.ndarray,
    users: np.ndarray | None,
    beta: float,
    candidates: int,
    item_prior: np.ndarray | None,
    bonus: Bonus = None,
    gate: Gate = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """(plain ranks, personal ranks or None when there is no user, or beta is 0 and there
    is no gate)."""
    queries = np.asarray(queries, dtype=np.float32)
    relevant = np.asarray(relevant, dtype=np.int64)
    item_t = np.asarray(item_vectors, dtype=np.float32).T  # a view: BLAS reads it transposed
    plain = np.empty(len(relevant), dtype=np.int64)
    personal = plain.copy() if users is not None and (beta != 0.0 or gate is not None) else None
    if personal is not None:
        users = np.broadcast_to(np.asarray(users, dtype=np.float32), queries.shape)
    for start in range(0, len(relevant), _CHUNK):
        stop = start + _CHUNK
        scores = queries[start:stop] @ item_t
        if item_prior is not None:
            scores = scores + item_prior[None, :]
        plain[start:stop] = ranks_from_scores(scores, relevant[start:stop])
        if personal is None or users is None:
            continue
        top = _top_candidates(scores, candidates)
        end = min(stop, len(relevant))
        extra = _bonus_rows(bonus, start, end, scores.shape[1])
        gates = None if gate is None else gate(start, end)
        for row, score in enumerate(scores):
            i = start + row
            personal[i] = (
                _personal_rank(
                    score,
                    top[row],
                    int(relevant[i]),
                    item_vectors,
                    users[i],
                    beta,
                    extra[row],
                    None if gates is None else gates[row],
                )
                if np.any(users[i])
                else plain[i]
            )
    return plain, personal


def _bonus_rows(bonus: Bonus, start: int, stop: int, n_items: int) -> np.ndarray:
    """(stop - start, n_items) personal bonus of the queries start:stop (zeros if none)."""
    if bonus is None:
        return np.zeros((stop - start, n_items), dtype=np.float32)
    if callable(bonus):
        return bonus(start, stop)
    return np.broadcast_to(np.asarray(bonus, dtype=np.float32), (stop - start, n_items))


def _top_candidates(scores: np.ndarray, candidates: int) -> np.ndarray:
    """(rows, n) indices of each row's top ``candidates`` scores, best first."""
    n = min(candidates, scores.shape[1])
    top = np.argpartition(-scores, n - 1, axis=1)[:, :n] if n < scores.shape[1] else None
    if top is None:
        top = np.broadcast_to(np.arange(n), scores.shape)
    picked = np.take_along_axis(scores, top, axis=1)
    return np.take_along_axis(top, np.argsort(-picked, axis=1, kind="stable"), axis=1)


def _personal_rank(
    scores: np.ndarray,
    top: np.ndarray,
    relevant: int,
    item_vectors: np.ndarray,
    user: np.ndarray,
    beta: float,
    bonus: np.ndarray,
    gate: np.ndarray | None,
) -> int:
    """Rank after ``rerank`` of the candidates ``top``; items outside them rank below all.
    ``gate``: (n_items,) bool, the items that have the query's facets (None: no gate)."""
    hit = np.flatnonzero(top == relevant)
    if len(hit) == 0:
        return max(len(top), int((scores >= scores[relevant]).sum()) - 1)
    matches = None if gate is None else gate[top]
    order, ordered = rerank(scores[top], item_vectors[top], user, beta, bonus[top], matches)
    final = np.empty_like(ordered)
    final[order] = ordered
    target = hit[0]
    if matches is None:
        return int((final >= final[target]).sum()) - 1
    tier = matches == matches[target]
    above = int(matches.sum()) if not matches[target] else 0
    return above + int((final[tier] >= final[target]).sum()) - 1


def rank_sums(ranks: np.ndarray, k: int) -> dict[str, float]:
    """{"count", "hr_sum", "ndcg_sum", "rr_sum"} of a set of ranks."""
    ranks = np.asarray(ranks)
    return {
        "count": float(len(ranks)),
        "hr_sum": float(np.sum(hit_rate_at_k(ranks, k))),
        "ndcg_sum": float(np.sum(ndcg_at_k(ranks, k))),
        "rr_sum": float(np.sum(mrr(ranks))),
    }


def evaluate_searches(
    searches: Sequence[SearchExample],
    item_vectors: np.ndarray,
    *,
    adapter: QueryAdapter | None = None,
    user: np.ndarray | None = None,
    beta: float = 0.0,
    candidates: int = 100,
    k: int = 10,
    item_prior: np.ndarray | None = None,
    bonus: Bonus = None,
    facets: QueryFacets | None = None,
) -> dict[str, float]:
    """Metric sums of ``searches`` ranked over the full catalog (see the module doc)."""
    if not searches:
        return dict.fromkeys(SUM_KEYS, 0.0)
    queries, relevant = stack_searches(searches)
    if adapter is not None:
        queries = adapter.apply_numpy(queries)
    ranks = search_ranks(
        queries,
        relevant,
        item_vectors,
        users=user,
        beta=beta,
        candidates=candidates,
        item_prior=item_prior,
        bonus=bonus,
        gate=gate_for_queries(facets, searches),
    )
    return rank_sums(ranks, k)


def stack_searches(searches: Sequence[SearchExample]) -> tuple[np.ndarray, np.ndarray]:
    """(query vectors (n, d) float32, clicked items (n,) int64) of ``searches``."""
    queries = np.stack([np.asarray(s.query_vector, dtype=np.float32) for s in searches])
    return queries, np.array([s.clicked for s in searches], dtype=np.int64)


def device_user_vector(device: DeviceData, item_vectors: np.ndarray) -> np.ndarray:
    """The device's user vector: mean of the vectors of the items it clicked in train."""
    clicked = [s.clicked for s in device.train]
    return user_vector(np.asarray(item_vectors, dtype=np.float32)[clicked])


def evaluate_device(
    device: DeviceData,
    item_vectors: np.ndarray,
    *,
    adapter: QueryAdapter | None = None,
    beta: float,
    candidates: int,
    k: int = 10,
    attributes: AttributeTable | None = None,
    attribute_beta: float = 0.0,
    facets: QueryFacets | None = None,
) -> dict[str, dict[str, float]]:
    """Sums for the device's test searches: base, base + adapter, + personal rerank.

    Without an adapter, "adapter" equals "base" and "personal" reranks the base ranking.
    """
    if not device.test:
        return {mode: dict.fromkeys(SUM_KEYS, 0.0) for mode in MODES}
    queries, relevant = stack_searches(device.test)
    ranks = ranks_by_mode(
        queries,
        adapter.apply_numpy(queries) if adapter is not None else None,
        relevant,
        item_vectors,
        users=device_user_vector(device, item_vectors),
        beta=beta,
        candidates=candidates,
        bonus=device_bonus(device, attributes, attribute_beta),
        gate=gate_for_queries(facets, device.test),
    )
    return {mode: rank_sums(r, k) for mode, r in ranks.items()}


def gate_for_queries(facets: QueryFacets | None, searches: Sequence[SearchExample]) -> Gate:
    """The personal rerank's gate for ``searches``: the items that have the facets each
    query text names (None without facets)."""
    if facets is None:
        return None
    texts = [s.query for s in searches]
    return lambda start, stop: facets.match_rows(texts[start:stop])


def device_bonus(
    device: DeviceData, attributes: AttributeTable | None, attribute_beta: float
) -> np.ndarray | None:
    """The device's (n_items,) attribute-preference bonus from its train searches."""
    if attributes is None or attribute_beta == 0.0 or not device.train:
        return None
    prefs = attribute_preferences(
        attributes, [s.clicked for s in device.train], [s.shown for s in device.train]
    )
    return np.float32(attribute_beta) * attributes.item_scores(prefs)


def metrics_from_sums(sums: dict[str, float], k: int = 10) -> dict[str, float]:
    """Means: {"HR@k", "nDCG@k", "MRR", "count"} (NaN where count is 0)."""
    count = sums["count"]
    mean = (lambda x: x / count) if count else (lambda x: float("nan"))
    return {
        f"HR@{k}": mean(sums["hr_sum"]),
        f"nDCG@{k}": mean(sums["ndcg_sum"]),
        "MRR": mean(sums["rr_sum"]),
        "count": count,
    }
