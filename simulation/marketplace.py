"""The marketplace population: simulated shoppers on the real fashion catalog.

Each shopper has latent preferences: a gender, and Dirichlet-drawn tastes over article
types, colours, usages and brands (brand = the title's first word). The utility of item i
for shopper u is::

    GENDER_WEIGHT*[gender fits] + COLOUR_WEIGHT*colour[c_i] + USAGE_WEIGHT*usage[s_i]
      + BRAND_WEIGHT*brand[b_i] + quality_i + noise_ui

with each taste scaled to a maximum of 1, a public item quality shared by all shoppers
(N(0, QUALITY_SD)) and a small idiosyncratic term (N(0, NOISE_SD)). A search picks an
article type from the shopper's tastes and an ambiguous template: "<type>",
"<colour> <type>" (a colour the shopper likes) or "<gender> <type>"; the items matching it
are those of that type (and colour / gender, if named). The query vector is the base text
embedding of the query.

- TEST searches do not depend on the base ranking: drawn first, from their own random
  stream, the relevant item is the shopper's highest-utility item among all items matching
  the query (distinct across the shopper's test searches). ``shown`` is the base top items
  plus that item. They stand for the shopper's future purchases.
- TRAIN searches follow a position-biased click model on the base ranking: the shopper
  sees the top ``impression_size`` items and clicks the item at position p with probability
  proportional to ``(p+1)**-position_bias * exp(utility / click_temperature)`` over the
  shown items matching the query, never a test item; if none is left, the shopper leaves
  (nothing is logged).

Where a query leaves hundreds of matching items ("tshirts"), only the shopper's tastes
single out the relevant one: that is where personalization pays off.

Each device's ``HeldOutTruth`` (the matching items the shopper prefers to each test
search's relevant item, and that item's base rank among the matching items) is kept in the
population for the oracle baselines (``simulation.oracle``); the utilities are not kept.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

import numpy as np

from common.config import Config, ConfigError
from common.data.fashion import load_fashion_catalog
from common.data.records import Product
from common.data.searches import DeviceData, SearchExample
from common.model.encoder import Encoder
from common.model.query_facets import QueryFacets
from common.progress import progress_bar
from simulation.population import (
    HeldOutTruth,
    Population,
    attribute_table,
    encode_texts,
    impression,
    public_phrases,
    top_items,
    train_popularity,
)
from simulation.vector_cache import cache_key, cached_vectors

GENDER_WEIGHT = 3.0
COLOUR_WEIGHT = 2.0
BRAND_WEIGHT = 1.5
USAGE_WEIGHT = 1.0
QUALITY_SD = 0.3
NOISE_SD = 0.1
TYPE_CONCENTRATION = 0.3
COLOUR_CONCENTRATION = 0.3
USAGE_CONCENTRATION = 0.5
BRAND_CONCENTRATION = 0.2
MIN_TYPE_ITEMS = 5
SHOPPER_GENDERS = ("Men", "Women")
UNISEX = "Unisex"
TEMPLATES = ("type", "colour", "gender")
MAX_TRIES_PER_SEARCH = 20


@dataclass(frozen=True)
class FashionCatalog:
    """Integer-coded attributes of the catalog items, and their value names."""

    products: list[Product]
    codes: dict[str, np.ndarray]
    values: dict[str, list[str]]

    @classmethod
    def from_products(cls, products: list[Product]) -> FashionCatalog:
        columns = {
            "gender": [p.attributes.get("gender", "") for p in products],
            "colour": [p.attributes.get("baseColour", "") for p in products],
            "type": [p.category for p in products],
            "usage": [p.attributes.get("usage", "") for p in products],
            "brand": [p.title.split()[0].lower() for p in products],
        }
        codes, values = {}, {}
        for name, column in columns.items():
            values[name] = sorted(set(column))
            lookup = {v: i for i, v in enumerate(values[name])}
            codes[name] = np.array([lookup[v] for v in column], dtype=np.int64)
        return cls(products, codes, values)

    def gender_fits(self, gender: str) -> np.ndarray:
        names = self.values["gender"]
        ok = [i for i, v in enumerate(names) if v in (gender, UNISEX)]
        return np.isin(self.codes["gender"], ok)


@dataclass(frozen=True)
class Shopper:
    gender: str
    type_taste: np.ndarray
    colour_taste: np.ndarray
    utility: np.ndarray


@dataclass(frozen=True)
class ShopperQuery:
    text: str
    matches: np.ndarray


def query_text(catalog: FashionCatalog, type_code: int, template: str, value: str = "") -> str:
    name = catalog.values["type"][type_code]
    return f"{value} {name}".strip().lower() if template != "type" else name.lower()


def all_query_texts(catalog: FashionCatalog) -> list[str]:
    """Every query text a shopper can issue, sorted (encoded once and cached)."""
    texts = set()
    for t in range(len(catalog.values["type"])):
        of_type = catalog.codes["type"] == t
        texts.add(query_text(catalog, t, "type"))
        for c in np.unique(catalog.codes["colour"][of_type]):
            texts.add(query_text(catalog, t, "colour", catalog.values["colour"][c]))
        for g in SHOPPER_GENDERS:
            texts.add(query_text(catalog, t, "gender", g))
    return sorted(texts)


def make_shopper(catalog: FashionCatalog, quality: np.ndarray, rng: np.random.Generator) -> Shopper:
    """Draw one shopper's tastes and the utility of every item for them."""
    counts = [int(np.sum(catalog.gender_fits(g))) for g in SHOPPER_GENDERS]
    gender = SHOPPER_GENDERS[rng.choice(len(counts), p=np.array(counts) / sum(counts))]
    fits = catalog.gender_fits(gender)
    n_types = len(catalog.values["type"])
    type_items = np.bincount(catalog.codes["type"][fits], minlength=n_types)
    eligible = type_items >= MIN_TYPE_ITEMS
    type_taste = np.zeros(n_types)
    type_taste[eligible] = rng.dirichlet(np.full(eligible.sum(), TYPE_CONCENTRATION))
    tastes = {
        name: _scaled_dirichlet(len(catalog.values[name]), alpha, rng)
        for name, alpha in (
            ("colour", COLOUR_CONCENTRATION),
            ("usage", USAGE_CONCENTRATION),
            ("brand", BRAND_CONCENTRATION),
        )
    }
    utility = (
        GENDER_WEIGHT * fits
        + COLOUR_WEIGHT * tastes["colour"][catalog.codes["colour"]]
        + USAGE_WEIGHT * tastes["usage"][catalog.codes["usage"]]
        + BRAND_WEIGHT * tastes["brand"][catalog.codes["brand"]]
        + quality
        + rng.normal(0.0, NOISE_SD, size=len(quality))
    )
    return Shopper(gender, type_taste, tastes["colour"], utility)


