"""What a device sends in a round: one flat vector whose sum over the cohort is all the
server learns.

``payload = [update clipped to C, gamma x stats]``: the update (new adapter weights minus the
global ones) in the adapter's wire order, clipped to L2 norm ``clipping_norm`` (C) on the
device, then the device's statistics for the round, each in [0, 1]:

- ``trained`` / ``declined``: whether it trained (a declining device sends a zero update);
- ``evaluated``: whether it has held-out searches, and for each ranking model (``base``
  encoder, the ``adapter`` the server sent for evaluation, ``common.federation.candidate``,
  and its ``personal`` rerank) the mean ``hr``, ``ndcg`` and ``rr`` (reciprocal rank).

``gamma = C * sqrt(stats_share / len(names))`` bounds the statistics' norm by
``C * sqrt(stats_share)``, so the payload's norm stays within ``C * sqrt(1 + stats_share)``
and the round's noise covers both. Summed over devices, the statistics give counts and the
mean of the per-device means (each device counts once, whatever its number of searches).
With ``stats_share`` 0 the payload is the update alone. Under adaptive clipping
(``for_plan`` of an adaptive plan) one more statistic follows: ``unclipped``, whether the
device trained and its update fit within C as it was (adaptive clipping moves C towards a
quantile of the devices' update norms with it); other runs never send it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from common.evaluation.metrics import MODES
from common.federation.privacy_plan import PrivacyPlan

COUNTS = ("trained", "declined", "evaluated")
RANK_STATS = ("hr", "ndcg", "rr")
STATS: tuple[str, ...] = (*COUNTS, *(f"{m}.{s}" for m in MODES for s in RANK_STATS))
UNCLIPPED = "unclipped"  # sent only under adaptive clipping


@dataclass(frozen=True)
class PayloadCodec:
    """Encodes a device's payload and decodes the cohort's sum (see the module doc)."""

    clipping_norm: float
    stats_share: float
    shapes: tuple[tuple[int, ...], ...]
    names: tuple[str, ...] = STATS

    @classmethod
    def for_weights(
        cls, weights: Sequence[np.ndarray], clipping_norm: float, stats_share: float
    ) -> PayloadCodec:
        return cls(clipping_norm, stats_share, tuple(np.shape(w) for w in weights))

    @classmethod
    def for_plan(cls, weights: Sequence[np.ndarray], plan: PrivacyPlan) -> PayloadCodec:
        """The payload of a round run under ``plan`` (at its clipping norm)."""
        names = (*STATS, UNCLIPPED) if plan.adaptive else STATS
        shapes = tuple(np.shape(w) for w in weights)
        return cls(plan.clipping_norm, plan.stats_share, shapes, names)

    @property
    def update_size(self) -> int:
        return sum(math.prod(s) for s in self.shapes)

    @property
    def stats_size(self) -> int:
        return len(self.names) if self.stats_share > 0 else 0

    @property
    def size(self) -> int:
        return self.update_size + self.stats_size

    @property
    def gamma(self) -> float:
        return self.clipping_norm * math.sqrt(self.stats_share / len(self.names))

    def unclipped(self, update: Sequence[np.ndarray]) -> bool:
        """Whether ``update`` fits within the clipping norm as it is."""
        squares = sum(float(np.sum(np.square(u, dtype=np.float64))) for u in update)
        return math.sqrt(squares) <= self.clipping_norm

    def encode(self, update: Sequence[np.ndarray], stats: Mapping[str, float]) -> np.ndarray:
        """The payload of one device: its clipped update, then its scaled statistics."""
        flat = np.concatenate([np.asarray(u, dtype=np.float64).ravel() for u in update])
        if flat.size != self.update_size:
            raise ValueError(f"update has {flat.size} values, expected {self.update_size}")
        norm = float(np.linalg.norm(flat))
        if norm > self.clipping_norm:
            flat *= self.clipping_norm / norm
        if not self.stats_size:
            return flat.astype(np.float32)
        unknown = set(stats) - set(self.names)
        if unknown:
            raise ValueError(f"unknown statistics: {sorted(unknown)}")
        values = np.clip([float(stats.get(name, 0.0)) for name in self.names], 0.0, 1.0)
        return np.concatenate([flat, self.gamma * values]).astype(np.float32)

    def decode(self, total: np.ndarray) -> tuple[list[np.ndarray], dict[str, float]]:
        """(summed update as arrays of the adapter's shapes, summed statistics)."""
        total = np.asarray(total, dtype=np.float64).ravel()
        if total.size != self.size:
            raise ValueError(f"payload sum has {total.size} values, expected {self.size}")
        arrays, start = [], 0
        for shape in self.shapes:
            count = math.prod(shape)
            arrays.append(total[start : start + count].reshape(shape))
            start += count
        stats = {}
        if self.stats_size:
            stats = dict(zip(self.names, (total[start:] / self.gamma).tolist(), strict=True))
        return arrays, stats
