"""Populations of simulated devices: each device's logged searches, split into train and test.

Interface (used by the federated client, server evaluation and simulation runner)::

    LoggedSearch(query_vector (d,) float32, shown (s,) int64, clicked int, query str)
        what a device logs for one search (DESIGN decision 4): the base (un-adapted) query
        vector, the item indices shown (the impression, always including the clicked one)
        and the item clicked/bought. ``query`` (the text) is kept for analysis only.
    DeviceData(device_id, train: list[LoggedSearch], test: list[LoggedSearch])
        ``test`` holds held-out searches that are never trained on.
    Population(name, item_ids, item_vectors (n_items, d) float32 normalized, devices,
               popularity (n_items,) = click counts over all devices' TRAIN searches,
               item_titles, info)
    load_population(name, config, *, num_devices=None, seed=0, encoder=None) -> Population
        name: ``retail`` (Online Retail customers) or ``marketplace`` (simulated shoppers on
        the fashion catalog). ``num_devices`` picks a seeded subset (retail) or the number
        of shoppers (marketplace; default ``population.shoppers``).
    describe(population) -> str

Retail: one device per real customer with >= ``population.min_items`` distinct items, one
search per distinct item in order of first purchase: query = the item's product-type word
(last word of its description), clicked = the item, shown = the base ranking's top
``impression_size`` items for that query plus the clicked one. The last
``holdout_fraction`` (at least 1) of each history is the test set. Items are ranked against
the whole product catalog; item vectors are text embeddings of the descriptions.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from common.config import Config, ConfigError
from common.data.retail import (
    customer_histories,
    load_retail_products,
    load_retail_transactions,
    split_history,
)
from common.model.encoder import Encoder, create_encoder
from simulation.vector_cache import cache_key, cached_vectors

log = logging.getLogger(__name__)

POPULATIONS = ("retail", "marketplace")


@dataclass(frozen=True)
class LoggedSearch:
    """One logged search: base query vector, the impression shown, the item clicked."""

    query_vector: np.ndarray
    shown: np.ndarray
    clicked: int
    query: str = ""


@dataclass
class DeviceData:
    device_id: str
    train: list[LoggedSearch]
    test: list[LoggedSearch]


@dataclass
class Population:
    name: str
    item_ids: list[str]
    item_vectors: np.ndarray
    devices: list[DeviceData]
    popularity: np.ndarray
    item_titles: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)


def load_population(
    name: str,
    config: Config,
    *,
    num_devices: int | None = None,
    seed: int = 0,
    encoder: Encoder | None = None,
    progress: bool = True,
) -> Population:
    """Build population ``name`` from the data named in ``config`` (see the module doc).

    ``encoder``: the base encoder to use; by default built from ``config.encoder``. Vectors
    are cached under ``<paths.work>/cache``. ``info["load_seconds"]`` records the wall time.
    """
    if name not in POPULATIONS:
        raise ConfigError(f"population: unknown name {name!r} (known: {', '.join(POPULATIONS)})")
    if num_devices is not None and num_devices < 1:
        raise ConfigError(f"num_devices must be >= 1, got {num_devices}")
    start = time.perf_counter()
    if encoder is None:
        encoder = create_encoder(
            config.encoder.model,
            config.encoder.pretrained,
            work_dir=config.paths.work,
            device=config.encoder.device,
        )
        encoder.batch_size = config.encoder.batch_size
    if name == "retail":
        population = load_retail(config, encoder, num_devices, seed, progress)
    else:
        from simulation.marketplace import load_marketplace

        population = load_marketplace(config, encoder, num_devices, seed, progress)
    population.info["encoder"] = encoder.version
    population.info["load_seconds"] = round(time.perf_counter() - start, 2)
    return population


def retail_paths(config: Config) -> tuple[Path, Path]:
    """(transactions, products) files: ``population.retail_*`` or the retail data folder."""
    folder = config.paths.retail
    transactions = config.population.retail_transactions or folder / "transactions.csv.gz"
    products = config.population.retail_products or folder / "products.csv"
    return Path(transactions), Path(products)


def load_retail(
    config: Config,
    encoder: Encoder,
    num_devices: int | None,
    seed: int,
    progress: bool,
) -> Population:
    """The Online Retail population (see the module doc)."""
    settings = config.population
    transactions_path, products_path = retail_paths(config)
    products, product_report = load_retail_products(products_path)
    if not products:
        raise ConfigError(f"population.retail_products: no products in {products_path}")
    purchases, purchase_report = load_retail_transactions(transactions_path)
    index = {p.id: i for i, p in enumerate(products)}
    known = [p for p in purchases if p.item_id in index]
    histories = customer_histories(known, settings.min_items)
    customers = _pick(sorted(histories), num_devices, seed)
    if not customers:
        raise ConfigError(
            f"population.min_items: no customer in {transactions_path} has "
            f">= {settings.min_items} distinct catalog items"
        )
    titles = [p.title for p in products]
    cache_dir = config.paths.work / "cache"
    item_vectors = encode_texts(
        encoder, titles, cache_dir, "retail-items", [products_path], progress
    )
    words = [p.category for p in products]
    used = sorted({words[index[i]] for c in customers for i in histories[c]})
    word_vectors = encode_texts(encoder, used, cache_dir, "retail-queries", [], progress)
    word_row = {w: r for r, w in enumerate(used)}
    tops = top_items(word_vectors, item_vectors, settings.impression_size)

    def search(item_id: str) -> LoggedSearch:
        item = index[item_id]
        row = word_row[words[item]]
        return LoggedSearch(word_vectors[row], impression(tops[row], item), item, words[item])

    devices = []
    for customer in tqdm(customers, desc="retail devices", disable=not progress, leave=False):
        train_items, test_items = split_history(histories[customer], settings.holdout_fraction)
        devices.append(
            DeviceData(
                f"customer-{customer}",
                [search(i) for i in train_items],
                [search(i) for i in test_items],
            )
        )
    info = {
        "transactions": purchase_report.summary(),
        "products": product_report.summary(),
        "purchases_of_unknown_items": len(purchases) - len(known),
        "eligible_customers": len(histories),
    }
    return Population(
        "retail",
        [p.id for p in products],
        item_vectors,
        devices,
        train_popularity(devices, len(products)),
        titles,
        info,
    )


def _pick(ids: list[str], count: int | None, seed: int) -> list[str]:
    """All ``ids``, or a seeded sample of ``count`` of them (kept in sorted order)."""
    if count is None or count >= len(ids):
        return ids
    chosen = np.random.default_rng(seed).choice(len(ids), size=count, replace=False)
    return [ids[i] for i in sorted(chosen)]


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