def _scaled_dirichlet(size: int, alpha: float, rng: np.random.Generator) -> np.ndarray:
    taste = rng.dirichlet(np.full(size, alpha))
    return taste / taste.max()


def draw_query(catalog: FashionCatalog, shopper: Shopper, rng: np.random.Generator) -> ShopperQuery:
    """An ambiguous query from the shopper's tastes, and the items that match it."""
    type_code = int(rng.choice(len(shopper.type_taste), p=shopper.type_taste))
    of_type = catalog.codes["type"] == type_code
    template = TEMPLATES[rng.integers(len(TEMPLATES))]
    if template == "colour":
        colours = np.unique(catalog.codes["colour"][of_type & catalog.gender_fits(shopper.gender)])
        if len(colours) > 0:
            weights = shopper.colour_taste[colours] + 1e-9
            colour = int(rng.choice(colours, p=weights / weights.sum()))
            value = catalog.values["colour"][colour]
            matches = of_type & (catalog.codes["colour"] == colour)
            return ShopperQuery(
                query_text(catalog, type_code, "colour", value), np.flatnonzero(matches)
            )
    if template == "gender":
        matches = of_type & catalog.gender_fits(shopper.gender)
        if matches.any():
            text = query_text(catalog, type_code, "gender", shopper.gender)
            return ShopperQuery(text, np.flatnonzero(matches))
    return ShopperQuery(query_text(catalog, type_code, "type"), np.flatnonzero(of_type))


def click(
    shown: np.ndarray,
    query: ShopperQuery,
    shopper: Shopper,
    position_bias: float,
    temperature: float,
    rng: np.random.Generator,
    excluded: AbstractSet[int] = frozenset(),
) -> int | None:
    """The shown item the shopper clicks (position-biased), or None if no shown item
    matches the query (``excluded`` items are never clicked)."""
    relevant = np.isin(shown, query.matches) & ~np.isin(shown, list(excluded))
    if not relevant.any():
        return None
    utility = shopper.utility[shown]
    logits = (utility - utility[relevant].max()) / temperature
    examination = (np.arange(len(shown)) + 1.0) ** -position_bias
    weights = np.where(relevant, examination * np.exp(logits), 0.0)
    return int(rng.choice(shown, p=weights / weights.sum()))


def best_unseen(query: ShopperQuery, shopper: Shopper, seen: set[int]) -> int | None:
    """The shopper's highest-utility matching item not in ``seen`` (independent of ranking)."""
    candidates = np.array([i for i in query.matches if int(i) not in seen], dtype=np.int64)
    if len(candidates) == 0:
        return None
    return int(candidates[np.argmax(shopper.utility[candidates])])


