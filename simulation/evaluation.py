"""Whole-population evaluation: every device's held-out searches, scored in large batches.

The ranks are those of ``common.evaluation.protocol.evaluate_device`` per device; scoring all
searches together is much faster than device by device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from common.data.searches import DeviceData
from common.evaluation.protocol import (
    device_user_vector,
    gate_for_queries,
    metrics_from_sums,
    rank_sums,
    ranks_by_mode,
    stack_searches,
)
from common.model.adapter import QueryAdapter
from common.model.personalization import attribute_preferences
from simulation.population import Population


@dataclass
class PopulationEval:
    """Per-device sums by mode and the metrics over all test searches pooled."""

    per_device: dict[str, dict[str, dict[str, float]]]
    overall: dict[str, dict[str, float]]


def evaluate_population(
    population: Population,
    *,
    adapter: QueryAdapter | None = None,
    beta: float,
    candidates: int,
    k: int = 10,
    attribute_beta: float = 0.0,
    facet_gate: bool = False,
) -> PopulationEval:
    """Evaluate every device's test searches in the three modes (scored in large batches,
    the same ranks as ``evaluate_device`` per device) and pool them."""
    devices = [d for d in population.devices if d.test]
    searches = [s for d in devices for s in d.test]
    queries, relevant = stack_searches(searches)
    users = np.repeat(
        np.stack([device_user_vector(d, population.item_vectors) for d in devices]),
        [len(d.test) for d in devices],
        axis=0,
    )
    ranks = ranks_by_mode(
        queries,
        adapter.apply_numpy(queries) if adapter is not None else None,
        relevant,
        population.item_vectors,
        users=users,
        beta=beta,
        candidates=candidates,
        bonus=_bonus_rows(population, devices, attribute_beta),
        gate=gate_for_queries(population.facets if facet_gate else None, searches),
    )
    bounds = np.cumsum([0] + [len(d.test) for d in devices])
    per_device = {
        d.device_id: {m: rank_sums(r[bounds[i] : bounds[i + 1]], k) for m, r in ranks.items()}
        for i, d in enumerate(devices)
    }
    overall = {mode: metrics_from_sums(rank_sums(r, k), k) for mode, r in ranks.items()}
    return PopulationEval(per_device, overall)


def _bonus_rows(
    population: Population, devices: list[DeviceData], attribute_beta: float
) -> Callable[[int, int], np.ndarray] | None:
    """The devices' attribute-preference bonus, for query rows start:stop (``Bonus``)."""
    table = population.attributes
    if table is None or attribute_beta == 0.0:
        return None
    prefs = np.stack(
        [
            attribute_preferences(table, [s.clicked for s in d.train], [s.shown for s in d.train])
            for d in devices
        ]
    )
    owner = np.repeat(np.arange(len(devices)), [len(d.test) for d in devices])

    def rows(start: int, stop: int) -> np.ndarray:
        return np.float32(attribute_beta) * table.item_scores(prefs[owner[start:stop]])

    return rows
