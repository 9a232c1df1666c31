"""Building the served catalog: encode items (title + photo) and write the store and index.

The fashion data has no prices. With ``search.synthetic_prices`` (default) each fashion item
gets a deterministic demo price (``synthetic_price``), flagged ``price_synthetic`` in every
response, so the price filter can be shown; items upserted with a price keep theirs.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from common.config import Config
from common.data.fashion import load_fashion_catalog
from common.data.records import Product

if TYPE_CHECKING:
    from common.model.encoder import Encoder
from server.search.base_encoder import BaseEncoder, built
from server.search.catalog import Catalog, Item
from server.search.index_kinds import IndexKind, IndexOptions

log = logging.getLogger(__name__)

PRICE_MIN, PRICE_MAX = 5.0, 250.0


def store_path(config: Config) -> Path:
    return (
        Path(config.search.store_dir) if config.search.store_dir else config.paths.work / "search"
    )


def synthetic_price(item_id: str) -> float:
    """A demo price from the id's sha256: log-uniform in [5, 250), ending in .99."""
    u = int.from_bytes(hashlib.sha256(item_id.encode()).digest()[:8], "big") / 2**64
    price = math.exp(math.log(PRICE_MIN) + u * (math.log(PRICE_MAX) - math.log(PRICE_MIN)))
    return math.floor(price) + 0.99


def items_from_products(products: Sequence[Product], synthetic_prices: bool) -> list[Item]:
    def price(p: Product) -> tuple[float | None, bool]:
        if p.price is not None:
            return p.price, False
        return (synthetic_price(p.id), True) if synthetic_prices else (None, False)

    return [
        Item(
            id=p.id,
            title=p.title,
            category=p.category,
            price=price(p)[0],
            price_synthetic=price(p)[1],
            photo=str(p.image_path) if p.image_path else None,
            attributes=dict(p.attributes),
        )
        for p in products
    ]


def catalog_text_queries(items: Sequence[Item], n: int, seed: int = 0) -> list[str]:
    """Distinct shopper-like text queries from item attributes and titles ("black watches",
    "women casual shoes", "black shoes for men", runs of three title words), shuffled; for
    measuring recall on realistic queries and for the benchmark's load."""
    found: set[str] = set()
    for it in items:
        a = it.attributes
        colour, gender = a.get("baseColour", ""), a.get("gender", "")
        for parts in (
            (colour, it.category),
            (gender, it.category),
            (a.get("usage", ""), it.category),
            (a.get("season", ""), it.category),
            (gender, colour, it.category),
            (colour, it.category, "for", gender),
            (it.category,),
        ):
            if all(parts):
                found.add(" ".join(parts).lower())
        words = it.title.lower().split()
        found.update(" ".join(words[i : i + 3]) for i in range(1, len(words) - 2))
    queries = sorted(found)
    random.Random(seed).shuffle(queries)
    return queries[:n]


def encode_catalog_items(
    config: Config, encoder: Encoder, items: Sequence[Item], *, progress: bool = True
) -> np.ndarray:
    """The items' fused vectors (title and photo) with the config's weights and batch size."""
    encoder.batch_size = config.encoder.batch_size
    return encoder.encode_items(
        [it.title for it in items],
        [it.photo for it in items],
        text_weight=config.encoder.text_weight,
        image_weight=config.encoder.image_weight,
        progress=progress,
    )


def build_catalog(
    config: Config,
    encoder: Encoder,
    items: Sequence[Item],
    *,
    folder: Path | None = None,
    kind: IndexKind = "auto",
    progress: bool = True,
) -> Catalog:
    """Encode ``items`` and write a new store (replacing the live snapshot atomically)."""
    vectors = encode_catalog_items(config, encoder, items, progress=progress)
    ann = kind != "exact" and (kind != "auto" or len(items) > config.search.exact_max_items)
    queries = catalog_text_queries(items, config.search.recall_queries) if ann else []
    return create_catalog(
        config,
        items,
        vectors,
        encoder.version,
        folder=folder,
        kind=kind,
        query_vectors=encoder.encode_text(queries) if queries else None,
    )


def create_catalog(
    config: Config,
    items: Sequence[Item],
    vectors: np.ndarray,
    encoder_version: str,
    *,
    folder: Path | None = None,
    kind: IndexKind = "auto",
    query_vectors: np.ndarray | None = None,
) -> Catalog:
    """Write a store of ``items`` and their ``vectors``; recall measured on
    ``query_vectors`` when given (else on noisy item vectors)."""
    return Catalog.create(
        folder or store_path(config),
        items,
        vectors,
        encoder_version=encoder_version,
        options=IndexOptions.from_search_config(config.search, kind),
        query_vectors=query_vectors,
    )


def fashion_items(config: Config, limit: int | None = None) -> list[Item]:
    products, report = load_fashion_catalog(config.paths.fashion)
    log.info("%s", report.summary())
    if limit is not None:
        products = products[:limit]
    return items_from_products(products, config.search.synthetic_prices)


def open_catalog(config: Config, folder: Path | None = None) -> Catalog:
    return Catalog.open(folder or store_path(config), exact_max_items=config.search.exact_max_items)


def open_or_build_catalog(
    config: Config, encoder: BaseEncoder, folder: Path | None = None
) -> Catalog:
    """The served catalog: the store if it matches the encoder; else built (from the fashion
    data if there is no store, from the store's own items if the encoder changed)."""
    folder = folder or store_path(config)
    try:
        catalog = open_catalog(config, folder)
    except FileNotFoundError:
        log.info("no catalog store at %s: indexing the fashion catalog", folder)
        return build_catalog(config, built(encoder), fashion_items(config), folder=folder)
    if catalog.encoder_version == encoder.version:
        return catalog
    log.warning(
        "store %s was indexed with encoder %s, serving %s: re-encoding its %d items",
        folder,
        catalog.encoder_version,
        encoder.version,
        len(catalog),
    )
    items = catalog.items()
    catalog.close()
    return build_catalog(config, built(encoder), items, folder=folder)
