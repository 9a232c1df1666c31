"""Fixtures for simulation tests: a fast deterministic stand-in encoder and tiny data files."""

from __future__ import annotations

import gzip
import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.config import config_from_dict
from common.data.searches import DeviceData, SearchExample
from common.model.fusion import l2_normalize
from simulation.population import Population, impression, top_items, train_popularity

RETAIL_HEADER = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country"
PRODUCTS_HEADER = (
    "StockCode,Description,n_descriptions,n_purchase_rows,n_customers,median_unit_price"
)


class WordHashEncoder:
    """Bag-of-words text vectors from hashed words: deterministic, no model, instant.

    ``encode_items`` ignores photos. ``calls`` counts the texts encoded (to test caching).
    """

    def __init__(self, dim: int = 32, version: str = "word-hash-1") -> None:
        self.dim = dim
        self.version = version
        self.calls = 0
        self.batch_size = 128

    def _word(self, word: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "little")
        return np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)

    def encode_text(self, texts, *, normalize=True, progress=False) -> np.ndarray:
        self.calls += len(texts)
        rows = []
        for text in texts:
            words = re.findall(r"[a-z0-9]+", text.lower()) or ["<empty>"]
            rows.append(np.sum([self._word(w) for w in words], axis=0))
        return l2_normalize(np.stack(rows)) if rows else np.zeros((0, self.dim), np.float32)

    def encode_items(self, titles, images, *, text_weight=0.5, image_weight=0.5, progress=False):
        return self.encode_text(titles)


@pytest.fixture
def encoder() -> WordHashEncoder:
    return WordHashEncoder()


def make_config(tmp_path: Path, **sections) -> object:
    data = {"paths": {"data_dir": str(tmp_path / "data"), "work_dir": str(tmp_path / "runs")}}
    data.update(sections)
    return config_from_dict(data)


def small_federation_config(
    tmp_path: Path, *, rank: int, rounds: int, per_round: int, **federation
) -> object:
    """A federated run small enough for a test: few negatives and candidates, devices and a
    ledger that accept any epsilon (the tests check the mechanics, not the budget)."""
    settings = {
        "rounds": rounds,
        "clients_per_round": per_round,
        "epsilon_user": 1e6,
        "min_devices_fraction": 0.5,
        **federation,
    }
    return config_from_dict(
        {
            "paths": {"work_dir": str(tmp_path / "work")},
            "adapter": {"rank": rank, "shown_negatives": 4, "random_negatives": 4},
            "device": {"batch_size": 4, "max_epsilon_user": 1e6, "max_epsilon_server": 1e6},
            "evaluation": {"candidates": 20},
            "federation": settings,
        }
    )


PRODUCTS = {
    "I01": "WHITE HANGING HEART T-LIGHT HOLDER",
    "I02": "RED HANGING HEART T-LIGHT HOLDER",
    "I03": "GLASS STAR FROSTED T-LIGHT HOLDER",
    "I04": "JUMBO BAG RED RETROSPOT",
    "I05": "JUMBO BAG PINK POLKADOT",
    "I06": "LUNCH BAG BLACK SKULL",
    "I07": "SET OF 3 CAKE TINS PANTRY DESIGN",
    "I08": "REGENCY CAKESTAND 3 TIER",
    "I09": "PACK OF 72 RETROSPOT CAKE CASES",
    "I10": "PAPER CHAIN KIT 50'S CHRISTMAS",
    "I11": "ALARM CLOCK BAKELIKE RED",
    "I12": "ALARM CLOCK BAKELIKE GREEN",
}


