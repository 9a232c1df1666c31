"""Opening a catalog store: its per-item columns and its vector file, checked against the
database (``server.search.catalog_vectors`` describes the file), and the index filled.

Everything is read in chunks: a million items' strings, tuples or stacked vectors would
otherwise pass through (and stay in) the process's heap.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from server.search.catalog_db import CatalogDB, CatalogStoreError
from server.search.catalog_rows import CatalogRows
from server.search.catalog_vectors import (
    CatalogVectors,
    remove_other_vector_files,
    vector_file,
    write_vector_file,
)
from server.search.vector_index import VectorIndex

LOAD_CHUNK = 65536


def load_columns(db: CatalogDB, rows: CatalogRows, photo_folder: Path) -> Counter[str]:
    """Every item's key, category and price into ``rows``; how many items name each photo
    of ``photo_folder`` (the only photos the store removes)."""
    rows.reserve(db.count())
    cursor, folder = db.columns(), str(photo_folder)
    photos: Counter[str] = Counter()
    while batch := cursor.fetchmany(LOAD_CHUNK):
        keys, categories, prices, names = zip(*batch, strict=True)
        rows.append(np.array(keys, dtype=np.int64), categories, prices, np.zeros(len(keys)))
        photos.update(p for p in names if p is not None and os.path.dirname(p) == folder)
    return photos


def load_vectors(db: CatalogDB, index: VectorIndex, rows: CatalogRows) -> CatalogVectors:
    """Map the store's vector file (written from the database when it is missing or does
    not match it), read newer vectors into its overlay, set ``rows.refs`` and add every
    vector to ``index`` in key order."""
    path = vector_file(db.folder, db.store_id())
    keys = rows.keys[: rows.n]
    mapped = _matching(path, index.dim, keys)
    if mapped is None:
        stored = _write_from_db(db, index, rows, path)
    else:
        stored, refs = mapped
        newer = keys[len(refs) :]
        for chunk_keys, vectors in _vector_chunks(db, index.dim, after_key=stored.last_key):
            _check_keys(db, chunk_keys, newer[: len(chunk_keys)])
            newer = newer[len(chunk_keys) :]
            refs = np.concatenate([refs, stored.add(vectors)])
        _check_keys(db, newer, newer[:0])
        rows.refs[: rows.n] = refs
        for part in _parts(rows.n):
            index.add(stored.read(rows.refs[part]), keys[part])
    remove_other_vector_files(db.folder, keep=path)
    return stored


def write_vectors(path: Path, keys: np.ndarray, vectors: np.ndarray) -> CatalogVectors:
    """A vector file of ``keys`` (ascending) and their ``vectors``, mapped."""
    chunks = ((keys[part], vectors[part]) for part in _parts(len(keys)))
    write_vector_file(path, len(keys), vectors.shape[1], chunks)
    remove_other_vector_files(path.parent, keep=path)
    return CatalogVectors(path)


def fold_vectors(stored: CatalogVectors, rows: CatalogRows) -> CatalogVectors:
    """Write the live rows' vectors (file and overlay) to a new vector file replacing
    ``stored``'s, drop the dead rows; the new file, mapped."""
    live = rows.live_rows()
    keys, refs = rows.keys[live], rows.refs[live]
    chunks = ((keys[part], stored.read(refs[part])) for part in _parts(len(live)))
    folded = CatalogVectors(write_vector_file(stored.path, len(live), stored.dim, chunks))
    rows.compacted(np.arange(len(live), dtype=np.int64))
    return folded


def _parts(n: int) -> Iterator[slice]:
    """Slices of ``LOAD_CHUNK`` rows covering ``n``."""
    return (slice(start, min(n, start + LOAD_CHUNK)) for start in range(0, n, LOAD_CHUNK))


def _matching(path: Path, dim: int, keys: np.ndarray) -> tuple[CatalogVectors, np.ndarray] | None:
    """The mapped file and the file rows of the ``keys`` it covers, if it holds every one of
    them (a key's vector never changes, so a row with the key is the item's vector)."""
    try:
        stored = CatalogVectors(path)
    except (OSError, ValueError):
        return None
    covered = keys[keys <= stored.last_key]
    refs = np.searchsorted(stored.keys, covered)
    if stored.dim != dim or not np.array_equal(stored.keys[refs], covered):
        return None
    return stored, refs.astype(np.int64)


def _write_from_db(
    db: CatalogDB, index: VectorIndex, rows: CatalogRows, path: Path
) -> CatalogVectors:
    def checked() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        done = 0
        for keys, vectors in _vector_chunks(db, index.dim):
            _check_keys(db, keys, rows.keys[done : done + len(keys)])
            index.add(vectors, keys)
            done += len(keys)
            yield keys, vectors

    write_vector_file(path, rows.n, index.dim, checked())
    rows.refs[: rows.n] = np.arange(rows.n)
    return CatalogVectors(path)


def _vector_chunks(
    db: CatalogDB, dim: int, *, after_key: int = -1
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    cursor = db.vectors(after_key=after_key)
    while batch := cursor.fetchmany(LOAD_CHUNK):
        keys, blobs = zip(*batch, strict=True)
        for key, blob in zip(keys, blobs, strict=True):
            if len(blob) != 4 * dim:
                raise CatalogStoreError(f"{db.folder}: the item of key {key} has a bad vector")
        vectors = np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(keys), dim)
        yield np.array(keys, dtype=np.int64), vectors


def _check_keys(db: CatalogDB, found: np.ndarray, expected: np.ndarray) -> None:
    if not np.array_equal(found, expected):
        raise CatalogStoreError(f"{db.folder}: the items changed while the store was read")
