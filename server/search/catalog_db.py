"""The catalog's durable half: one SQLite database (standard library, WAL mode).

Layout of ``<store>/catalog.sqlite3``::

    items(id TEXT PRIMARY KEY, key INTEGER UNIQUE, title, category, price, price_synthetic,
          photo, attributes JSON, vector BLOB)   -- vector: float32 little-endian
    meta(name TEXT PRIMARY KEY, value TEXT)      -- index info, the trained, emptied FAISS
                                                 -- index (base64), a random store id

Every upsert or delete batch is one transaction, committed with ``synchronous=FULL``
before the caller acknowledges it, so a crash at any moment leaves the last committed
state: SQLite's write-ahead log gives what the old journal + snapshot folders + pointer
re-implemented by hand. The FAISS index is not stored with its vectors: opening a store
loads the trained (empty) index and adds the items' vectors. The database is the source of
truth; the memory-mapped vector file the catalog serves from (``catalog_vectors``, named by
the store id) is derived from it and written again whenever it does not match.

A rebuild (``write_new``) writes a complete database beside the live one and renames it
into place after the live one's write-ahead log has been checkpointed and removed, so a
crash leaves either the old store or the new one. Photos given by upserts live in
``<store>/photos/`` (named by their sha256); a photo no item names any more is removed.

Another backend with the same methods (PostgreSQL, for replicas sharing one catalog)
could take this class's place; see the README.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import sqlite3
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from common.files import fsync_path
from server.search.vector_index import IndexInfo, VectorIndex

DB_FILE = "catalog.sqlite3"
PHOTOS_DIR = "photos"
_LOCK_FILE = "LOCK"
MAX_PARAMETERS = 500  # bound parameters per statement, under SQLite's oldest limit (999)
_NEW_DB = ".catalog.sqlite3.new"
_SCHEMA = """
CREATE TABLE items (
    id TEXT PRIMARY KEY, key INTEGER NOT NULL UNIQUE, title TEXT NOT NULL,
    category TEXT NOT NULL, price REAL, price_synthetic INTEGER NOT NULL, photo TEXT,
    attributes TEXT NOT NULL, vector BLOB NOT NULL
);
CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_RECORD_COLUMNS = "id, key, title, category, price, price_synthetic, photo, attributes"
_COLUMNS = f"{_RECORD_COLUMNS}, vector"


class CatalogStoreError(RuntimeError):
    """The catalog store on disk is missing, damaged, inconsistent or in use."""


Row = tuple[Any, ...]  # the ``items`` columns in ``_COLUMNS`` order


def item_row(record: dict[str, Any], key: int, vector: np.ndarray) -> Row:
    """A table row from an item's fields (``Item.to_json()``), its key and its vector."""
    return (
        record["id"],
        key,
        record["title"],
        record["category"],
        record["price"],
        int(record["price_synthetic"]),
        record["photo"],
        json.dumps(record["attributes"]),
        np.asarray(vector, dtype="<f4").tobytes(),
    )


def row_record(row: Row) -> tuple[int, dict[str, Any]]:
    """(key, item fields) of a row of the ``_RECORD_COLUMNS``."""
    item_id, key, title, category, price, synthetic, photo, attributes = row
    record = {
        "id": item_id,
        "title": title,
        "category": category,
        "price": price,
        "price_synthetic": bool(synthetic),
        "photo": photo,
        "attributes": json.loads(attributes),
    }
    return int(key), record


