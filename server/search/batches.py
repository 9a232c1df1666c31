"""Taking work off a queue in batches, for the search service's worker threads."""

from __future__ import annotations

import queue
from typing import TypeVar

_Work = TypeVar("_Work")


def next_batch(waiting: queue.Queue[_Work | None], max_batch: int) -> list[_Work] | None:
    """Wait for one item, then take whatever else is waiting, up to ``max_batch`` in all;
    None once the stop mark (None) comes first, which stays queued for the next call."""
    first = waiting.get()
    if first is None:
        waiting.put(None)
        return None
    batch = [first]
    while len(batch) < max_batch:
        try:
            nxt = waiting.get_nowait()
        except queue.Empty:
            break
        if nxt is None:
            waiting.put(None)
            break
        batch.append(nxt)
    return batch
