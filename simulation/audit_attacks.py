"""The privacy audit's attacks on a simulated run: reconstruction and membership inference.

Reconstruction ranks the catalog by how an adapter update moved it: with the update
applied to the round's starting adapter, how much closer the population's typical queries
(the public catalog phrases, else a sample of searches) come to each item, on average. Its
top 10 are the attacker's guess of what the devices behind the update clicked.

- From one raw update (what a server without SecAgg+ and without device noise receives):
  the device's clipped update, less the mean of the round's updates (such a server sees all
  of them and keeps what is particular to one device). A hit: one of the device's clicked
  items is in the top 10; an article type is recovered when the top 10's most common type
  is one the device clicked.
- From what the server holds: the round's noised sum divided by the expected cohort, the
  step the server takes. Its top 10 is scored for the round's members and for the devices
  that did not take part; a gap between the two is what the sum gives away about members.

Membership inference scores each device by how much the published adapter improves the
rank of its clicked training items over the run's starting adapter; participants should
look no better than devices that never took part (AUC near 0.5).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from common.data.searches import DeviceData
from common.model.adapter import QueryAdapter
from simulation.audit_estimates import auc, chance_of_any, hits_any
from simulation.population import Population

AUDIT_TOP = 10
AUDIT_PROBES = 1000


@dataclass(frozen=True)
class HitRate:
    """How often the top-k guess held a device's clicked item, over ``devices``, against
    the rate of a random guess; ``types``: article types recovered (None without types)."""

    rate: float
    chance: float
    devices: int
    types: float | None = None
    types_chance: float | None = None


def probe_queries(population: Population, *, seed: int = 0) -> np.ndarray:
    """The attacker's typical queries: public catalog phrases, else a sample of searches."""
    if population.phrases is not None and len(population.phrases.vectors):
        vectors = np.asarray(population.phrases.vectors, dtype=np.float32)
    else:
        vectors = np.stack([s.query_vector for d in population.devices for s in d.train])
    if len(vectors) > AUDIT_PROBES:
        rows = np.random.default_rng(seed).choice(len(vectors), AUDIT_PROBES, replace=False)
        vectors = vectors[np.sort(rows)]
    return vectors


def item_movement(
    start: Sequence[np.ndarray], moved: Sequence[np.ndarray], probes: np.ndarray, items: np.ndarray
) -> np.ndarray:
    """(n_items,) mean change of the probes' similarity to each item, ``start`` -> ``moved``."""
    before = QueryAdapter.from_weights(list(start)).apply_numpy(probes)
    after = QueryAdapter.from_weights(list(moved)).apply_numpy(probes)
    return np.asarray(items, dtype=np.float32) @ (after - before).mean(axis=0)


def clicked_items(device: DeviceData) -> set[int]:
    return {int(s.clicked) for s in device.train}


def raw_update_attack(
    population: Population,
    start: Sequence[np.ndarray],
    updates: Mapping[int, Sequence[np.ndarray]],
    targets: Sequence[int],
) -> HitRate:
    """Top-10 hits of each target device's own update, less the round's mean movement."""
    probes, items = probe_queries(population), population.item_vectors
    moved = {
        node: item_movement(start, _plus(start, update), probes, items)
        for node, update in updates.items()
    }
    mean = np.mean(list(moved.values()), axis=0)
    tops = {node: _top(moved[node] - mean) for node in targets}
    return _hit_rate(population, tops)


def held_sum_attack(
    population: Population,
    start: Sequence[np.ndarray],
    step: Sequence[np.ndarray],
    members: Sequence[int],
    others: Sequence[int],
) -> tuple[HitRate, HitRate]:
    """Top-10 hits of the server's step for the round's members and for non-members."""
    moved = _plus(start, step)
    top = _top(item_movement(start, moved, probe_queries(population), population.item_vectors))
    return (
        _hit_rate(population, dict.fromkeys(members, top)),
        _hit_rate(population, dict.fromkeys(others, top)),
    )


def _plus(start: Sequence[np.ndarray], update: Sequence[np.ndarray]) -> list[np.ndarray]:
    return [s + u for s, u in zip(start, update, strict=True)]


def _top(scores: np.ndarray) -> np.ndarray:
    return np.argsort(-scores, kind="stable")[:AUDIT_TOP]


def _hit_rate(population: Population, tops: Mapping[int, np.ndarray]) -> HitRate:
    if not tops:
        return HitRate(float("nan"), float("nan"), 0)
    n_items = population.n_items
    hits, chance = [], []
    for node, top in tops.items():
        wanted = clicked_items(population.devices[node])
        hits.append(hits_any(top, wanted))
        chance.append(chance_of_any(n_items, AUDIT_TOP, len(wanted)))
    types = types_chance = None
    if population.item_categories:
        types, types_chance = _type_recovery(population, tops)
    return HitRate(float(np.mean(hits)), float(np.mean(chance)), len(tops), types, types_chance)


def _type_recovery(population: Population, tops: Mapping[int, np.ndarray]) -> tuple[float, float]:
    """Rate at which the top 10's most common article type is one the device clicked, and
    the rate for the type of a random item."""
    kinds = population.item_categories
    recovered, chance = [], []
    for node, top in tops.items():
        clicked = {kinds[s.clicked] for s in population.devices[node].train}
        guess = Counter(kinds[int(i)] for i in top).most_common(1)[0][0]  # ties: best ranked
        recovered.append(guess in clicked)
        chance.append(sum(k in clicked for k in kinds) / len(kinds))
    return float(np.mean(recovered)), float(np.mean(chance))


def membership_scores(
    population: Population,
    start: Sequence[np.ndarray],
    published: Sequence[np.ndarray],
    nodes: Sequence[int],
) -> np.ndarray:
    """Per device: mean log-rank improvement of its clicked training items, published
    adapter over the starting one (ranks over the whole catalog)."""
    searches = [(n, s) for n in nodes for s in population.devices[n].train]
    if not searches:
        return np.zeros(len(nodes))
    queries = np.stack([s.query_vector for _, s in searches]).astype(np.float32)
    clicked = np.array([s.clicked for _, s in searches])
    items = np.asarray(population.item_vectors, dtype=np.float32)
    gain = np.log(
        _ranks(QueryAdapter.from_weights(list(start)).apply_numpy(queries), items, clicked)
    )
    gain -= np.log(
        _ranks(QueryAdapter.from_weights(list(published)).apply_numpy(queries), items, clicked)
    )
    owner = np.array([nodes.index(n) for n, _ in searches])
    counts = np.bincount(owner, minlength=len(nodes))
    return np.bincount(owner, weights=gain, minlength=len(nodes)) / np.maximum(counts, 1)


def _ranks(queries: np.ndarray, items: np.ndarray, clicked: np.ndarray) -> np.ndarray:
    scores = queries @ items.T
    target = scores[np.arange(len(clicked)), clicked]
    return 1.0 + (scores > target[:, None]).sum(axis=1)


def membership_auc(
    population: Population,
    start: Sequence[np.ndarray],
    published: Sequence[np.ndarray],
    members: Sequence[int],
    others: Sequence[int],
) -> float:
    """AUC of the membership score, participants against devices that never took part."""
    scores = membership_scores(population, start, published, [*members, *others])
    return auc(scores[: len(members)], scores[len(members) :])
