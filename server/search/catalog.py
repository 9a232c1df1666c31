"""The catalog the search service serves, kept consistent with its FAISS index on disk.

Items (id, title, category, price, photo) and their vectors live in memory beside the
``VectorIndex``; every upsert or delete changes both under one write lock. On disk::

    <store>/CURRENT           names the live snapshot, e.g. "g000003" (replaced atomically)
    <store>/g000003/          items.jsonl, vectors.npy, index.faiss, index.json, meta.json
    <store>/g000003.journal   upserts and deletes since that snapshot, one JSON line each
    <store>/photos/           photos given by upserts, named by their sha256

A change is appended to the journal and fsynced before it is applied or acknowledged; the
journal is folded into a new snapshot (written aside, then ``CURRENT`` swapped) every
``journal_max_ops`` changes. Opening a store loads the snapshot and replays its journal, so a
restart (or a crash) never loses an acknowledged change. Each upsert gets a fresh int64 key.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from server.search.vector_index import IndexKind, VectorIndex

log = logging.getLogger(__name__)

CURRENT = "CURRENT"
ITEMS_FILE = "items.jsonl"
VECTORS_FILE = "vectors.npy"
META_FILE = "meta.json"
PHOTOS_DIR = "photos"
_LOCK_FILE = "LOCK"


class CatalogStoreError(RuntimeError):
    """The catalog store on disk is missing, damaged or inconsistent."""


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


class RWLock:
    """Many readers or one writer; a waiting writer blocks new readers."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting_writers = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._waiting_writers:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._waiting_writers += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._waiting_writers -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class _Rows:
    """Row-aligned arrays (vectors, keys, category codes, prices) with O(1) append/remove."""

    def __init__(self, dim: int) -> None:
        self.n = 0
        self.vectors = np.zeros((0, dim), dtype=np.float32)
        self.keys = np.zeros(0, dtype=np.int64)
        self.codes = np.zeros(0, dtype=np.int32)
        self.prices = np.zeros(0, dtype=np.float32)
        self.ids: list[str] = []
        self.row_of: dict[int, int] = {}

    def append(self, key: int, item_id: str, vector: np.ndarray, code: int, price: float) -> None:
        if self.n == len(self.keys):
            self._grow(max(16, 2 * self.n))
        i = self.n
        self.vectors[i], self.keys[i], self.codes[i], self.prices[i] = vector, key, code, price
        self.ids.append(item_id)
        self.row_of[key] = i
        self.n += 1

    def remove(self, key: int) -> None:
        """Swap the last row into the removed one."""
        i, last = self.row_of.pop(key), self.n - 1
        if i != last:
            for arr in (self.vectors, self.keys, self.codes, self.prices):
                arr[i] = arr[last]
            self.ids[i] = self.ids[last]
            self.row_of[int(self.keys[i])] = i
        self.ids.pop()
        self.n -= 1

    def _grow(self, capacity: int) -> None:
        def grown(arr: np.ndarray) -> np.ndarray:
            out = np.zeros((capacity, *arr.shape[1:]), dtype=arr.dtype)
            out[: self.n] = arr[: self.n]
            return out

        self.vectors, self.keys = grown(self.vectors), grown(self.keys)
        self.codes, self.prices = grown(self.codes), grown(self.prices)


