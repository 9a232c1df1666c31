"""The catalog the search service serves: items, their vectors and the FAISS index.

The store's SQLite database (``server.search.catalog_db``) holds the items and is the
source of truth: every upsert or delete is committed there first, under the catalog's write
lock, so an acknowledged change survives a crash at any moment. In memory: the
``VectorIndex``, per-item columns (category codes, prices: the filters) and the item
vectors, memory-mapped from a file derived from the database (``catalog_vectors``) plus an
in-memory overlay of those upserted since it was written, folded in by ``compact`` or
when it grows past an eighth of the items. Item records are read from the database by key
for a query's hits. Opening a store adds the vectors to the stored, trained index. Each
upsert gets fresh int64 keys, so a key's vector never changes.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.files import atomic_write
from server.search.catalog_db import (
    PHOTOS_DIR,
    CatalogDB,
    CatalogStoreError,
    acquire_store_lock,
    item_row,
)
from server.search.catalog_items import Filters, Hits, Item, PhotoUpload
from server.search.catalog_load import fold_vectors, load_columns, load_vectors, write_vectors
from server.search.catalog_rows import CatalogRows, RWLock
from server.search.catalog_vectors import CatalogVectors, vector_file
from server.search.index_kinds import DEFAULT_INDEX_OPTIONS, IndexOptions
from server.search.vector_index import VectorIndex

__all__ = ["Catalog", "CatalogStoreError", "Filters", "Hits", "Item", "PhotoUpload"]

_NOTHING = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32))

OVERLAY_MIN_ROWS = 65536  # upserted vectors held in memory before a fold, at least


class Catalog:
    """Items, their vectors and the FAISS index, persisted in the database of ``db``;
    ``rows``: the per-item columns, ``vectors``: the mapped vector file and its overlay."""

    def __init__(
        self,
        db: CatalogDB,
        index: VectorIndex,
        vectors: CatalogVectors,
        rows: CatalogRows,
        *,
        exact_max_items: int = 20000,
    ) -> None:
        self.db = db
        self.index = index
        self.vectors = vectors
        self.exact_max_items = exact_max_items
        self.lock = RWLock()
        self._rows = rows
        self._photo_refs: Counter[str] = Counter()
        self._next_key = max(int(rows.keys[rows.n - 1]) if rows.n else -1, vectors.last_key) + 1

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
        keys = np.arange(len(items), dtype=np.int64)
        lock_file = acquire_store_lock(Path(folder))
        try:
            index = VectorIndex.build(
                vectors, keys, encoder_version=encoder_version, options=options,
                queries=query_vectors,
            )  # fmt: skip
            table = [
                item_row(it.to_json(), int(key), v)
                for key, it, v in zip(keys, items, vectors, strict=True)
            ]
            db = CatalogDB.write_new(Path(folder), table, index, lock_file)
        except BaseException:
            lock_file.close()
            raise
        try:
            stored = write_vectors(vector_file(db.folder, db.store_id()), keys, vectors)
        except BaseException:
            db.close()
            raise
        rows = CatalogRows()
        rows.reserve(len(items))
        rows.append(keys, [it.category for it in items], [it.price for it in items], keys)
        catalog = cls(db, index, stored, rows, exact_max_items=options.exact_max_items)
        catalog._count_photos([it.photo for it in items], 1)
        catalog._remove_unused_photos(catalog._stored_photos())
        return catalog

    @classmethod
    def open(cls, folder: Path, *, exact_max_items: int = 20000) -> Catalog:
        """Load the store's columns, vectors and index (holding the store's lock)."""
        db = CatalogDB.open(Path(folder))
        try:
            index, rows = db.empty_index(), CatalogRows()
            photos = load_columns(db, rows, db.folder / PHOTOS_DIR)
            stored = load_vectors(db, index, rows)
        except BaseException:
            db.close()
            raise
        catalog = cls(db, index, stored, rows, exact_max_items=exact_max_items)
        catalog._photo_refs = photos
        catalog._remove_unused_photos(catalog._stored_photos())
        catalog._fold_large_overlay()
        return catalog

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
        return self._rows.live

    def get(self, item_id: str) -> Item | None:
        with self.lock.read():
            found = self.db.records_by_id([item_id]).get(item_id)
        return None if found is None else Item(**found[1])

    def items(self) -> list[Item]:
        return list(self.iter_items())

    def iter_items(self) -> Iterator[Item]:
        """Every item, by key, read from one snapshot of the database in chunks."""
        return (Item(**record) for record in self.db.iter_records())

    def vectors_of(self, item_ids: Sequence[str]) -> np.ndarray:
        """The items' vectors; ``KeyError`` naming the first unknown id."""
        with self.lock.read():
            found = self.db.records_by_id(item_ids)
            missing = [i for i in item_ids if i not in found]
            if missing:
                raise KeyError(missing[0])
            rows = self._rows.rows_of(np.array([found[i][0] for i in item_ids], dtype=np.int64))
            return self.vectors.gather(self._rows.refs[rows])

    def all_vectors(self) -> tuple[list[str], np.ndarray]:
        """(ids, vectors) of every item, by key."""
        with self.lock.read():
            ids = [record["id"] for record in self.db.iter_records()]
            return ids, self.vectors.read(self._rows.refs[self._rows.live_rows()])

    def search(self, query: np.ndarray, n: int, filters: Filters | None = None) -> Hits:
        """Top-``n`` items for one query vector: (items, scores, item vectors), best first.

        A filter that leaves at most ``exact_max_items`` items is searched exactly over
        those rows; a wider one restricts the FAISS search to the allowed keys. Only the
        hits' records are read from the database.
        """
        return self.search_many(np.asarray(query)[None, :], [n], [filters])[0]

    def search_many(
        self, queries: np.ndarray, n: Sequence[int], filters: Sequence[Filters | None]
    ) -> list[Hits]:
        """``search`` for each row of ``queries`` under one read of the store: unfiltered
        rows wanting the same ``n`` in one index search, every hit's record in one
        database read, every hit's vector in one gather."""
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        with self.lock.read():
            found = self._candidate_rows(queries, n, filters)
            rows = np.concatenate([r for r, _ in found])
            keys = self._rows.keys[rows].tolist()
            records = self.db.records(keys)
            vectors = self.vectors.gather(self._rows.refs[rows])
        out, start = [], 0
        for hit_rows, scores in found:
            end = start + len(hit_rows)
            out.append(([Item(**records[k]) for k in keys[start:end]], scores, vectors[start:end]))
            start = end
        return out

    def _candidate_rows(
        self, queries: np.ndarray, n: Sequence[int], filters: Sequence[Filters | None]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        found: list[tuple[np.ndarray, np.ndarray]] = [_NOTHING] * len(queries)
        plain: dict[int, list[int]] = {}  # n -> unfiltered rows wanting n
        for i, (want, f) in enumerate(zip(n, filters, strict=True)):
            if f is None or not f.active:
                plain.setdefault(want, []).append(i)
            else:
                found[i] = self._filtered_rows(queries[i], want, f)
        for want, rows in plain.items():
            scores, keys = self.index.search(queries[rows], want, None, self._vectors_of_keys)
            for j, i in enumerate(rows):
                hit = keys[j] >= 0
                found[i] = self._rows.rows_of(keys[j][hit]), scores[j][hit].astype(np.float32)
        return found

    def _filtered_rows(
        self, query: np.ndarray, n: int, filters: Filters
    ) -> tuple[np.ndarray, np.ndarray]:
        allowed = self._filter_rows(filters)
        if len(allowed) <= self.exact_max_items:
            scores = self.vectors.gather(self._rows.refs[allowed]) @ query
            top = np.argsort(-scores, kind="stable")[:n]
            return allowed[top], scores[top].astype(np.float32)
        scores, keys = self.index.search(query, n, self._rows.keys[allowed], self._vectors_of_keys)
        hit = keys[0] >= 0
        return self._rows.rows_of(keys[0][hit]), scores[0][hit].astype(np.float32)

    def _vectors_of_keys(self, keys: np.ndarray) -> np.ndarray:
        return self.vectors.gather(self._rows.refs[self._rows.rows_of(keys)])

    def _filter_rows(self, filters: Filters) -> np.ndarray:
        n = self._rows.n
        mask = self._rows.alive[:n].copy()
        if filters.categories:
            mask &= np.isin(self._rows.codes[:n], self._rows.codes_of(filters.categories))
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
    ) -> list[Item]:
        """Add or replace items: committed to the database first, then index and catalog;
        returns the items replaced.

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
            old = self.db.records_by_id([it.id for it in items])
            keys = np.arange(self._next_key, self._next_key + len(items), dtype=np.int64)
            self.db.replace_items(
                [
                    item_row(it.to_json(), int(k), v)
                    for it, k, v in zip(items, keys, vectors, strict=True)
                ]
            )
            replaced = self._forget([old[it.id] for it in items if it.id in old])
            refs = self.vectors.add(vectors)
            self._rows.append(keys, [it.category for it in items], [it.price for it in items], refs)
            self.index.add(vectors, keys)
            self._next_key += len(items)
            self._count_photos([it.photo for it in items], 1)
            self._remove_unused_photos([it.photo for it in replaced])
            self._fold_large_overlay()
            return replaced

    def delete(self, item_ids: Sequence[str]) -> list[Item]:
        """Remove items and return them; ``KeyError`` naming the first unknown id (nothing
        is removed then)."""
        with self.lock.write():
            found = self.db.records_by_id(item_ids)
            for item_id in item_ids:
                if item_id not in found:
                    raise KeyError(item_id)
            self.db.delete_items(item_ids)
            deleted = self._forget(list(found.values()))
            self._remove_unused_photos([it.photo for it in deleted])
            return deleted

    def compact(self) -> None:
        """Fold the database's write-ahead log into its file, and the overlay and the dead
        rows into a new vector file."""
        with self.lock.write():
            self.db.checkpoint()
            if self.vectors.overlay_rows or self._rows.live < self._rows.n:
                self.vectors = fold_vectors(self.vectors, self._rows)

    def close(self) -> None:
        """Close the database and release the store for another process."""
        self.db.close()

    # -- internals ------------------------------------------------------------------------

    def _forget(self, found: Sequence[tuple[int, dict[str, Any]]]) -> list[Item]:
        """Take items (key, fields) out of the index and the columns; the items."""
        if not found:
            return []
        keys = np.array([key for key, _ in found], dtype=np.int64)
        self._rows.kill(self._rows.rows_of(keys))
        self.index.remove(keys)
        gone = [Item(**record) for _, record in found]
        self._count_photos([it.photo for it in gone], -1)
        return gone

    def _fold_large_overlay(self) -> None:
        if self.vectors.overlay_rows > max(OVERLAY_MIN_ROWS, self._rows.live // 8):
            self.vectors = fold_vectors(self.vectors, self._rows)

    def _count_photos(self, photos: Sequence[str | None], step: int) -> None:
        """Count (``step`` 1) or uncount (-1) the items naming each photo of the store."""
        folder = str(self._photo_folder)
        for photo in photos:
            if photo is not None and os.path.dirname(photo) == folder:
                self._photo_refs[photo] += step
                if self._photo_refs[photo] <= 0:
                    del self._photo_refs[photo]

    @property
    def _photo_folder(self) -> Path:
        return self.folder / PHOTOS_DIR

    def _save_photo(self, upload: PhotoUpload) -> str:
        """Store photo bytes (content-addressed, written atomically); return their path."""
        self._photo_folder.mkdir(parents=True, exist_ok=True)
        path = self._photo_folder / f"{hashlib.sha256(upload.data).hexdigest()}{upload.suffix}"
        if not path.is_file():
            atomic_write(path, upload.data)
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
