"""Typed records shared by the loaders, the devices and the server."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path


class DataFormatError(ValueError):
    """A data file is not in the expected format (e.g. a required column is missing)."""


@dataclass(frozen=True)
class Product:
    """One catalogue item.

    ``category`` is the fashion ``articleType`` or, for retail, the product-type word (the
    last word of the description). ``attributes`` holds the other non-empty descriptive
    fields; ``price`` is None where the source has none.
    """

    id: str
    title: str
    image_path: Path | None
    category: str
    attributes: dict[str, str] = field(default_factory=dict, hash=False)
    price: float | None = None

    @property
    def photo(self) -> Path:
        """``image_path`` of an item that has one; ``ValueError`` for an item without."""
        if self.image_path is None:
            raise ValueError(f"item {self.id} has no photo")
        return self.image_path


@dataclass(frozen=True)
class Purchase:
    """One clean product line of an invoice: a customer bought ``quantity`` of ``item_id``."""

    customer_id: str
    item_id: str
    invoice: str
    timestamp: datetime
    quantity: int
    unit_price: float


@dataclass
class LoadReport:
    """How many rows a loader read and kept, and why it skipped the others.

    Each skipped row is counted once, under one reason, so
    ``rows_read == rows_kept + n_skipped``.
    """

    source: str
    rows_read: int = 0
    rows_kept: int = 0
    skipped: Counter[str] = field(default_factory=Counter)

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def skip(self, reason: str) -> None:
        """Count one skipped row under ``reason``."""
        self.skipped[reason] += 1

    def summary(self) -> str:
        """One line, e.g. ``x.csv: read 10 rows, kept 8, skipped 2 (duplicate_id: 2)``."""
        text = f"{self.source}: read {self.rows_read:,} rows, kept {self.rows_kept:,}"
        if not self.skipped:
            return text
        reasons = ", ".join(f"{r}: {n:,}" for r, n in self.skipped.most_common())
        return f"{text}, skipped {self.n_skipped:,} ({reasons})"


MAX_CATEGORICAL_VALUES = 60  # more distinct values than this: not a category (ids, names)


def categorical_attributes(products: Sequence[Product]) -> dict[str, list[str]]:
    """Each categorical attribute's value for every product ("" where it has none): the
    attributes with at most ``MAX_CATEGORICAL_VALUES`` distinct values in the catalog."""
    values: dict[str, set[str]] = defaultdict(set)
    for product in products:
        for name, value in product.attributes.items():
            values[name].add(value)
    names = sorted(n for n, v in values.items() if len(v) <= MAX_CATEGORICAL_VALUES)
    return {n: [p.attributes.get(n, "") for p in products] for n in names}