class CatalogDB:
    """The open database of one store; the caller serializes writers (the catalog's lock)."""

    def __init__(self, folder: Path, connection: sqlite3.Connection, lock_file: Any) -> None:
        self.folder = folder
        self._db = connection
        self._lock_file = lock_file
        self._read_lock = threading.Lock()

    @classmethod
    def open(cls, folder: Path) -> CatalogDB:
        """Open the store's database (holding the store's lock)."""
        if not (folder / DB_FILE).is_file():
            raise FileNotFoundError(f"no catalog store at {folder} (run `fedsearch index`)")
        lock_file = acquire_store_lock(folder)
        try:
            connection = _connect(folder / DB_FILE)
        except BaseException:
            lock_file.close()
            raise
        return cls(folder, connection, lock_file)

    @classmethod
    def write_new(
        cls, folder: Path, rows: Sequence[Row], index: VectorIndex, lock_file: Any
    ) -> CatalogDB:
        """Replace the store with one holding ``rows`` and ``index``'s trained structure."""
        staging = folder / _NEW_DB
        staging.unlink(missing_ok=True)
        with _closing(sqlite3.connect(staging)) as db:
            db.executescript(_SCHEMA)
            with db:
                db.executemany(f"INSERT INTO items ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)", rows)
                meta = {**_index_meta(index), "store_id": uuid.uuid4().hex}
                db.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
        fsync_path(staging)
        _retire_live_database(folder)
        os.replace(staging, folder / DB_FILE)
        fsync_path(folder)
        return cls(folder, _connect(folder / DB_FILE), lock_file)

    def count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM items").fetchone()[0])

    def store_id(self) -> str:
        """A random id of this database, new with each rebuild (names its vector file);
        given to a store written before there was one."""
        found = self._db.execute("SELECT value FROM meta WHERE name = 'store_id'").fetchone()
        if found is not None:
            return str(found[0])
        with self._db:
            self._db.execute("INSERT INTO meta VALUES ('store_id', ?)", (uuid.uuid4().hex,))
        return self.store_id()

    def columns(self) -> sqlite3.Cursor:
        """Rows (key, category, price, photo) of every item, by key."""
        return self._db.execute("SELECT key, category, price, photo FROM items ORDER BY key")

    def vectors(self, *, after_key: int = -1) -> sqlite3.Cursor:
        """Rows (key, float32 vector bytes) of the items with keys above ``after_key``, by
        key."""
        return self._db.execute(
            "SELECT key, vector FROM items WHERE key > ? ORDER BY key", (after_key,)
        )

    def records(self, keys: Sequence[int]) -> dict[int, dict[str, Any]]:
        """Item fields by key, for those of ``keys`` held."""
        return dict(map(row_record, self._rows_where("key", keys)))

    def records_by_id(self, item_ids: Sequence[str]) -> dict[str, tuple[int, dict[str, Any]]]:
        """(key, item fields) by id, for those of ``item_ids`` held."""
        return {r[0]: row_record(r) for r in self._rows_where("id", item_ids)}

    def _rows_where(self, column: str, values: Sequence[Any]) -> list[Row]:
        """Record rows whose ``column`` is one of ``values``, ``MAX_PARAMETERS`` at a time."""
        rows: list[Row] = []
        for start in range(0, len(values), MAX_PARAMETERS):
            chunk = list(values[start : start + MAX_PARAMETERS])
            marks = ",".join("?" * len(chunk))
            with self._read_lock:
                rows += self._db.execute(
                    f"SELECT {_RECORD_COLUMNS} FROM items WHERE {column} IN ({marks})", chunk
                ).fetchall()
        return rows

    def iter_records(self) -> Iterator[dict[str, Any]]:
        """Every item's fields by key, read on a connection of its own (one snapshot)."""
        with _closing(sqlite3.connect(self.folder / DB_FILE)) as db:
            for row in db.execute(f"SELECT {_RECORD_COLUMNS} FROM items ORDER BY key"):
                yield row_record(row)[1]

    def empty_index(self) -> VectorIndex:
        """The stored index: trained (IVF centroids), holding no vectors yet."""
        meta = dict(self._db.execute("SELECT name, value FROM meta"))
        try:
            info = IndexInfo(**json.loads(meta["index_info"]))
            raw = np.frombuffer(base64.b64decode(meta["index"]), dtype=np.uint8)
        except (KeyError, ValueError, TypeError) as exc:
            raise CatalogStoreError(f"{self.folder / DB_FILE}: damaged index record") from exc
        index = faiss.deserialize_index(raw)
        if info.kind != "exact":  # every IVF kind (flat, fp16, sq8, pq)
            faiss.extract_index_ivf(index).nprobe = info.nprobe
        return VectorIndex(index, info)

    def replace_items(self, rows: Sequence[Row]) -> None:
        """Upsert rows (by id) in one committed transaction."""
        with self._db:
            self._db.executemany("DELETE FROM items WHERE id = ?", [(r[0],) for r in rows])
            self._db.executemany(f"INSERT INTO items ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)", rows)

    def delete_items(self, item_ids: Sequence[str]) -> None:
        with self._db:
            self._db.executemany("DELETE FROM items WHERE id = ?", [(i,) for i in item_ids])

    def checkpoint(self) -> None:
        """Fold the write-ahead log into the database file (SQLite also does it by itself)."""
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        """Close the database and release the store for another process."""
        if self._lock_file is not None:
            self._db.close()
            self._lock_file.close()
            self._lock_file = None


def acquire_store_lock(folder: Path) -> Any:
    """An exclusive advisory lock on the store: one serving process at a time."""
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


def _connect(path: Path) -> sqlite3.Connection:
    """WAL mode, full fsync at each commit; shared by the service's threads under a lock."""
    try:
        db = sqlite3.connect(path, check_same_thread=False, isolation_level="DEFERRED")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("SELECT count(*) FROM items").fetchone()
    except sqlite3.DatabaseError as exc:
        raise CatalogStoreError(f"{path}: not a readable catalog database ({exc})") from exc
    return db


def _retire_live_database(folder: Path) -> None:
    """Checkpoint and remove the live database's write-ahead log, so that a new database
    renamed into its place never meets a log of the old one."""
    live = folder / DB_FILE
    if live.is_file():
        with _closing(sqlite3.connect(live)) as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    for suffix in ("-wal", "-shm"):
        (folder / f"{DB_FILE}{suffix}").unlink(missing_ok=True)


def _index_meta(index: VectorIndex) -> dict[str, str]:
    empty = faiss.clone_index(index.index)
    empty.reset()
    blob = faiss.serialize_index(empty).tobytes()
    return {
        "index_info": json.dumps(asdict(index.info)),
        "index": base64.b64encode(blob).decode("ascii"),
    }


@contextmanager
def _closing(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    try:
        yield db
    finally:
        db.close()
