"""Weighted fusion of text and image vectors: one vector for a query or an item from its
text, its image, or both (normalize(w_text * t + w_image * i); the weights live in config)."""

from __future__ import annotations

import numpy as np

Weight = float | np.ndarray


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows (or a single vector) scaled to unit L2 norm, as float32."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    out: np.ndarray = (x / np.maximum(norm, eps)).astype(np.float32, copy=False)
    return out


def fuse(
    text: np.ndarray | None,
    image: np.ndarray | None,
    *,
    text_weight: Weight = 0.5,
    image_weight: Weight = 0.5,
) -> np.ndarray:
    """``normalize(w_text * t + w_image * i)`` over the parts present.

    Works on one vector or a batch of rows; weights may be per-row arrays (a weight of 0
    drops that part for that row). Each part is normalized first, so the weights alone set
    the mix.
    """
    if text is None and image is None:
        raise ValueError("fuse needs a text vector, an image vector, or both")
    total: np.ndarray | None = None
    for part, weight in ((text, text_weight), (image, image_weight)):
        if part is None:
            continue
        weight = np.asarray(weight, dtype=np.float32)
        if np.any(weight < 0):
            raise ValueError("fusion weights must be >= 0")
        if weight.ndim == 1:
            weight = weight[:, None]
        term = weight * l2_normalize(part)
        total = term if total is None else total + term
    assert total is not None
    if np.any(np.linalg.norm(total, axis=-1) == 0):
        raise ValueError("fusion weights are all zero for a query")
    return l2_normalize(total)
