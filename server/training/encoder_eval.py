"""Retrieval quality of the base encoder on held-out catalog items.

Two protocols, each beside the same numbers for a random ranking:
- title -> photo: the product title queries a gallery of photos only; the relevant item is
  that product (Recall@1/5/10, MRR);
- category queries ``"<colour> <article type>"`` against fused item vectors (title + photo):
  P@10 counted by article type, and by article type + colour.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from common.data.records import Product
from common.evaluation.metrics import mrr, ranks_from_scores
from common.model.encoder import Encoder
from common.model.fusion import fuse

KS = (1, 5, 10)


def title_to_photo(title_vecs: np.ndarray, photo_vecs: np.ndarray) -> dict[str, float]:
    """Recall@k and MRR of each title against the photo gallery (item i <-> photo i)."""
    ranks = ranks_from_scores(title_vecs @ photo_vecs.T, np.arange(len(title_vecs)))
    out = {f"R@{k}": float(np.mean(ranks < k)) for k in KS}
    out["MRR"] = float(np.mean(mrr(ranks)))
    return out


def random_title_to_photo(n: int) -> dict[str, float]:
    """Expected Recall@k and MRR of a uniformly random ranking of n items."""
    out = {f"R@{k}": min(k, n) / n for k in KS}
    out["MRR"] = float(np.mean(1.0 / np.arange(1, n + 1)))
    return out


def category_queries(items: Sequence[Product]) -> list[tuple[str, str, str]]:
    """(query text, article type, colour) for each type+colour pair present in ``items``."""
    pairs = {
        (p.category, p.attributes.get("baseColour", ""))
        for p in items
        if p.attributes.get("baseColour")
    }
    return [(f"{colour} {kind}", kind, colour) for kind, colour in sorted(pairs)]


def category_precision(
    query_vecs: np.ndarray,
    queries: Sequence[tuple[str, str, str]],
    item_vecs: np.ndarray,
    items: Sequence[Product],
    k: int = 10,
) -> dict[str, float]:
    """Mean P@k over category queries, by article type and by article type + colour."""
    kinds = np.array([p.category for p in items])
    colours = np.array([p.attributes.get("baseColour", "") for p in items])
    top = np.argsort(-(query_vecs @ item_vecs.T), axis=1, kind="stable")[:, :k]
    by_type = [np.mean(kinds[row] == kind) for row, (_, kind, _) in zip(top, queries, strict=True)]
    by_both = [
        np.mean((kinds[row] == kind) & (colours[row] == colour))
        for row, (_, kind, colour) in zip(top, queries, strict=True)
    ]
    return {f"P@{k} type": float(np.mean(by_type)), f"P@{k} type+colour": float(np.mean(by_both))}


def random_category_precision(
    queries: Sequence[tuple[str, str, str]], items: Sequence[Product], k: int = 10
) -> dict[str, float]:
    """Expected P@k of a random ranking: the share of matching items in the gallery."""
    kinds = np.array([p.category for p in items])
    colours = np.array([p.attributes.get("baseColour", "") for p in items])
    by_type = [np.mean(kinds == kind) for _, kind, _ in queries]
    by_both = [np.mean((kinds == kind) & (colours == colour)) for _, kind, colour in queries]
    return {f"P@{k} type": float(np.mean(by_type)), f"P@{k} type+colour": float(np.mean(by_both))}


def evaluate_encoder(
    encoder: Encoder,
    items: Sequence[Product],
    *,
    text_weight: float = 0.5,
    image_weight: float = 0.5,
    title_vecs: np.ndarray | None = None,
) -> dict[str, dict[str, float]]:
    """All protocols on ``items`` (never trained on). Returns {row name: {metric: value}}."""
    if title_vecs is None:
        title_vecs = encoder.encode_text([p.title for p in items])
    photo_vecs = encoder.encode_image([p.photo for p in items])
    fused = fuse(title_vecs, photo_vecs, text_weight=text_weight, image_weight=image_weight)
    queries = category_queries(items)
    query_vecs = encoder.encode_text([q for q, _, _ in queries])
    return {
        "encoder": {
            **title_to_photo(title_vecs, photo_vecs),
            **category_precision(query_vecs, queries, fused, items),
        },
        "encoder, photos only": category_precision(query_vecs, queries, photo_vecs, items),
        "random": {
            **random_title_to_photo(len(items)),
            **random_category_precision(queries, items),
        },
    }


def encoder_table(results: dict[str, dict[str, float]]) -> str:
    """A plain-text table: one row per ranking, one column per metric."""
    columns = list(dict.fromkeys(key for row in results.values() for key in row))
    width = max(len(name) for name in results) + 2
    lines = ["".ljust(width) + "".join(c.rjust(17) for c in columns)]
    for name, row in results.items():
        cells = "".join((f"{row[c]:.3f}" if c in row else "-").rjust(17) for c in columns)
        lines.append(name.ljust(width) + cells)
    return "\n".join(lines)
