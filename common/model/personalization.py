"""The device's personal head and personalized reranking. Both stay on the device.

score = cos(adapted query, item) + beta * cos(user, item) + bonus(item), over the N
candidates the index returned, where

- the user vector is the normalized mean of the vectors of the items the device's user
  clicked (``user_vector``);
- the bonus, where the public catalog has categorical attributes (colour, gender, usage,
  ...: an ``AttributeTable``), is ``attribute_beta`` times the user's preference for each
  of the item's attribute values, learned from the device's own impressions by comparing
  what it clicked with what it was shown (``attribute_preferences``): how much more often
  than shown a value was clicked, as a log ratio, centred per attribute.

Where the query names catalog facets ("black casual shoes": ``common.model.query_facets``),
the candidates that have them stay above the rest and the rerank reorders within each
group: relevance comes from the query, preference breaks its ties, and a liked colour never
lifts items of another kind above what was asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from common.model.fusion import l2_normalize


def user_vector(item_vectors: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Normalized (weighted) mean of the vectors of items the user chose; zeros if none."""
    item_vectors = np.asarray(item_vectors, dtype=np.float32)
    if item_vectors.ndim != 2:
        raise ValueError(f"item_vectors must be 2-D, got shape {item_vectors.shape}")
    if len(item_vectors) == 0:
        return np.zeros(item_vectors.shape[1], dtype=np.float32)
    if weights is None:
        mean = item_vectors.mean(axis=0)
    else:
        weights = np.asarray(weights, dtype=np.float32)
        if weights.shape != (len(item_vectors),) or np.any(weights < 0):
            raise ValueError("weights must be one non-negative value per item")
        mean = weights @ item_vectors / max(float(weights.sum()), 1e-12)
    return l2_normalize(mean)


@dataclass(frozen=True)
class AttributeTable:
    """Each item's categorical attribute values as columns of one value space:
    ``codes[i, a]`` is item i's value of attribute a, numbered across all attributes."""

    codes: np.ndarray  # (n_items, n_attributes) int64
    n_values: int

    @classmethod
    def from_columns(cls, columns: dict[str, np.ndarray]) -> AttributeTable:
        """From per-attribute value codes (each numbered from 0), one array per attribute."""
        offset, parts = 0, []
        for name in sorted(columns):
            column = np.asarray(columns[name], dtype=np.int64)
            parts.append(column + offset)
            offset += int(column.max()) + 1 if len(column) else 0
        return cls(np.stack(parts, axis=1), offset)

    def item_scores(self, preferences: np.ndarray) -> np.ndarray:
        """(..., n_items) bonus of every item from (..., n_values) value preferences."""
        scores: np.ndarray = np.asarray(preferences)[..., self.codes].sum(axis=-1)
        return scores


def attribute_preferences(
    table: AttributeTable, clicked: Sequence[int], shown: Sequence[np.ndarray]
) -> np.ndarray:
    """(n_values,) log ratio of how often each value was clicked to how often it was shown,
    smoothed and centred per attribute (zeros without history)."""
    prefs = np.zeros(table.n_values, dtype=np.float32)
    if not len(clicked):
        return prefs
    clicks = np.bincount(table.codes[list(clicked)].ravel(), minlength=table.n_values)
    seen = np.bincount(table.codes[np.concatenate(shown)].ravel(), minlength=table.n_values)
    ratio = np.log((clicks + 0.5) / (seen + 2.0))
    for column in table.codes.T:
        values = np.unique(column)
        ratio[values] -= ratio[values].mean()
    return ratio.astype(np.float32)


def rerank(
    base_scores: np.ndarray,
    candidate_vectors: np.ndarray,
    user: np.ndarray | None,
    beta: float,
    bonus: np.ndarray | None = None,
    matches: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Order candidates by ``base_scores + beta * cos(user, item) + bonus`` (``bonus``: the
    candidates' attribute-preference bonus, already weighted), the candidates that
    ``matches`` (bool, the query's facets: ``common.model.query_facets``) above the rest.

    Returns (order, scores): indices into the candidates, best first, and their final
    scores. Ties keep the base order (stable sort), so client and server agree exactly.
    """
    scores = np.asarray(base_scores, dtype=np.float32)
    if user is not None and beta != 0.0:
        user = np.asarray(user, dtype=np.float32)
        if user.shape != (candidate_vectors.shape[1],):
            raise ValueError(
                f"user vector has shape {user.shape}, expected ({candidate_vectors.shape[1]},)"
            )
        if not np.all(np.isfinite(user)):
            raise ValueError("user vector contains NaN or inf")
        scores = scores + np.float32(beta) * (candidate_vectors @ l2_normalize(user))
    if bonus is not None:
        scores = scores + np.asarray(bonus, dtype=np.float32)
    if matches is None:
        order = np.argsort(-scores, kind="stable")
    else:
        matches = np.asarray(matches, dtype=bool)
        if matches.shape != scores.shape:
            raise ValueError(f"matches has shape {matches.shape}, expected {scores.shape}")
        order = np.lexsort((-scores, ~matches))  # stable: ties keep the base order
    return order, scores[order]
