"""Oracle baselines: rankings that know the simulated shoppers' true preferences.

Only for populations with ground truth (the marketplace keeps a ``HeldOutTruth`` per
device in ``Population.truth``); Online Retail has none and gets no oracle rows. On each
held-out search:

- ``oracle (match + utility)``: the items matching the query first, ordered by the
  shopper's true utility, then the rest by base score. The relevant item is the shopper's
  best matching item left, so only the matching items it preferred (the relevant items of
  its other test searches) rank above it.
- ``oracle rerank of base top-N``: the same order applied only within the base encoder's
  top N = ``evaluation.candidates`` items; the rest keep the base order below them, as in
  the personal rerank.
- ``exact match (no personalization)``: the matching items first, in base order.

They show the headroom, and that the form of the rerank caps the gain: a reranker of the
base top N can at best reach the second row. Ranks are 0-based with ties counted against
the relevant item (``common.evaluation.protocol``). The experimenter's view of a
simulation: never sent to devices or the server.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from common.evaluation.metrics import ranks_from_scores
from common.evaluation.protocol import metrics_from_sums, rank_sums, stack_searches
from simulation.population import Population

ORACLE = "oracle (match + utility)"
ORACLE_RERANK = "oracle rerank of base top-N"
EXACT_MATCH = "exact match (no personalization)"
_CHUNK = 1024


def oracle_ranks(
    queries: np.ndarray,
    relevant: np.ndarray,
    item_vectors: np.ndarray,
    *,
    preferred: Sequence[np.ndarray],
    match_ranks: np.ndarray,
    candidates: int,
) -> dict[str, np.ndarray]:
    """The relevant items' ranks under each oracle (see the module doc), by row name.

    ``preferred[i]``: the items matching search i's query that its shopper prefers to its
    relevant item; ``match_ranks[i]``: the relevant item's base rank among matching items.
    """
    relevant = np.asarray(relevant, dtype=np.int64)
    match_ranks = np.asarray(match_ranks, dtype=np.int64)
    if not len(queries) == len(relevant) == len(preferred) == len(match_ranks):
        raise ValueError(
            f"oracle: {len(queries)} queries, {len(relevant)} relevant items, "
            f"{len(preferred)} preferred lists and {len(match_ranks)} match ranks"
        )
    if candidates < 1:
        raise ValueError(f"evaluation.candidates: must be >= 1, got {candidates}")
    item_t = np.asarray(item_vectors, dtype=np.float32).T
    queries = np.asarray(queries, dtype=np.float32)
    within = np.empty(len(relevant), dtype=np.int64)
    for start in range(0, len(relevant), _CHUNK):
        scores = queries[start : start + _CHUNK] @ item_t
        base = ranks_from_scores(scores, relevant[start : start + _CHUNK])
        for row, score in enumerate(scores):
            i = start + row
            outside = base[row] >= candidates
            within[i] = base[row] if outside else _in_top(score, preferred[i], candidates)
    return {
        ORACLE: np.array([len(p) for p in preferred], dtype=np.int64),
        ORACLE_RERANK: within,
        EXACT_MATCH: match_ranks,
    }


def _in_top(scores: np.ndarray, items: np.ndarray, candidates: int) -> int:
    """How many of ``items`` have a base rank (ties against them) below ``candidates``."""
    if len(items) == 0:
        return 0
    ranks = np.sum(scores[None, :] >= scores[items][:, None], axis=1) - 1
    return int(np.sum(ranks < candidates))


def oracle_metrics(
    population: Population, *, k: int, candidates: int
) -> dict[str, dict[str, float]]:
    """HR@k, nDCG@k and MRR of each oracle on the population's held-out searches, by row
    name; empty when the population has no ground truth for all its devices."""
    truth = population.truth
    devices = [d for d in population.devices if d.test]
    if truth is None or not devices or any(d.device_id not in truth for d in devices):
        return {}
    preferred: list[np.ndarray] = []
    match_ranks: list[np.ndarray] = []
    for device in devices:
        known = truth[device.device_id]
        if len(known.preferred) != len(device.test):
            raise ValueError(
                f"truth of {device.device_id}: {len(known.preferred)} searches, "
                f"{len(device.test)} held out"
            )
        preferred += known.preferred
        match_ranks.append(known.match_ranks)
    queries, relevant = stack_searches([s for d in devices for s in d.test])
    ranks = oracle_ranks(
        queries,
        relevant,
        population.item_vectors,
        preferred=preferred,
        match_ranks=np.concatenate(match_ranks),
        candidates=candidates,
    )
    return {name: metrics_from_sums(rank_sums(r, k), k) for name, r in ranks.items()}
