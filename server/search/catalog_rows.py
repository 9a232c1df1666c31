"""In-memory parts of the catalog: a readers-writer lock and its per-item columns."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
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


def room_for(rows: int) -> int:
    """A capacity for ``rows`` with an eighth (at least 16) to spare."""
    return rows + max(16, rows // 8)


def grown(arr: np.ndarray, used: int, capacity: int) -> np.ndarray:
    """A copy of ``arr``'s first ``used`` rows in an array of ``capacity`` rows."""
    out = np.zeros((capacity, *arr.shape[1:]), dtype=arr.dtype)
    out[:used] = arr[:used]
    return out


class CatalogRows:
    """Per-item columns in key order (keys, category codes, prices, vector references and
    a live flag): what filters and the key lookups need, 25 bytes an item.

    Keys only grow (every upsert gets fresh ones), so appending keeps the rows sorted and a
    key's row is found by binary search. A deleted or replaced item's row is marked dead
    and stays until ``compacted``. The columns grow by an eighth (``reserve`` sizes them
    exactly for a known count): doubling gave a million-item catalog room for 2,097,152
    rows at its first upsert past 1,048,576.
    """

    def __init__(self) -> None:
        self.category_codes: dict[str, int] = {}
        self.n = 0
        self.live = 0
        self.keys = np.zeros(0, dtype=np.int64)
        self.codes = np.zeros(0, dtype=np.int32)
        self.prices = np.zeros(0, dtype=np.float32)
        self.refs = np.zeros(0, dtype=np.int64)
        self.alive = np.zeros(0, dtype=bool)

    def _columns(self) -> tuple[np.ndarray, ...]:
        return self.keys, self.codes, self.prices, self.refs, self.alive

    def append(
        self,
        keys: np.ndarray,
        categories: Sequence[str],
        prices: Sequence[float | None],
        refs: np.ndarray,
    ) -> None:
        """Add rows for ``keys``, ascending and above every key held (a missing price is
        NaN: no price bound holds for it)."""
        m = len(keys)
        codes = [
            self.category_codes.setdefault(c.casefold(), len(self.category_codes))
            for c in categories
        ]
        if m and (self.n and keys[0] <= self.keys[self.n - 1] or np.any(np.diff(keys) <= 0)):
            raise ValueError("catalog keys must be appended in ascending order")
        if self.n + m > len(self.keys):
            self.reserve(room_for(self.n + m))
        new = slice(self.n, self.n + m)
        self.keys[new], self.codes[new], self.refs[new] = keys, codes, refs
        self.prices[new] = [np.nan if p is None else p for p in prices]
        self.alive[new] = True
        self.n += m
        self.live += m

    def codes_of(self, categories: Sequence[str]) -> list[int]:
        """Category codes (case-insensitive; -1 for a category no item has had)."""
        return [self.category_codes.get(c.casefold(), -1) for c in categories]

    def rows_of(self, keys: np.ndarray) -> np.ndarray:
        """The rows of live ``keys``; ``KeyError`` naming the first key not held."""
        keys = np.asarray(keys, dtype=np.int64).reshape(-1)
        rows = np.searchsorted(self.keys[: self.n], keys)
        held = rows < self.n
        held[held] &= self.keys[rows[held]] == keys[held]
        held[held] &= self.alive[rows[held]]
        if not held.all():
            raise KeyError(int(keys[~held][0]))
        return rows

    def kill(self, rows: np.ndarray) -> None:
        self.alive[rows] = False
        self.live = int(self.alive[: self.n].sum())

    def live_rows(self) -> np.ndarray:
        return np.flatnonzero(self.alive[: self.n])

    def compacted(self, refs: np.ndarray) -> None:
        """Drop the dead rows; ``refs``: the live rows' new vector references."""
        keep = self.live_rows()
        for arr in self._columns():
            arr[: len(keep)] = arr[keep]
        self.n = self.live = len(keep)
        self.refs[: self.n] = refs

    def reserve(self, capacity: int) -> None:
        """Room for ``capacity`` rows (at least the ``n`` held)."""
        capacity = max(capacity, self.n)
        self.keys, self.codes, self.prices, self.refs, self.alive = (
            grown(arr, self.n, capacity) for arr in self._columns()
        )