@pytest.fixture
def retail_files(tmp_path: Path) -> dict[str, object]:
    """products.csv and a transactions file: customer 100 has 10 items, 200 has 5, 300 has 4
    (too few), plus a cancelled row and a row with no customer."""
    folder = tmp_path / "data" / "online_retail_uci"
    folder.mkdir(parents=True)
    lines = [PRODUCTS_HEADER] + [f"{c},{d},1,1,1,1.0" for c, d in PRODUCTS.items()]
    (folder / "products.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    codes = list(PRODUCTS)
    histories = {"100": codes[:10], "200": codes[2:7], "300": codes[:4]}
    rows = [RETAIL_HEADER]
    for customer, items in histories.items():
        for n, code in enumerate(items):
            stamp = f"2011-01-{n + 1:02d} 10:00:00"
            rows.append(f"5{n}{customer},{code},{PRODUCTS[code]},2,{stamp},1.5,{customer},UK")
            # a repeat purchase later must not create a second search
            rows.append(
                f"6{n}{customer},{code},{PRODUCTS[code]},1,2011-03-01 10:00:00,1.5,{customer},UK"
            )
    rows.append(f"C1,I01,{PRODUCTS['I01']},-1,2011-01-01 09:00:00,1.5,300,UK")
    rows.append(f"7,I01,{PRODUCTS['I01']},1,2011-01-01 09:00:00,1.5,,UK")
    path = folder / "transactions.csv.gz"
    path.write_bytes(gzip.compress(("\n".join(rows) + "\n").encode()))
    return {"folder": folder, "transactions": path, "rows": rows}


FASHION_ROWS = [
    # gender, articleType, colour, usage, title
    ("Men", "Tshirts", "Black", "Casual", "Nike Men Black Tshirts"),
    ("Men", "Tshirts", "White", "Sports", "Puma Men White Tshirts"),
    ("Men", "Tshirts", "Blue", "Casual", "Adidas Men Blue Tshirts"),
    ("Men", "Tshirts", "Black", "Sports", "Puma Men Black Sports Tshirts"),
    ("Men", "Tshirts", "Red", "Casual", "Nike Men Red Tshirts"),
    ("Men", "Tshirts", "Grey", "Casual", "Lee Men Grey Tshirts"),
    ("Women", "Tshirts", "Pink", "Casual", "Nike Women Pink Tshirts"),
    ("Women", "Tshirts", "Black", "Sports", "Puma Women Black Tshirts"),
    ("Women", "Tshirts", "White", "Casual", "Lee Women White Tshirts"),
    ("Women", "Tshirts", "Blue", "Casual", "Adidas Women Blue Tshirts"),
    ("Women", "Tshirts", "Red", "Sports", "Nike Women Red Tshirts"),
    ("Unisex", "Watches", "Black", "Casual", "Fastrack Unisex Black Watches"),
    ("Men", "Watches", "Silver", "Formal", "Titan Men Silver Watches"),
    ("Men", "Watches", "Black", "Casual", "Casio Men Black Watches"),
    ("Men", "Watches", "Brown", "Formal", "Titan Men Brown Watches"),
    ("Men", "Watches", "Gold", "Formal", "Titan Men Gold Watches"),
    ("Women", "Watches", "Gold", "Formal", "Titan Women Gold Watches"),
    ("Women", "Watches", "White", "Casual", "Fastrack Women White Watches"),
    ("Women", "Watches", "Pink", "Casual", "Fastrack Women Pink Watches"),
    ("Women", "Watches", "Silver", "Formal", "Casio Women Silver Watches"),
    ("Women", "Watches", "Black", "Casual", "Casio Women Black Watches"),
    ("Men", "Casual Shoes", "Brown", "Casual", "Woodland Men Brown Casual Shoes"),
    ("Men", "Casual Shoes", "Black", "Casual", "Puma Men Black Casual Shoes"),
    ("Men", "Casual Shoes", "White", "Casual", "Nike Men White Casual Shoes"),
    ("Men", "Casual Shoes", "Blue", "Casual", "Adidas Men Blue Casual Shoes"),
    ("Men", "Casual Shoes", "Grey", "Casual", "Lee Men Grey Casual Shoes"),
    ("Women", "Casual Shoes", "Pink", "Casual", "Nike Women Pink Casual Shoes"),
    ("Women", "Casual Shoes", "White", "Casual", "Puma Women White Casual Shoes"),
    ("Women", "Casual Shoes", "Black", "Casual", "Adidas Women Black Casual Shoes"),
    ("Women", "Casual Shoes", "Red", "Casual", "Catwalk Women Red Casual Shoes"),
    ("Women", "Casual Shoes", "Blue", "Casual", "Catwalk Women Blue Casual Shoes"),
]


@pytest.fixture
def fashion_folder(tmp_path: Path) -> Path:
    """A tiny fashion catalog (31 items, 3 article types) with 8x8 photos."""
    folder = tmp_path / "data" / "fashion_product_images_small_subset"
    (folder / "images").mkdir(parents=True)
    header = (
        "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,"
        "productDisplayName,image"
    )
    lines = [header]
    for n, (gender, kind, colour, usage, title) in enumerate(FASHION_ROWS):
        item = 10000 + n
        Image.new("RGB", (8, 8), (n * 8, 0, 0)).save(folder / "images" / f"{item}.jpg")
        lines.append(
            f"{item},{gender},Apparel,Topwear,{kind},{colour},Fall,2011,{usage},{title},"
            f"images/{item}.jpg"
        )
    (folder / "styles.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def build_toy_population(
    *,
    n_items: int = 120,
    dim: int = 16,
    devices: int = 30,
    train: int = 20,
    test: int = 5,
    shift: float = 1.2,
    noise: float = 0.3,
    seed: int = 0,
):
    """Random unit item vectors; each search's query is its clicked item's vector plus a
    shift shared by all queries (which misleads the base ranking) and noise. An adapter
    can learn to undo the shift."""
    rng = np.random.default_rng(seed)
    items = l2_normalize(rng.standard_normal((n_items, dim)))
    offset = shift * l2_normalize(rng.standard_normal(dim))
    popular = rng.permutation(n_items)[: n_items // 4]

    def search(item: int) -> SearchExample:
        query = l2_normalize(items[item] + offset + noise * rng.standard_normal(dim))
        top = top_items(query[None, :], items, 10)[0]
        return SearchExample(query, impression(top, item), item)

    population = []
    for d in range(devices):
        chosen = rng.choice(popular, size=train + test, replace=True)
        searches = [search(int(i)) for i in chosen]
        population.append(DeviceData(f"toy-{d}", searches[:train], searches[train:]))
    return Population(
        "toy",
        [f"item-{i}" for i in range(n_items)],
        items,
        population,
        train_popularity(population, n_items),
    )


@pytest.fixture
def toy_population():
    return build_toy_population
