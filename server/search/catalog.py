"""The catalog the search service serves: items, their vectors and the FAISS index.

Items (id, title, category, price, photo) and their vectors live in memory beside the
``VectorIndex``; every upsert or delete changes both under one write lock, after it is
committed to the store's SQLite database (``server.search.catalog_db``), so an
acknowledged change survives a crash at any moment. Opening a store reads the items back
and adds their vectors to the stored, trained index. Each upsert gets fresh int64 keys.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from server.search.catalog_db import (
    PHOTOS_DIR,
    CatalogDB,
    CatalogStoreError,
    acquire_store_lock,
    item_row,
    row_record,
)
from server.search.catalog_rows import CatalogRows, RWLock
from server.search.index_kinds import DEFAULT_INDEX_OPTIONS, IndexOptions
from server.search.vector_index import VectorIndex

__all__ = ["Catalog", "CatalogStoreError", "Filters", "Item", "PhotoUpload"]

LOAD_CHUNK = 65536


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


class Catalog:
    """Items, their vectors and the FAISS index, persisted in the database of ``db``."""

    def __init__(self, db: CatalogDB, index: VectorIndex, *, exact_max_items: int = 20000):
        self.db = db
        self.index = index
        self.exact_max_items = exact_max_items
        self.lock = RWLock()
        self._items: dict[str, Item] = {}
        self._key_of: dict[str, int] = {}
        self._rows = CatalogRows(index.dim)
        self._category_codes: dict[str, int] = {}
        self._photo_refs: Counter[str] = Counter()
        self._next_key = 0

    # -- building and opening -------------------------------------------------------------

    @classmethod
    def create(
        cls,
        folder: Path,
        items: Sequence[Item],
        vectors: np.ndarray,
        *,
        encoder_version: str,
        options: IndexOptions = DEFAULT_INDEX_OPTIONS,
        query_vectors: np.ndarray | None = None,
    ) -> Catalog:
        """Build the index over ``items`` and write a fresh store to ``folder`` (replacing
        the one there in one step)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if len(items) != len(vectors):
            raise ValueError(f"{len(items)} items but {len(vectors)} vectors")
        _check_unique([it.id for it in items])
        lock_file = acquire_store_lock(Path(folder))
        try:
            index = VectorIndex.build(
                vectors,
                np.arange(len(items), dtype=np.int64),
                encoder_version=encoder_version,
                options=options,
                queries=query_vectors,
            )
            rows = [
                item_row(it.to_json(), key, v)
                for key, (it, v) in enumerate(zip(items, vectors, strict=True))
            ]
            db = CatalogDB.write_new(Path(folder), rows, index, lock_file)
        except BaseException:
            lock_file.close()
            raise
        catalog = cls(db, index, exact_max_items=options.exact_max_items)
        catalog._rows.reserve(len(items))
        for key, (item, vector) in enumerate(zip(items, vectors, strict=True)):
            catalog._put(item, vector, key)
        catalog._next_key = len(items)
        catalog._remove_unused_photos(catalog._stored_photos())
        return catalog

    @classmethod
    def open(cls, folder: Path, *, exact_max_items: int = 20000) -> Catalog:
        """Load the store's items and index (holding the store's lock)."""
        db = CatalogDB.open(Path(folder))
        try:
            catalog = cls(db, db.empty_index(), exact_max_items=exact_max_items)
            catalog._load_rows()
        except BaseException:
            db.close()
            raise
        catalog._remove_unused_photos(catalog._stored_photos())
        return catalog

    def _load_rows(self) -> None:
        """Items into memory, then their vectors into the index in chunks (a list and a
        stacked copy of a million vectors would stay in the process's heap)."""
        self._rows.reserve(self.db.count())
        for row in self.db.rows():
            record, key, vector = row_record(row)
            if vector.shape != (self.dim,):
                raise CatalogStoreError(f"{self.folder}: item {record['id']!r} has a bad vector")
            self._put(Item(**record), vector, key)
        n, rows = self._rows.n, self._rows
        for start in range(0, n, LOAD_CHUNK):
            chunk = slice(start, min(n, start + LOAD_CHUNK))
            self.index.add(rows.vectors[chunk], rows.keys[chunk])
        self._next_key = int(rows.keys[:n].max()) + 1 if n else 0

    # -- reading --------------------------------------------------------------------------

    @property
    def folder(self) -> Path:
        return self.db.folder

    @property
    def encoder_version(self) -> str:
        return self.index.info.encoder_version

    @property
    def dim(self) -> int:
        return self.index.dim

    def __len__(self) -> int:
        return len(self._items)

    def get(self, item_id: str) -> Item | None:
        return self._items.get(item_id)

    def items(self) -> list[Item]:
        with self.lock.read():
            return list(self._items.values())

    def vectors_of(self, item_ids: Sequence[str]) -> np.ndarray:
        with self.lock.read():
            rows = [self._rows.row_of[self._key_of[i]] for i in item_ids]
            return self._rows.vectors[rows].copy()

    def all_vectors(self) -> tuple[list[str], np.ndarray]:
        with self.lock.read():
            n = self._rows.n
            return list(self._rows.ids), self._rows.vectors[:n].copy()

    def search(
        self, query: np.ndarray, n: int, filters: Filters | None = None
    ) -> tuple[list[Item], np.ndarray, np.ndarray]:
        """Top-``n`` items for one query vector: (items, scores, item vectors), best first.

        A filter that leaves at most ``exact_max_items`` items is searched exactly over
        those rows; a wider one restricts the FAISS search to the allowed keys.
        """
        with self.lock.read():
            rows = self._candidate_rows(np.asarray(query, dtype=np.float32), n, filters)
            found = [(r, s) for r, s in rows if r >= 0]
            idx = np.array([r for r, _ in found], dtype=np.int64)
            items = [self._items[self._rows.ids[r]] for r in idx]
            scores = np.array([s for _, s in found], dtype=np.float32)
            return items, scores, self._rows.vectors[idx].copy()

    def _candidate_rows(
        self, query: np.ndarray, n: int, filters: Filters | None
    ) -> list[tuple[int, float]]:
        allowed = None if filters is None or not filters.active else self._filter_rows(filters)
        if allowed is not None and len(allowed) <= self.exact_max_items:
            scores = self._rows.vectors[allowed] @ query
            top = np.argsort(-scores, kind="stable")[:n]
            return [(int(allowed[i]), float(scores[i])) for i in top]
        allowed_keys = None if allowed is None else self._rows.keys[allowed]
        scores, keys = self.index.search(query, n, allowed_keys, self._vectors_of_keys)
        return [
            (self._rows.row_of[int(k)] if k >= 0 else -1, float(s))
            for s, k in zip(scores[0], keys[0], strict=True)
        ]

    def _vectors_of_keys(self, keys: np.ndarray) -> np.ndarray:
        return self._rows.vectors[[self._rows.row_of[int(k)] for k in keys]]

    def _filter_rows(self, filters: Filters) -> np.ndarray:
        n = self._rows.n
        mask = np.ones(n, dtype=bool)
        if filters.categories:
            codes = [self._category_codes.get(c.casefold(), -1) for c in filters.categories]
            mask &= np.isin(self._rows.codes[:n], codes)
        prices = self._rows.prices[:n]
        if filters.price_min is not None:
            mask &= prices >= filters.price_min
        if filters.price_max is not None:
            mask &= prices <= filters.price_max
        return np.flatnonzero(mask)

    # -- changing -------------------------------------------------------------------------

    def upsert(
        self,
        items: Sequence[Item],
        vectors: np.ndarray,
        photos: Sequence[PhotoUpload | None] | None = None,
    ) -> None:
        """Add or replace items: committed to the database first, then index and catalog.

        ``photos[i]``, when given, is stored and becomes item ``i``'s photo. A photo of the
        store that no item names any more (replaced or deleted) is removed.
        """
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(items), self.dim)
        _check_unique([it.id for it in items])
        with self.lock.write():
            items = [
                it if upload is None else _with_photo(it, self._save_photo(upload))
                for it, upload in zip(items, photos or [None] * len(items), strict=True)
            ]
            keys = list(range(self._next_key, self._next_key + len(items)))
            rows = [
                item_row(it.to_json(), k, v) for it, k, v in zip(items, keys, vectors, strict=True)
            ]
            self.db.replace_items(rows)
            old = [self._items[it.id].photo for it in items if it.id in self._items]
            self._apply_upsert(items, vectors, keys)
            self._remove_unused_photos(old)

    def delete(self, item_ids: Sequence[str]) -> None:
        """Remove items; ``KeyError`` naming the first unknown id (nothing is removed then)."""
        with self.lock.write():
            for item_id in item_ids:
                if item_id not in self._items:
                    raise KeyError(item_id)
            self.db.delete_items(item_ids)
            old = [self._items[i].photo for i in item_ids]
            self.index.remove(np.array([self._drop(i) for i in item_ids]))
            self._remove_unused_photos(old)

    def compact(self) -> None:
        """Fold the database's write-ahead log into its file."""
        with self.lock.write():
            self.db.checkpoint()

    def close(self) -> None:
        """Close the database and release the store for another process."""
        self.db.close()

    # -- internals ------------------------------------------------------------------------

    def _put(self, item: Item, vector: np.ndarray, key: int) -> None:
        code = self._category_codes.setdefault(item.category.casefold(), len(self._category_codes))
        price = np.nan if item.price is None else item.price
        self._rows.append(key, item.id, vector, code, price)
        self._items[item.id] = item
        self._key_of[item.id] = key
        if item.photo is not None:
            self._photo_refs[item.photo] += 1

    def _drop(self, item_id: str) -> int:
        key = self._key_of.pop(item_id)
        item = self._items.pop(item_id)
        self._rows.remove(key)
        if item.photo is not None:
            self._photo_refs[item.photo] -= 1
            if self._photo_refs[item.photo] <= 0:
                del self._photo_refs[item.photo]
        return key

    def _apply_upsert(self, items: Sequence[Item], vectors: np.ndarray, keys: list[int]) -> None:
        old = [self._drop(it.id) for it in items if it.id in self._items]
        if old:
            self.index.remove(np.array(old))
        for item, vector, key in zip(items, vectors, keys, strict=True):
            self._put(item, vector, key)
        self.index.add(vectors, np.array(keys))
        self._next_key = max(self._next_key, max(keys) + 1)

    @property
    def _photo_folder(self) -> Path:
        return self.folder / PHOTOS_DIR

    def _save_photo(self, upload: PhotoUpload) -> str:
        """Store photo bytes (content-addressed, written atomically); return their path."""
        self._photo_folder.mkdir(parents=True, exist_ok=True)
        path = self._photo_folder / f"{hashlib.sha256(upload.data).hexdigest()}{upload.suffix}"
        if not path.is_file():
            _write_atomic(path, upload.data)
        return str(path)

    def _stored_photos(self) -> list[str]:
        folder = self._photo_folder
        return [str(p) for p in folder.iterdir()] if folder.is_dir() else []

    def _remove_unused_photos(self, candidates: Sequence[str | None]) -> None:
        """Delete those of ``candidates`` that lie in the store's photo folder and that no
        item names (left by a delete, a replacement, or a crash before a commit)."""
        for photo in candidates:
            if photo is None or self._photo_refs.get(photo):
                continue
            path = Path(photo)
            if path.parent == self._photo_folder:
                path.unlink(missing_ok=True)


def _with_photo(item: Item, photo: str) -> Item:
    return Item(**{**item.to_json(), "photo": photo})


def _check_unique(ids: Sequence[str]) -> None:
    seen: set[str] = set()
    for item_id in ids:
        if item_id in seen:
            raise ValueError(f"item id {item_id!r} appears twice")
        seen.add(item_id)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
