"""The private user vector and personalized reranking (DESIGN decision 6).

score = cos(adapted query, item) + beta * cos(user, item), over the N candidates that the
index returned. The user vector is built and kept on the device.
"""

from __future__ import annotations

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


def rerank(
    base_scores: np.ndarray,
    candidate_vectors: np.ndarray,
    user: np.ndarray | None,
    beta: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Order candidates by ``base_scores + beta * cos(user, item)``.

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
    order = np.argsort(-scores, kind="stable")
    return order, scores[order]
