"""The Online Retail population: one device per real customer of a UK online shop.

One device per customer with >= ``population.min_items`` distinct items, one search per
distinct item in order of first purchase: query = the item's product-type word (last word of
its description), clicked = the item, shown = the base ranking's top ``impression_size``
items for that query plus the clicked one. The last ``holdout_fraction`` (at least 1) of each
history is the test set. Items are ranked against the whole product catalog (``products.csv``
next to the transactions, or the table derived from a transactions file alone: see
``common.data.retail.load_retail_catalog``); item vectors are text embeddings of the
descriptions.
"""

from __future__ import annotations

from pathlib import Path

from common.config import Config, ConfigError
from common.data.retail import (
    TRANSACTIONS_FILE,
    customer_histories,
    load_retail_catalog,
    load_retail_transactions,
    split_history,
)
from common.data.searches import DeviceData, SearchExample
from common.model.encoder import Encoder
from common.model.query_facets import QueryFacets
from common.progress import progress_bar
from simulation.population import (
    Population,
    encode_texts,
    impression,
    public_phrases,
    seeded_subset,
    top_items,
    train_popularity,
)


def retail_paths(config: Config) -> tuple[Path, Path | None]:
    """(transactions, products) files: ``population.retail_*``, else ``transactions.csv.gz``
    in the retail data folder and no fixed product table (``products.csv`` next to the
    transactions when present, else derived from them: ``load_retail_catalog``)."""
    settings = config.population
    transactions = Path(settings.retail_transactions or config.paths.retail / TRANSACTIONS_FILE)
    products = Path(settings.retail_products) if settings.retail_products else None
    return transactions, products


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
    if products_path is not None and not products_path.is_file():
        raise ConfigError(f"population.retail_products: no file {products_path}")
    products, product_report = load_retail_catalog(transactions_path, products_path)
    if not products:
        raise ConfigError(f"population.retail_products: no products in {product_report.source}")
    purchases, purchase_report = load_retail_transactions(transactions_path)
    index = {p.id: i for i, p in enumerate(products)}
    known = [p for p in purchases if p.item_id in index]
    histories = customer_histories(known, settings.min_items)
    customers = seeded_subset(sorted(histories), num_devices, seed)
    if not customers:
        raise ConfigError(
            f"population.min_items: no customer in {transactions_path} has "
            f">= {settings.min_items} distinct catalog items"
        )
    titles = [p.title for p in products]
    cache_dir = config.paths.work / "cache"
    item_vectors = encode_texts(encoder, titles, cache_dir, "retail-items", [], progress)
    words = [p.category for p in products]
    used = sorted({words[index[i]] for c in customers for i in histories[c]})
    word_vectors = encode_texts(encoder, used, cache_dir, "retail-queries", [], progress)
    word_row = {w: r for r, w in enumerate(used)}
    tops = top_items(word_vectors, item_vectors, settings.impression_size)

    shared = [word_vectors[r].copy() for r in range(len(used))]  # one object per query word

    def search(item_id: str) -> SearchExample:
        item = index[item_id]
        row = word_row[words[item]]
        return SearchExample(shared[row], impression(tops[row], item), item, words[item])

    devices = []
    for customer in progress_bar(customers, show=progress, desc="retail devices", leave=False):
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
        public_phrases(products, encoder, cache_dir, "retail", progress),
        facets=QueryFacets.from_records(products),
    )