class Catalog:
    """Items, their vectors and the FAISS index, persisted together under ``folder``."""

    def __init__(
        self,
        folder: Path,
        index: VectorIndex,
        *,
        generation: int = 1,
        journal_max_ops: int = 1000,
        exact_max_items: int = 20000,
    ) -> None:
        self.folder = Path(folder)
        self.index = index
        self.generation = generation
        self.journal_max_ops = journal_max_ops
        self.exact_max_items = exact_max_items
        self.lock = RWLock()
        self._items: dict[str, Item] = {}
        self._key_of: dict[str, int] = {}
        self._rows = _Rows(index.dim)
        self._category_codes: dict[str, int] = {}
        self._next_key = 0
        self._journal_ops = 0
        self._journal: Any = None
        self._lock_file: Any = None

    # -- building and opening -------------------------------------------------------------

    @classmethod
    def create(
        cls,
        folder: Path,
        items: Sequence[Item],
        vectors: np.ndarray,
        *,
        encoder_version: str,
        kind: IndexKind = "auto",
        exact_max_items: int = 20000,
        nlist: int = 0,
        nprobe: int = 8,
        min_recall: float = 0.95,
        recall_queries: int = 500,
        query_vectors: np.ndarray | None = None,
        journal_max_ops: int = 1000,
        memory_mb: float = 512.0,
        pq_bytes: int = 48,
        refine_factor: int = 10,
    ) -> Catalog:
        """Build the index over ``items`` and write a fresh store to ``folder`` (replacing it)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if len(items) != len(vectors):
            raise ValueError(f"{len(items)} items but {len(vectors)} vectors")
        _check_unique([it.id for it in items])
        lock_file = _acquire_lock(Path(folder))
        try:
            index = VectorIndex.build(
                vectors,
                np.arange(len(items), dtype=np.int64),
                encoder_version=encoder_version,
                kind=kind,
                exact_max_items=exact_max_items,
                nlist=nlist,
                nprobe=nprobe,
                min_recall=min_recall,
                n_recall_queries=recall_queries,
                queries=query_vectors,
                memory_mb=memory_mb,
                pq_bytes=pq_bytes,
                refine_factor=refine_factor,
            )
            catalog = cls(
                folder, index, journal_max_ops=journal_max_ops, exact_max_items=exact_max_items
            )
            for key, (item, vector) in enumerate(zip(items, vectors, strict=True)):
                catalog._put(item, vector, key)
            catalog._next_key = len(items)
            catalog._write_snapshot(_live_generation(folder) + 1)
        except BaseException:
            lock_file.close()
            raise
        catalog._lock_file = lock_file
        return catalog

    @classmethod
    def open(
        cls, folder: Path, *, journal_max_ops: int = 1000, exact_max_items: int = 20000
    ) -> Catalog:
        """Load the live snapshot and replay its journal (holding the store's lock)."""
        folder = Path(folder)
        pointer = folder / CURRENT
        if not pointer.is_file():
            raise FileNotFoundError(f"no catalog store at {folder} (run `fedsearch index`)")
        lock_file = _acquire_lock(folder)
        try:
            catalog = cls._load(folder, journal_max_ops, exact_max_items)
        except BaseException:
            lock_file.close()
            raise
        catalog._lock_file = lock_file
        return catalog

    @classmethod
    def _load(cls, folder: Path, journal_max_ops: int, exact_max_items: int) -> Catalog:
        generation = _live_generation(folder)
        snapshot = folder / f"g{generation:06d}"
        index = VectorIndex.load(snapshot)
        meta = json.loads((snapshot / META_FILE).read_text(encoding="utf-8"))
        catalog = cls(
            folder,
            index,
            generation=generation,
            journal_max_ops=journal_max_ops,
            exact_max_items=exact_max_items,
        )
        vectors = np.load(snapshot / VECTORS_FILE)
        with (snapshot / ITEMS_FILE).open(encoding="utf-8") as fh:
            records = [json.loads(line) for line in fh]
        if len(records) != len(vectors):
            raise CatalogStoreError(f"{snapshot}: {len(records)} items but {len(vectors)} vectors")
        for record, vector in zip(records, vectors, strict=True):
            key = record.pop("key")
            catalog._put(Item(**record), vector, key)
        catalog._next_key = int(meta["next_key"])
        catalog._replay_journal()
        catalog._check_index()
        return catalog

    # -- reading --------------------------------------------------------------------------

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

    def upsert(self, items: Sequence[Item], vectors: np.ndarray) -> None:
        """Add or replace items (journaled and fsynced first, then index and catalog)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(items), self.dim)
        _check_unique([it.id for it in items])
        with self.lock.write():
            keys = list(range(self._next_key, self._next_key + len(items)))
            self._log(
                {
                    "op": "upsert",
                    "items": [
                        {**it.to_json(), "key": k, "vector": _b64(v)}
                        for it, k, v in zip(items, keys, vectors, strict=True)
                    ],
                }
            )
            self._apply_upsert(items, vectors, keys)
            self._maybe_compact()

    def delete(self, item_ids: Sequence[str]) -> None:
        """Remove items; ``KeyError`` naming the first unknown id (nothing is removed then)."""
        with self.lock.write():
            for item_id in item_ids:
                if item_id not in self._items:
                    raise KeyError(item_id)
            self._log({"op": "delete", "ids": list(item_ids)})
            self._apply_delete(item_ids)
            self._maybe_compact()

    def save_photo(self, data: bytes, suffix: str) -> str:
        """Store upserted photo bytes (content-addressed, atomic); return their path."""
        folder = self.folder / PHOTOS_DIR
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{hashlib.sha256(data).hexdigest()}{suffix}"
        if not path.is_file():
            _write_atomic(path, data)
        return str(path)

    def compact(self) -> None:
        with self.lock.write():
            self._write_snapshot(self.generation + 1)

    def close(self) -> None:
        """Close the journal and release the store for another process."""
        self._close_journal()
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    # -- internals ------------------------------------------------------------------------

    def _put(self, item: Item, vector: np.ndarray, key: int) -> None:
        code = self._category_codes.setdefault(item.category.casefold(), len(self._category_codes))
        price = np.nan if item.price is None else item.price
        self._rows.append(key, item.id, vector, code, price)
        self._items[item.id] = item
        self._key_of[item.id] = key

    def _drop(self, item_id: str) -> int:
        key = self._key_of.pop(item_id)
        del self._items[item_id]
        self._rows.remove(key)
        return key

    def _apply_upsert(self, items: Sequence[Item], vectors: np.ndarray, keys: list[int]) -> None:
        old = [self._drop(it.id) for it in items if it.id in self._items]
        if old:
            self.index.remove(np.array(old))
        for item, vector, key in zip(items, vectors, keys, strict=True):
            self._put(item, vector, key)
        self.index.add(vectors, np.array(keys))
        self._next_key = max(self._next_key, max(keys) + 1)

    def _apply_delete(self, item_ids: Sequence[str]) -> None:
        self.index.remove(np.array([self._drop(i) for i in item_ids]))

    def _close_journal(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None

    def _journal_path(self, generation: int) -> Path:
        return self.folder / f"g{generation:06d}.journal"

    def _log(self, record: dict[str, Any]) -> None:
        if self._journal is None:
            self._journal = self._journal_path(self.generation).open("a", encoding="utf-8")
        self._journal.write(json.dumps(record) + "\n")
        self._journal.flush()
        os.fsync(self._journal.fileno())
        self._journal_ops += 1

    def _maybe_compact(self) -> None:
        if self._journal_ops >= self.journal_max_ops:
            self._write_snapshot(self.generation + 1)

    def _replay_journal(self) -> None:
        path = self._journal_path(self.generation)
        if not path.is_file():
            return
        lines = path.read_bytes().split(b"\n")
        complete, tail = lines[:-1], lines[-1]
        if tail:
            log.warning("%s: dropping a torn last record (%d bytes)", path, len(tail))
            with path.open("r+b") as fh:
                fh.truncate(sum(len(line) + 1 for line in complete))
        for number, line in enumerate(complete, 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CatalogStoreError(f"{path}:{number}: damaged journal record ({exc})") from exc
            self._replay(record)
            self._journal_ops += 1

    def _replay(self, record: dict[str, Any]) -> None:
        if record["op"] == "delete":
            self._apply_delete(record["ids"])
            return
        entries = [dict(e) for e in record["items"]]
        keys = [e.pop("key") for e in entries]
        vectors = np.stack([_unb64(e.pop("vector"), self.dim) for e in entries])
        self._apply_upsert([Item(**e) for e in entries], vectors, keys)

    def _check_index(self) -> None:
        if self.index.ntotal == len(self._items):
            return
        log.warning(
            "index holds %d vectors but the catalog %d items: rebuilding the index",
            self.index.ntotal,
            len(self._items),
        )
        info = self.index.info
        n = self._rows.n
        self.index = VectorIndex.build(
            self._rows.vectors[:n],
            self._rows.keys[:n],
            encoder_version=info.encoder_version,
            kind=info.kind,  # type: ignore[arg-type]
            nlist=info.nlist,
            nprobe=max(1, info.nprobe),
            pq_bytes=info.pq_bytes or 48,
            refine_factor=info.refine_factor,
        )

    def _write_snapshot(self, generation: int) -> None:
        """Write all state aside, then swap ``CURRENT`` to it and drop older generations."""
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"g{generation:06d}"
        staging = self.folder / f".staging-{name}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        n = self._rows.n
        with (staging / ITEMS_FILE).open("w", encoding="utf-8") as fh:
            for row in range(n):
                item = self._items[self._rows.ids[row]]
                fh.write(json.dumps({**item.to_json(), "key": int(self._rows.keys[row])}) + "\n")
        np.save(staging / VECTORS_FILE, self._rows.vectors[:n])
        self.index.save(staging)
        meta = {"next_key": self._next_key, "items": n, "written_at": time.time()}
        (staging / META_FILE).write_text(json.dumps(meta, indent=2), "utf-8")
        _fsync_tree(staging)
        os.replace(staging, self.folder / name)
        _write_atomic(self.folder / CURRENT, name.encode())
        self._close_journal()
        self.generation, self._journal_ops = generation, 0
        for path in self.folder.glob("g[0-9]*"):
            if path.name not in (name, self._journal_path(generation).name):
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink()


def _acquire_lock(folder: Path) -> Any:
    """An exclusive advisory lock on the store: one writer process at a time."""
    folder.mkdir(parents=True, exist_ok=True)
    handle = (folder / _LOCK_FILE).open("a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise CatalogStoreError(
            f"catalog store {folder} is in use by another process (a running `fedsearch serve`?)"
        ) from None
    return handle


def _live_generation(folder: Path) -> int:
    pointer = folder / CURRENT
    return int(pointer.read_text(encoding="utf-8").strip()[1:]) if pointer.is_file() else 0


def _check_unique(ids: Sequence[str]) -> None:
    seen: set[str] = set()
    for item_id in ids:
        if item_id in seen:
            raise ValueError(f"item id {item_id!r} appears twice")
        seen.add(item_id)


def _b64(vector: np.ndarray) -> str:
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")


def _unb64(text: str, dim: int) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f4").reshape(dim).astype(np.float32)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        with path.open("rb") as fh:
            os.fsync(fh.fileno())