def simulate_device(
    device_id: str,
    catalog: FashionCatalog,
    shopper: Shopper,
    base: Callable[[str], tuple[np.ndarray, np.ndarray]],
    config: Config,
    rngs: tuple[np.random.Generator, np.random.Generator],
    item_vectors: np.ndarray,
) -> tuple[DeviceData, HeldOutTruth]:
    """``test_searches`` held-out searches, then ``train_searches`` clicked searches, and
    the ground truth of the held-out ones (for the oracle baselines).

    Test targets are drawn first from the shopper's tastes alone (``rngs[0]``), so they do
    not depend on the base ranking; they are the shopper's future purchases, so train
    clicks (``rngs[1]``) never land on them.
    """
    settings = config.population
    test_rng, train_rng = rngs
    targets: list[tuple[ShopperQuery, int]] = []
    seen: set[int] = set()
    for _ in range(settings.test_searches * MAX_TRIES_PER_SEARCH):
        if len(targets) == settings.test_searches:
            break
        query = draw_query(catalog, shopper, test_rng)
        target = best_unseen(query, shopper, seen)
        if target is not None:
            seen.add(target)
            targets.append((query, target))
    train: list[SearchExample] = []
    for _ in range(settings.train_searches * MAX_TRIES_PER_SEARCH):
        if len(train) == settings.train_searches:
            break
        query = draw_query(catalog, shopper, train_rng)
        vector, top = base(query.text)
        clicked = click(
            top,
            query,
            shopper,
            settings.position_bias,
            settings.click_temperature,
            train_rng,
            excluded=seen,
        )
        if clicked is not None:
            train.append(SearchExample(vector, top, clicked, query.text))
    test, preferred, match_ranks = [], [], []
    for query, target in targets:
        vector, top = base(query.text)
        test.append(SearchExample(vector, impression(top, target), target, query.text))
        preferred.append(preferred_items(query, shopper, target))
        match_ranks.append(match_rank(query, target, vector, item_vectors))
    truth = HeldOutTruth(tuple(preferred), np.array(match_ranks, dtype=np.int64))
    return DeviceData(device_id, train, test), truth


def preferred_items(query: ShopperQuery, shopper: Shopper, target: int) -> np.ndarray:
    """The items matching ``query`` that the shopper prefers to ``target``."""
    utility = shopper.utility[query.matches]
    return query.matches[utility > shopper.utility[target]].astype(np.int64)


def match_rank(
    query: ShopperQuery, target: int, vector: np.ndarray, item_vectors: np.ndarray
) -> int:
    """The rank of ``target`` among the items matching ``query`` by base score (ties
    against it)."""
    scores = item_vectors[query.matches] @ vector
    own = scores[np.flatnonzero(query.matches == target)[0]]
    return int(np.sum(scores >= own)) - 1


def item_vectors(
    encoder: Encoder, products: list[Product], config: Config, progress: bool
) -> np.ndarray:
    """Fused title + photo vectors of the catalog, cached."""
    weights = (config.encoder.text_weight, config.encoder.image_weight)
    stamps = []
    for p in products:
        stat = p.photo.stat()
        stamps.append(f"{p.title}\x01{p.image_path}\x01{stat.st_size}\x01{stat.st_mtime_ns}")
    key = cache_key(encoder.version, f"marketplace-items-{weights}", stamps)
    return cached_vectors(
        config.paths.work / "cache",
        key,
        lambda: encoder.encode_items(
            [p.title for p in products],
            [p.image_path for p in products],
            text_weight=weights[0],
            image_weight=weights[1],
            progress=progress,
        ),
        rows=len(products),
        label="marketplace-items",
    )


def load_marketplace(
    config: Config,
    encoder: Encoder,
    num_devices: int | None,
    seed: int,
    progress: bool,
) -> Population:
    """The marketplace population (see the module doc). Shopper i is the same whatever
    ``num_devices`` is, for a given seed."""
    products, report = load_fashion_catalog(config.paths.fashion)
    if len(products) < 2:
        raise ConfigError(f"paths.data_dir: fewer than 2 fashion items in {config.paths.fashion}")
    catalog = FashionCatalog.from_products(products)
    vectors = item_vectors(encoder, products, config, progress)
    texts = all_query_texts(catalog)
    query_vectors = encode_texts(
        encoder, texts, config.paths.work / "cache", "marketplace-queries", [], progress
    )
    rows = {t: r for r, t in enumerate(texts)}
    tops = top_items(query_vectors, vectors, config.population.impression_size)

    # one array object per query text, shared by every search of that text: the run's
    # population pickle then stores each query vector once, not once per search
    shared = [query_vectors[r].copy() for r in range(len(texts))]

    def base(text: str) -> tuple[np.ndarray, np.ndarray]:
        return shared[rows[text]], tops[rows[text]]

    quality = np.random.default_rng([seed, 0]).normal(0.0, QUALITY_SD, size=len(products))
    count = num_devices or config.population.shoppers
    devices, truth = [], {}
    for i in progress_bar(range(count), show=progress, desc="marketplace shoppers", leave=False):
        shopper = make_shopper(catalog, quality, np.random.default_rng([seed, 1, i]))
        rngs = (np.random.default_rng([seed, 2, i]), np.random.default_rng([seed, 3, i]))
        device, truth[f"shopper-{i:05d}"] = simulate_device(
            f"shopper-{i:05d}", catalog, shopper, base, config, rngs, vectors
        )
        devices.append(device)
    info = {"catalog": report.summary(), "query_texts": len(texts)}
    return Population(
        "marketplace",
        [p.id for p in products],
        vectors,
        devices,
        train_popularity(devices, len(products)),
        [p.title for p in products],
        info,
        public_phrases(products, encoder, config.paths.work / "cache", "marketplace", progress),
        attribute_table(products),
        [p.category for p in products],
        truth,
        QueryFacets.from_records(products),
    )
