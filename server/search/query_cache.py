"""An LRU cache of encoded query texts: real search traffic repeats its popular queries.

Keys are (text tower version, normalized text, precision): a new query model or precision
never reads another's vectors. Normalizing collapses runs of whitespace and, for a tower
whose tokenizer ignores case, lower-cases (``QueryEncoder`` checks its tokenizer), so every
spelling that encodes to the same vector shares one entry. The cache is cleared when the
service swaps to a new model version. Hits and misses are counted for ``/metrics``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

CacheKey = tuple[str, str, str]


def normalize_query(text: str, *, lower: bool) -> str:
    joined = " ".join(text.split())
    return joined.lower() if lower else joined


class QueryVectorCache:
    """Thread-safe LRU of read-only query vectors, at most ``capacity`` entries."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[CacheKey, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def get(self, key: CacheKey) -> np.ndarray | None:
        with self._lock:
            vector = self._entries.get(key)
            if vector is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return vector

    def put(self, key: CacheKey, vector: np.ndarray) -> None:
        vector = np.array(vector, dtype=np.float32)
        vector.setflags(write=False)
        with self._lock:
            self._entries[key] = vector
            self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        """Drop every entry (a model swap); the hit and miss counts go on."""
        with self._lock:
            self._entries.clear()
