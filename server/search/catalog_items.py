"""What a catalog holds and answers: items, photos given with an upsert, search filters,
and a search's hits."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Item:
    """One product served by the search service.

    ``price`` is None when unknown; ``price_synthetic`` marks a generated demo price (the
    fashion catalog has none, see ``server.search.catalog_build.synthetic_price``).
    ``photo`` is a file path, or None for a text-only item.
    """

    id: str
    title: str
    category: str = ""
    price: float | None = None
    price_synthetic: bool = False
    photo: str | None = None
    attributes: dict[str, str] = field(default_factory=dict, hash=False)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PhotoUpload:
    """Photo bytes given with an upsert, stored in the store's photo folder."""

    data: bytes
    suffix: str


@dataclass(frozen=True)
class Filters:
    """Candidate restrictions: categories (case-insensitive) and an inclusive price range.

    A price bound excludes items without a price.
    """

    categories: tuple[str, ...] = ()
    price_min: float | None = None
    price_max: float | None = None

    @property
    def active(self) -> bool:
        return bool(self.categories) or self.price_min is not None or self.price_max is not None


Hits = tuple[list[Item], np.ndarray, np.ndarray]
"""A search's (items, scores, item vectors), best first."""
