"""Loading the UCI Online Retail data: clean purchases, the product catalogue, histories.

A clean purchase (as in the data's README) has a ``CustomerID``, an ``InvoiceNo`` not
starting with "C", ``Quantity`` > 0 and ``UnitPrice`` > 0; on top of that, rows whose
``StockCode`` is not a product (fees, postage, gift vouchers, ``DCGS*``, ``PADS``) are
dropped. Every skipped row is counted once, under the first reason it meets.
"""

from __future__ import annotations

import logging
import math
import string
from collections import Counter, defaultdict
from collections.abc import Iterable
from datetime import datetime
from operator import attrgetter
from pathlib import Path
from typing import TypeVar

import numpy as np

from common.data.fashion import read_csv_records
from common.data.records import LoadReport, Product, Purchase

NON_PRODUCT_CODES = frozenset(
    {"POST", "DOT", "C2", "M", "BANK CHARGES", "AMAZONFEE", "CRUK", "B", "D", "S", "PADS"}
)
NON_PRODUCT_PREFIXES = ("GIFT_0001_", "DCGS")
TRANSACTION_COLUMNS = (
    "InvoiceNo",
    "StockCode",
    "Quantity",
    "InvoiceDate",
    "UnitPrice",
    "CustomerID",
)
TRANSACTIONS_FILE = "transactions.csv.gz"
PRODUCTS_FILE = "products.csv"
PRODUCT_COLUMNS = ("StockCode", "Description", "median_unit_price")
_Entry = TypeVar("_Entry")
_MISSING = frozenset({"", "na", "nan"})

log = logging.getLogger(__name__)


def is_product_code(code: str) -> bool:
    """False for empty codes, fees/postage/manual codes, gift vouchers, ``DCGS*`` and ``PADS``."""
    upper = code.upper()
    return (
        bool(code) and upper not in NON_PRODUCT_CODES and not upper.startswith(NON_PRODUCT_PREFIXES)
    )


def product_type_word(description: str) -> str:
    """The product-type word of a description: its last word, outer punctuation removed."""
    words = description.split()
    if not words:
        return ""
    return words[-1].strip(string.punctuation) or words[-1]


def load_retail_transactions(path: str | Path) -> tuple[list[Purchase], LoadReport]:
    """Read the clean product purchases of a transactions ``.csv`` or ``.csv.gz`` file.

    Skip reasons, in the order checked: ``wrong_field_count``, ``bad_number`` (Quantity or
    UnitPrice), ``bad_date``, ``missing_customer_id``, ``cancellation``,
    ``non_positive_quantity``, ``non_positive_price``, ``non_product_code``.
    """
    path = Path(path)
    report = LoadReport(source=str(path))
    purchases: list[Purchase] = []
    for record in read_csv_records(path, TRANSACTION_COLUMNS, report):
        result = _parse_purchase(record)
        if isinstance(result, str):
            report.skip(result)
        else:
            purchases.append(result)
    report.rows_kept = len(purchases)
    return purchases, report


def _parse_purchase(record: dict[str, str]) -> Purchase | str:
    """The purchase in one row, or the reason to skip it."""
    try:
        quantity = int(record["Quantity"])
        unit_price = float(record["UnitPrice"])
    except ValueError:
        return "bad_number"
    if not math.isfinite(unit_price):
        return "bad_number"
    try:
        timestamp = datetime.fromisoformat(record["InvoiceDate"])
    except ValueError:
        return "bad_date"
    customer = record["CustomerID"].removesuffix(".0")
    if customer.lower() in _MISSING:
        return "missing_customer_id"
    if record["InvoiceNo"].upper().startswith("C"):
        return "cancellation"
    if quantity <= 0:
        return "non_positive_quantity"
    if unit_price <= 0:
        return "non_positive_price"
    if not is_product_code(record["StockCode"]):
        return "non_product_code"
    return Purchase(
        customer, record["StockCode"], record["InvoiceNo"], timestamp, quantity, unit_price
    )


def load_retail_products(path: str | Path) -> tuple[list[Product], LoadReport]:
    """Read the product catalogue (``products.csv``): one ``Product`` per product code.

    ``title`` is the description, ``category`` its product-type word, ``price`` the
    ``median_unit_price`` (None where empty). Skip reasons: ``wrong_field_count``,
    ``missing_id``, ``missing_title``, ``duplicate_id``, ``non_product_code``, ``bad_number``.
    """
    path = Path(path)
    report = LoadReport(source=str(path))
    products: list[Product] = []
    seen: set[str] = set()
    for record in read_csv_records(path, PRODUCT_COLUMNS, report):
        result = _parse_product(record, seen)
        if isinstance(result, str):
            report.skip(result)
            continue
        seen.add(result.id)
        products.append(result)
    report.rows_kept = len(products)
    return products, report


