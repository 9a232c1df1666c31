"""Peak resident memory of a process and all its descendants, sampled in a thread.

A simulation starts Ray's head and workers as child processes, so what a run costs is the
summed RSS of the whole process tree, not of this process alone. Processes that exit
between being listed and being read are skipped.
"""

from __future__ import annotations

import os
import threading

import psutil

SAMPLE_INTERVAL_S = 0.2


def tree_rss(root: int) -> int:
    """Resident bytes of process ``root`` and all its descendants; 0 if ``root`` is gone."""
    try:
        process = psutil.Process(root)
        tree = [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for member in tree:
        try:
            total += member.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total


class PeakMemory:
    """Largest ``tree_rss`` of process ``pid`` (this one by default) while the context is
    open, sampled every ``interval_s`` seconds, in ``peak_bytes``."""

    def __init__(self, pid: int | None = None, interval_s: float = SAMPLE_INTERVAL_S) -> None:
        self.pid = os.getpid() if pid is None else pid
        self.interval_s = interval_s
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="peak-memory", daemon=True)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, tree_rss(self.pid))
            self._stop.wait(self.interval_s)
