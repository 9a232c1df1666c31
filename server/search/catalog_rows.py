"""In-memory parts of the catalog: a readers-writer lock and row-aligned arrays."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np


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


class CatalogRows:
    """Row-aligned arrays (vectors, keys, category codes, prices) with O(1) append/remove.

    They grow by an eighth (``reserve`` sizes them exactly for a known count): doubling
    gave a million-item catalog room for 2,097,152 rows at its first upsert past 1,048,576
    (1.5 GB more of vectors, copied while the old array is still held).
    """

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
            self.reserve(self.n + max(16, self.n // 8))
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

    def reserve(self, capacity: int) -> None:
        """Room for ``capacity`` rows (at least the ``n`` held)."""
        capacity = max(capacity, self.n)

        def grown(arr: np.ndarray) -> np.ndarray:
            out = np.zeros((capacity, *arr.shape[1:]), dtype=arr.dtype)
            out[: self.n] = arr[: self.n]
            return out

        self.vectors, self.keys = grown(self.vectors), grown(self.keys)
        self.codes, self.prices = grown(self.codes), grown(self.prices)
