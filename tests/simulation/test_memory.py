"""Resident memory of a process tree: children count, vanished processes do not break it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psutil

from simulation.memory import PeakMemory, tree_rss

CHILD_MB = 200
HOLDER = f"""
import time
block = b"x" * ({CHILD_MB} * 2**20)  # written, so resident
print("holding", flush=True)
time.sleep(60)
"""


@contextmanager
def child_holding_memory() -> Iterator[subprocess.Popen]:
    child = subprocess.Popen([sys.executable, "-c", HOLDER], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "holding"
        yield child
    finally:
        child.kill()
        child.wait()


def test_tree_rss_adds_the_children():
    alone = tree_rss(os.getpid())
    assert alone > 10 * 2**20
    with child_holding_memory() as child:
        assert tree_rss(child.pid) > CHILD_MB * 2**20
        assert tree_rss(os.getpid()) - alone > CHILD_MB * 2**20 * 0.9


def test_a_vanished_process_counts_as_zero(monkeypatch):
    with child_holding_memory() as child:
        pid = child.pid
    assert tree_rss(pid) == 0  # killed and reaped

    real = psutil.Process.memory_info

    def exits_meanwhile(process: psutil.Process):
        if process.pid != os.getpid():
            raise psutil.NoSuchProcess(process.pid)
        return real(process)

    with child_holding_memory():
        with_child = tree_rss(os.getpid())
        monkeypatch.setattr(psutil.Process, "memory_info", exits_meanwhile)
        own = tree_rss(os.getpid())
        monkeypatch.undo()
    assert own > 10 * 2**20 and with_child - own > CHILD_MB * 2**20 * 0.9


def test_peak_memory_sees_a_child_that_has_exited_since():
    with PeakMemory(interval_s=0.01) as memory:
        with child_holding_memory():
            time.sleep(0.3)  # many samples while the child holds its memory
    assert memory.peak_bytes > CHILD_MB * 2**20
    assert tree_rss(os.getpid()) < memory.peak_bytes