def _parse_product(record: dict[str, str], seen: set[str]) -> Product | str:
    """The product in one catalogue row, or the reason to skip it."""
    code, title = record["StockCode"], record["Description"]
    if not code:
        return "missing_id"
    if not title:
        return "missing_title"
    if code in seen:
        return "duplicate_id"
    if not is_product_code(code):
        return "non_product_code"
    price: float | None = None
    if record["median_unit_price"]:
        try:
            price = float(record["median_unit_price"])
        except ValueError:
            return "bad_number"
        if not math.isfinite(price):
            return "bad_number"
    return Product(
        id=code, title=title, image_path=None, category=product_type_word(title), price=price
    )


def products_from_transactions(path: str | Path) -> tuple[list[Product], LoadReport]:
    """The product table of a transactions file that comes without ``products.csv``, built
    as the shipped one was: one ``Product`` per product code described in any row (bought,
    cancelled or without a customer), sorted by code. ``title``: its most frequent
    description (ties: the alphabetically first); ``category``: the title's product-type word;
    ``price``: the median unit price of its clean purchases (None if it has none).

    Skip reasons (rows that name no product): ``wrong_field_count``, ``non_product_code``,
    ``missing_title`` (no description and not a clean purchase). A code that is never
    described gets no product, as a catalogue row without a description is skipped.
    """
    path = Path(path)
    report = LoadReport(source=f"{path} (products derived from the transactions)")
    descriptions: dict[str, Counter[str]] = defaultdict(Counter)
    prices: dict[str, list[float]] = defaultdict(list)
    for record in read_csv_records(path, (*TRANSACTION_COLUMNS, "Description"), report):
        code, description = record["StockCode"], record["Description"]
        if not is_product_code(code):
            report.skip("non_product_code")
            continue
        if description:
            descriptions[code][description] += 1
        purchase = _parse_purchase(record)
        if not isinstance(purchase, str):
            prices[code].append(purchase.unit_price)
        elif not description:
            report.skip("missing_title")
    products = []
    for code, counts in sorted(descriptions.items()):
        title = min(counts, key=lambda text: (-counts[text], text))
        price = float(np.median(prices[code])) if prices[code] else None
        products.append(
            Product(
                id=code,
                title=title,
                image_path=None,
                category=product_type_word(title),
                price=price,
            )
        )
    report.rows_kept = len(products)
    return products, report


def load_retail_catalog(
    transactions: str | Path, products: str | Path | None = None
) -> tuple[list[Product], LoadReport]:
    """The product catalogue of a transactions file: the ``products`` file (by default
    ``products.csv`` next to the transactions, used when it exists), or else the table
    derived from the transactions themselves (``products_from_transactions``), logged.

    A ``products`` path given explicitly must exist.
    """
    transactions = Path(transactions)
    table = transactions.parent / PRODUCTS_FILE if products is None else Path(products)
    if table.is_file():
        return load_retail_products(table)
    if products is not None:
        raise FileNotFoundError(f"product table not found: {table}")
    if not transactions.is_file():
        raise FileNotFoundError(
            f"Online Retail data not found: neither {table} nor the transactions file "
            f"{transactions} (to derive the products from) exists"
        )
    derived, report = products_from_transactions(transactions)
    log.info(
        "Online Retail: no %s next to %s; derived %d products from the transactions "
        "(most frequent description, median clean unit price per product code)",
        PRODUCTS_FILE,
        transactions.name,
        len(derived),
    )
    return derived, report


def customer_histories(purchases: Iterable[Purchase], min_items: int = 5) -> dict[str, list[str]]:
    """Each customer's distinct items in order of first purchase (stable for equal times).

    Only customers with at least ``min_items`` distinct items are kept.
    """
    firsts: dict[str, dict[str, None]] = {}
    for purchase in sorted(purchases, key=attrgetter("timestamp")):
        firsts.setdefault(purchase.customer_id, {}).setdefault(purchase.item_id, None)
    return {c: list(items) for c, items in firsts.items() if len(items) >= min_items}


def split_history(
    items: list[_Entry], holdout_fraction: float = 0.2
) -> tuple[list[_Entry], list[_Entry]]:
    """Split a history into (train, held out): the last ``holdout_fraction`` (at least 1).

    The held-out count is ``floor(len(items) * holdout_fraction)``, at least 1, and at least
    one item always stays in train.
    """
    if not 0 < holdout_fraction < 1:
        raise ValueError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
    if len(items) < 2:
        raise ValueError(f"a history needs at least 2 items to split, got {len(items)}")
    n_held = max(1, math.floor(len(items) * holdout_fraction + 1e-9))
    return list(items[:-n_held]), list(items[-n_held:])
