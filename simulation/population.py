"""A simulated population: many devices' searches over one public item table.

``Population`` holds the item ids, their normalized vectors (n_items, d) float32, each
device's ``DeviceData`` (train and held-out test ``SearchExample``s), the click counts of
every item over all devices' TRAIN searches (``popularity``, never test), the item titles and
a free-form ``info`` dict (what was loaded, skipped, how long it took). A population with
ground-truth preferences (the marketplace) also keeps each device's ``HeldOutTruth``, for
the oracle baselines (``simulation.oracle``) only. The helpers below are shared by the
population loaders (``simulation.loader``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.data.records import Product, categorical_attributes
from common.data.searches import DeviceData
from common.model.encoder import Encoder
from common.model.personalization import AttributeTable
from common.model.query_facets import QueryFacets
from server.training.warm_start import catalog_phrases
from simulation.vector_cache import cache_key, cached_vectors


@dataclass(frozen=True)
class PublicPhrases:
    """Catalog phrases (``server.training.warm_start.catalog_phrases``), their base text
    vectors, and the item rows each describes: public data for the adapter's warm start."""

    texts: list[str]
    vectors: np.ndarray
    items: list[np.ndarray]


@dataclass(frozen=True)
class HeldOutTruth:
    """What the simulator knows of one device's held-out searches, in ``device.test`` order.

    ``preferred[j]``: the items matching search j's query that the shopper truly prefers to
    its relevant item (the relevant items of its other test searches: a few at most).
    ``match_ranks[j]``: how many matching items the base ranking puts at or above the
    relevant item (ties against it), i.e. its rank when matching items come first in base
    order. The experimenter's view: never sent to devices or the server.
    """

    preferred: tuple[np.ndarray, ...]
    match_ranks: np.ndarray

    def __post_init__(self) -> None:
        if len(self.preferred) != len(self.match_ranks):
            raise ValueError(
                f"truth: {len(self.preferred)} preferred lists for {len(self.match_ranks)} ranks"
            )


@dataclass
class Population:
    """Devices, items and their vectors (see the module doc)."""

    name: str
    item_ids: list[str]
    item_vectors: np.ndarray
    devices: list[DeviceData]
    popularity: np.ndarray
    item_titles: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    phrases: PublicPhrases | None = None
    attributes: AttributeTable | None = None
    item_categories: list[str] = field(default_factory=list)  # e.g. the fashion articleType
    truth: dict[str, HeldOutTruth] | None = None  # by device id; None without ground truth
    facets: QueryFacets | None = None  # the public catalog's facets a query can name

    @property
    def n_items(self) -> int:
        return len(self.item_ids)


def seeded_subset(ids: list[str], count: int | None, seed: int) -> list[str]:
    """All ``ids``, or a seeded sample of ``count`` of them (kept in sorted order)."""
    if count is None or count >= len(ids):
        return ids
    chosen = np.random.default_rng(seed).choice(len(ids), size=count, replace=False)
    return [ids[i] for i in sorted(chosen)]


def attribute_table(products: Sequence[Product]) -> AttributeTable | None:
    """The catalog's categorical attributes as a table (None if it has none)."""
    columns = categorical_attributes(products)
    if not columns:
        return None
    codes = {}
    for name, column in columns.items():
        lookup = {value: i for i, value in enumerate(sorted(set(column)))}
        codes[name] = np.array([lookup[v] for v in column], dtype=np.int64)
    return AttributeTable.from_columns(codes)


def public_phrases(
    products: Sequence[Product], encoder: Encoder, cache_dir: Path, label: str, progress: bool
) -> PublicPhrases:
    """The catalog's phrases and their (cached) text vectors."""
    phrases = catalog_phrases(products)
    texts = sorted(phrases)
    vectors = encode_texts(encoder, texts, cache_dir, f"{label}-phrases", [], progress)
    return PublicPhrases(texts, vectors, [phrases[t] for t in texts])


def encode_texts(
    encoder: Encoder,
    texts: list[str],
    cache_dir: Path,
    label: str,
    files: list[Path],
    progress: bool,
) -> np.ndarray:
    """Normalized text embeddings of ``texts``, cached by encoder version, texts and files."""
    key = cache_key(encoder.version, label, texts, files)
    return cached_vectors(
        cache_dir,
        key,
        lambda: encoder.encode_text(texts, progress=progress),
        rows=len(texts),
        label=label,
    )


def top_items(query_vectors: np.ndarray, item_vectors: np.ndarray, size: int) -> np.ndarray:
    """(n_queries, size) indices of each query's top items by dot product, best first
    (ties keep catalog order)."""
    size = min(size, len(item_vectors))
    out = np.empty((len(query_vectors), size), dtype=np.int64)
    for start in range(0, len(query_vectors), 1024):
        scores = query_vectors[start : start + 1024] @ item_vectors.T
        out[start : start + 1024] = np.argsort(-scores, axis=1, kind="stable")[:, :size]
    return out


def impression(top: np.ndarray, clicked: int) -> np.ndarray:
    """The items shown: the base top items, plus the clicked item if it is not among them."""
    top = np.asarray(top, dtype=np.int64)
    return top if clicked in top else np.append(top, np.int64(clicked))


def train_popularity(devices: list[DeviceData], n_items: int) -> np.ndarray:
    """Click counts per item over every device's train searches (never test)."""
    clicks = [s.clicked for d in devices for s in d.train]
    return np.bincount(np.asarray(clicks, dtype=np.int64), minlength=n_items).astype(np.int64)


def describe(population: Population) -> str:
    """A few lines: devices, items, searches per device, impression sizes, load details."""
    n_train = np.array([len(d.train) for d in population.devices])
    n_test = np.array([len(d.test) for d in population.devices])
    shown = [len(s.shown) for d in population.devices for s in d.train[:50]]
    lines = [
        f"population {population.name}: {len(population.devices):,} devices, "
        f"{population.n_items:,} items, vectors {population.item_vectors.shape[1]}-d",
        f"  train searches {n_train.sum():,} (per device median {np.median(n_train):.0f}, "
        f"min {n_train.min()}, max {n_train.max()})",
        f"  test searches {n_test.sum():,} (per device median {np.median(n_test):.0f}, "
        f"min {n_test.min()}, max {n_test.max()})",
        f"  items shown per search: mean {np.mean(shown):.1f}; "
        f"items clicked in train: {(population.popularity > 0).sum():,}",
    ]
    lines += [f"  {key}: {value}" for key, value in population.info.items()]
    return "\n".join(lines)
